-- Back to migration 0008's single append: credit_events_append calls credit_events_append_locked
-- under the lock step (SECURITY DEFINER as 0010 made it; the helper without EXECUTE for PUBLIC).

SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

CREATE FUNCTION credit_events_append_locked(
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
SET search_path FROM CURRENT
AS $$
DECLARE
    v_current INTEGER;
    v_version INTEGER;
BEGIN
    IF p_entity_id IS NOT NULL THEN
        -- Backward scan of credit_events_entity_version_key: one index probe.
        SELECT coalesce(max(e.entity_version), 0) INTO v_current
          FROM credit_events e WHERE e.entity_id = p_entity_id;
        IF p_expected_version IS NOT NULL AND v_current <> p_expected_version THEN
            IF EXISTS (SELECT 1 FROM credit_events e WHERE e.idempotency_key = p_idempotency_key) THEN
                RETURN;  -- a retry of an event already stored: a duplicate, not a conflict
            END IF;
            RAISE EXCEPTION 'concurrency conflict on entity %: expected version %, actual %',
                    p_entity_id, p_expected_version, v_current
                USING ERRCODE = 'ES409', DETAIL = v_current::text;
        END IF;
        v_version := v_current + 1;
    ELSIF p_expected_version IS NOT NULL AND p_expected_version <> 0 THEN
        RAISE EXCEPTION 'concurrency conflict on entity %: expected version %, actual %',
                NULL, p_expected_version, 0
            USING ERRCODE = 'ES409', DETAIL = '0';
    END IF;

    RETURN QUERY
    INSERT INTO credit_events AS e (
        event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
        correlation_id, causation_id, payload, entity_id, entity_version)
    VALUES (
        p_event_id, p_idempotency_key, p_event_type, p_schema_version, p_timestamp, p_actor_id,
        p_correlation_id, p_causation_id, p_payload, p_entity_id, v_version)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING e.id, e.entity_version;
END;
$$;

REVOKE EXECUTE ON FUNCTION
    credit_events_append_locked(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER)
    FROM PUBLIC;

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
BEGIN
    PERFORM credit_events_lock_entities(ARRAY[p_entity_id]);
    RETURN QUERY
    SELECT a.stored_position, a.stored_entity_version
      FROM credit_events_append_locked(p_event_id, p_idempotency_key, p_event_type, p_schema_version, p_timestamp,
                                       p_actor_id, p_correlation_id, p_causation_id, p_payload, p_entity_id,
                                       p_expected_version) AS a;
END;
$$;
