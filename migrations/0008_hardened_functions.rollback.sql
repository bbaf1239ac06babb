-- Back to the functions of migrations 0001 and 0007 (hashtext lock keys shared by every schema,
-- the caller's search_path, no isolation check, a fence that polls every 0.5 ms), the table's
-- default vacuum settings, the GIN pending list, and USAGE on the sequence for readers.
SET LOCAL lock_timeout = '5s';

DO $grants$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %I.credit_events_id_seq TO eventstore_reader', current_schema());
END;
$grants$;

ALTER INDEX idx_credit_events_payload_gin RESET (fastupdate);

ALTER TABLE credit_events RESET (
    autovacuum_vacuum_insert_scale_factor,
    autovacuum_vacuum_insert_threshold,
    autovacuum_freeze_min_age
);

ALTER FUNCTION credit_events_take_xid() RESET search_path;
ALTER FUNCTION credit_events_refuse_change() RESET search_path;
ALTER FUNCTION credit_events_fence_mark(BIGINT) RESET search_path;
ALTER FUNCTION credit_checkpoints_advance(VARCHAR, BIGINT) RESET search_path;
ALTER FUNCTION credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[],
                                                 UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT)
    RESET search_path;

-- CREATE OR REPLACE without a SET clause also drops the pinned search_path; grants are kept.
CREATE OR REPLACE FUNCTION credit_events_fence_wait(p_marker xid8, p_wait_ms INTEGER) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_deadline TIMESTAMPTZ := clock_timestamp() + p_wait_ms * INTERVAL '1 millisecond';
    v_table    OID := 'credit_events'::regclass;
BEGIN
    LOOP
        IF pg_snapshot_xmin(pg_current_snapshot()) >= p_marker THEN
            RETURN true;
        END IF;
        IF NOT EXISTS (SELECT 1
                         FROM pg_locks AS t
                         JOIN pg_locks AS x ON x.virtualtransaction = t.virtualtransaction
                        WHERE t.locktype = 'relation' AND t.relation = v_table AND t.mode = 'RowExclusiveLock'
                          AND t.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
                          AND x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock'
                          AND age(x.transactionid) > age(p_marker::xid)) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.0005);
    END LOOP;
END;
$$;

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
LANGUAGE plpgsql AS $$
DECLARE
    v_current INTEGER;
    v_version INTEGER;
BEGIN
    IF p_entity_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(1701147247, hashtext(p_entity_id));
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
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1701147247, k.key)
       FROM (SELECT DISTINCT hashtext(e) AS key FROM unnest(p_entity_ids) AS e WHERE e IS NOT NULL ORDER BY 1) AS k;

    RETURN QUERY
    SELECT a.stored_position, a.stored_entity_version
      FROM unnest(p_event_ids, p_idempotency_keys, p_event_types, p_schema_versions, p_timestamps, p_actor_ids,
                  p_correlation_ids, p_causation_ids, p_payloads, p_entity_ids, p_expected_versions)
           WITH ORDINALITY AS e(event_id, idempotency_key, event_type, schema_version, ts, actor_id,
                                correlation_id, causation_id, payload, entity_id, expected_version, ord)
      LEFT JOIN LATERAL credit_events_append(e.event_id, e.idempotency_key, e.event_type, e.schema_version, e.ts,
                                             e.actor_id, e.correlation_id, e.causation_id, e.payload, e.entity_id,
                                             e.expected_version) AS a ON true
     ORDER BY e.ord;
END;
$$;

DROP FUNCTION credit_events_append_locked(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER);
DROP FUNCTION credit_events_lock_entities(TEXT[]);
