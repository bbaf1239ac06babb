-- A single append in one statement: migration 0008's credit_events_append called
-- credit_events_append_locked, a second plpgsql function with its own search_path to set and
-- restore, and probed the version in a statement of its own. Interleaved on one connection
-- (3000 appends) it took 1.154x a bare INSERT at p50; one statement under the lock, 1.124x.
-- depends: 0013_set_based_entity_locks

-- Function bodies replaced in place, one dropped: catalog changes only, fail fast if queued.
SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

-- The same answers as 0008's: the stored position and version; no row for a duplicate (its key
-- already stored: a retry, whatever the entity's version now); ES409 (DETAIL: the actual version)
-- when the entity is not at p_expected_version. After the lock step, one INSERT … SELECT reads
-- the entity's version (a backward probe of credit_events_entity_version_key) and stores the
-- event at the next one only if that is what the caller expected; ON CONFLICT (idempotency_key)
-- makes a retry a duplicate. Under the entity's lock no other append can take that version, and
-- the INSERT's snapshot is taken after the lock step's statement, so it sees every version
-- committed before the lock was granted. Only a statement that stored nothing looks further,
-- to tell a duplicate from a conflict.
CREATE OR REPLACE FUNCTION credit_events_append(
    p_event_id         UUID,
    p_idempotency_key  VARCHAR(255),
    p_event_type       VARCHAR(50),
    p_schema_version   INTEGER,
    p_timestamp        TIMESTAMPTZ,
    p_actor_id         VARCHAR(100),
    p_correlation_id   UUID,
    p_causation_id     UUID,
    p_payload          JSONB,
    p_entity_id        TEXT,
    p_expected_version INTEGER
) RETURNS TABLE (stored_position BIGINT, stored_entity_version INTEGER)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_actual INTEGER;
BEGIN
    PERFORM credit_events_lock_entities(ARRAY[p_entity_id]);
    IF p_entity_id IS NULL AND p_expected_version IS NOT NULL AND p_expected_version <> 0 THEN
        RAISE EXCEPTION 'concurrency conflict on entity %: expected version %, actual %',
                NULL, p_expected_version, 0
            USING ERRCODE = 'ES409', DETAIL = '0';
    END IF;

    RETURN QUERY
    INSERT INTO credit_events AS e (
        event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
        correlation_id, causation_id, payload, entity_id, entity_version)
    SELECT p_event_id, p_idempotency_key, p_event_type, p_schema_version, p_timestamp, p_actor_id,
           p_correlation_id, p_causation_id, p_payload, p_entity_id, head.version + 1
      FROM (SELECT CASE WHEN p_entity_id IS NOT NULL THEN coalesce(max(c.entity_version), 0) END AS version
              FROM credit_events AS c
             WHERE c.entity_id = p_entity_id) AS head
     WHERE p_expected_version IS NULL OR coalesce(head.version, 0) = p_expected_version
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING e.id, e.entity_version;

    IF FOUND OR p_expected_version IS NULL THEN
        RETURN;  -- stored, or a duplicate
    END IF;
    IF EXISTS (SELECT 1 FROM credit_events AS e WHERE e.idempotency_key = p_idempotency_key) THEN
        RETURN;  -- a retry of an event already stored: a duplicate, not a conflict
    END IF;
    SELECT coalesce(max(e.entity_version), 0) INTO v_actual FROM credit_events AS e WHERE e.entity_id = p_entity_id;
    RAISE EXCEPTION 'concurrency conflict on entity %: expected version %, actual %',
            p_entity_id, p_expected_version, v_actual
        USING ERRCODE = 'ES409', DETAIL = v_actual::text;
END;
$$;

-- Nothing calls it any more (the batch functions plan set-based since 0012).
DROP FUNCTION credit_events_append_locked(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB,
                                          TEXT, INTEGER);
