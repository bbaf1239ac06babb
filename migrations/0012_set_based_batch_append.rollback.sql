-- Back to migration 0008's batch (element by element under the batch's locks), SECURITY DEFINER
-- as migration 0010 made it.

SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

CREATE OR REPLACE FUNCTION credit_events_append_batch(
    p_event_ids         UUID[],
    p_idempotency_keys  VARCHAR(255)[],
    p_event_types       VARCHAR(50)[],
    p_schema_versions   INTEGER[],
    p_timestamps        TIMESTAMPTZ[],
    p_actor_ids         VARCHAR(100)[],
    p_correlation_ids   UUID[],
    p_causation_ids     UUID[],
    p_payloads          JSONB[],
    p_entity_ids        TEXT[],
    p_expected_versions INTEGER[]
) RETURNS TABLE (stored_position BIGINT, stored_entity_version INTEGER)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM credit_events_lock_entities(p_entity_ids);

    RETURN QUERY
    SELECT a.stored_position, a.stored_entity_version
      FROM unnest(p_event_ids, p_idempotency_keys, p_event_types, p_schema_versions, p_timestamps, p_actor_ids,
                  p_correlation_ids, p_causation_ids, p_payloads, p_entity_ids, p_expected_versions)
           WITH ORDINALITY AS e(event_id, idempotency_key, event_type, schema_version, ts, actor_id,
                                correlation_id, causation_id, payload, entity_id, expected_version, ord)
      LEFT JOIN LATERAL credit_events_append_locked(e.event_id, e.idempotency_key, e.event_type, e.schema_version,
                                                    e.ts, e.actor_id, e.correlation_id, e.causation_id, e.payload,
                                                    e.entity_id, e.expected_version) AS a ON true
     ORDER BY e.ord;
END;
$$;
