-- event_type up to 255 characters: module-qualified type names are often longer than 50
-- (bankaccounts.domainmodel:BankAccount.TransactionAppended is 56).
-- depends: 0004_roles

-- Lock: ACCESS EXCLUSIVE on credit_events, held only for the catalog update. Widening a varchar
-- is binary coercible in PostgreSQL 15: no table rewrite, no index rebuild, no scan, so the lock
-- is held for milliseconds. It still queues behind every running statement on the table (and
-- everything queues behind it): lock_timeout makes a busy table fail this step fast instead of
-- stalling appends, and the step can simply be run again.
SET LOCAL lock_timeout = '5s';

-- squawk-ignore changing-column-type
ALTER TABLE credit_events ALTER COLUMN event_type TYPE VARCHAR(255);
