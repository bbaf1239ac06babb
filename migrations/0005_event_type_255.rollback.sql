-- Back to VARCHAR(50), refused while a longer event_type is stored (it would not fit).
-- Narrowing is not catalog-only: PostgreSQL rewrites the table and rebuilds its indexes under
-- ACCESS EXCLUSIVE, so on a large table this blocks appends and reads for the whole rewrite.
-- The lock comes first, so no longer type can be appended between the check and the change.
SET LOCAL lock_timeout = '5s';

LOCK TABLE credit_events IN ACCESS EXCLUSIVE MODE;

DO $rollback$
DECLARE
    v_longest INTEGER := (SELECT max(length(event_type)) FROM credit_events);
BEGIN
    IF v_longest > 50 THEN
        RAISE EXCEPTION 'cannot narrow credit_events.event_type to 50 characters: an event_type of % characters is stored', v_longest
            USING ERRCODE = 'check_violation',
                  HINT = 'Events are immutable; stay on this migration while such events exist.';
    END IF;
END;
$rollback$;

-- squawk-ignore changing-column-type
ALTER TABLE credit_events ALTER COLUMN event_type TYPE VARCHAR(50);
