-- Back to migration 0008's lock step: one PERFORM per entity, in ascending key order.

SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

CREATE OR REPLACE FUNCTION credit_events_lock_entities(p_entity_ids TEXT[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key BIGINT;
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
    FOR v_key IN
        SELECT DISTINCT hashtextextended(e.entity_id, 'credit_events'::regclass::oid::bigint)
          FROM unnest(p_entity_ids) AS e(entity_id)
         WHERE e.entity_id IS NOT NULL
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;
END;
$$;
