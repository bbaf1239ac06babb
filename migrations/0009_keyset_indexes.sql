-- query_events by type or by correlation pages by position: (event_type) and (correlation_id)
-- become (event_type, id) and (correlation_id, id), so a page is one index range in id order,
-- stopping at LIMIT, instead of every row of the type fetched and sorted, or a walk of the
-- primary key discarding the other types (98,985 rows for the first page of a 1% type at 1M rows).
-- transactional: false
-- depends: 0008_hardened_functions
-- No lock_timeout: CONCURRENTLY takes no lock appends wait for, and a lock_timeout would also cut its waits for older transactions short, leaving INVALID indexes.
-- squawk-ignore-file require-lock-timeout

-- Non-transactional: CREATE/DROP INDEX CONCURRENTLY cannot run in a transaction. They take
-- SHARE UPDATE EXCLUSIVE, so appends and reads go on while the new index is built (two scans of
-- the table) and while the old one is dropped. A build that fails or is cancelled leaves an
-- INVALID index: the first statement of each pair removes such a leftover, so the migration
-- can simply be run again.

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_type_id;

-- squawk-ignore prefer-robust-stmts
CREATE INDEX CONCURRENTLY idx_credit_events_type_id ON credit_events (event_type, id);

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_type;

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_correlation_id;

-- squawk-ignore prefer-robust-stmts
CREATE INDEX CONCURRENTLY idx_credit_events_correlation_id ON credit_events (correlation_id, id);

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_correlation;
