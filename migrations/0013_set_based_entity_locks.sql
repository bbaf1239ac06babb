-- The entity locks of a batch in one statement: migration 0008's loop ran one PERFORM (one
-- executor start) per entity, 5-7 ms for 1000 entities against about 1 ms set-based; every
-- batch path pays it (append_many, group commit, import).
-- depends: 0012_set_based_batch_append

-- A function body replaced in place: catalog changes only, fail fast if queued.
SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

-- Same keys, same ascending order, same isolation check as 0008. The order now comes from the
-- plan: pg_advisory_xact_lock is evaluated in the target list of a scan over the sorted, distinct
-- keys (Subquery Scan over Unique over Sort; nothing above it may reorder rows, and a target-list
-- function is never evaluated ahead of the rows below it), so two batches that share entities
-- still queue in one order instead of deadlocking.
CREATE OR REPLACE FUNCTION credit_events_lock_entities(p_entity_ids TEXT[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'eventstore appends need READ COMMITTED, this transaction is %',
                current_setting('transaction_isolation')
            USING ERRCODE = 'ES411',
                  HINT = 'SET default_transaction_isolation = ''read committed'' for the session that appends.';
    END IF;
    IF cardinality(p_entity_ids) = 1 THEN  -- a single append: no query to plan and sort
        IF p_entity_ids[1] IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(hashtextextended(p_entity_ids[1], 'credit_events'::regclass::oid::bigint));
        END IF;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(k.key)
       FROM (SELECT DISTINCT hashtextextended(e.entity_id, 'credit_events'::regclass::oid::bigint)
               FROM unnest(p_entity_ids) AS e(entity_id)
              WHERE e.entity_id IS NOT NULL
              ORDER BY 1) AS k(key);
END;
$$;
