-- Consumers' checkpoints: "processed up to position N", stored in the same transaction as the
-- events the consumer derived, so each source event is processed exactly once.
-- depends: 0005_event_type_255
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout

CREATE TABLE credit_checkpoints (
    name       VARCHAR(255) NOT NULL,
    position   BIGINT       NOT NULL,
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT credit_checkpoints_pkey PRIMARY KEY (name),
    CONSTRAINT credit_checkpoints_name_check CHECK (length(name) >= 1),
    CONSTRAINT credit_checkpoints_position_check CHECK (position >= 0)
);

COMMENT ON TABLE credit_checkpoints IS
    'Consumer progress (eventstore): the last source position each named consumer processed; only moves forward.';

-- Moves checkpoint p_name forward to p_position, or raises SQLSTATE ES410 (DETAIL: the stored
-- position) when p_position is not past it. The upsert locks the row even when its WHERE
-- refuses the update, so the stored position read after it cannot change before commit, and
-- two writers of one consumer queue on the row.
CREATE FUNCTION credit_checkpoints_advance(p_name VARCHAR(255), p_position BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_stored BIGINT;
BEGIN
    INSERT INTO credit_checkpoints AS c (name, position)
    VALUES (p_name, p_position)
    ON CONFLICT (name) DO UPDATE
       SET position = EXCLUDED.position, updated_at = now()
     WHERE c.position < EXCLUDED.position;
    IF NOT FOUND THEN
        SELECT c.position INTO v_stored FROM credit_checkpoints AS c WHERE c.name = p_name;
        RAISE EXCEPTION 'checkpoint conflict on %: stored position %, given %', p_name, v_stored, p_position
            USING ERRCODE = 'ES410', DETAIL = v_stored::text;
    END IF;
END;
$$;

-- append_many(..., checkpoint=...) in one statement, so atomic: the checkpoint moves first (a
-- refused one costs no entity lock), then the batch appends exactly as credit_events_append_batch.
CREATE FUNCTION credit_events_append_checkpointed(
    p_event_ids           UUID[],
    p_idempotency_keys    VARCHAR(255)[],
    p_event_types         VARCHAR(255)[],
    p_schema_versions     INTEGER[],
    p_timestamps          TIMESTAMPTZ[],
    p_actor_ids           VARCHAR(100)[],
    p_correlation_ids     UUID[],
    p_causation_ids       UUID[],
    p_payloads            JSONB[],
    p_entity_ids          TEXT[],
    p_expected_versions   INTEGER[],
    p_checkpoint_name     VARCHAR(255),
    p_checkpoint_position BIGINT
) RETURNS TABLE (stored_position BIGINT, stored_entity_version INTEGER)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM credit_checkpoints_advance(p_checkpoint_name, p_checkpoint_position);
    RETURN QUERY
    SELECT b.stored_position, b.stored_entity_version
      FROM credit_events_append_batch(p_event_ids, p_idempotency_keys, p_event_types, p_schema_versions, p_timestamps,
                                      p_actor_ids, p_correlation_ids, p_causation_ids, p_payloads, p_entity_ids,
                                      p_expected_versions) WITH ORDINALITY AS b(stored_position, stored_entity_version, ord)
     ORDER BY b.ord;  -- one row per event, in the caller's order
END;
$$;

COMMENT ON FUNCTION credit_checkpoints_advance IS
    'Move a consumer checkpoint forward, or raise ES410 (DETAIL: the stored position).';
COMMENT ON FUNCTION credit_events_append_checkpointed IS
    'Append a batch and move a consumer checkpoint in one statement: both or neither.';

-- The roles of migration 0004, on this schema's new objects only: the writer moves checkpoints
-- (an upsert: INSERT, and UPDATE of the two columns it sets), the reader reads them.
DO $grants$
DECLARE
    v_schema TEXT := current_schema();
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (position, updated_at) ON TABLE %I.credit_checkpoints TO eventstore_writer', v_schema);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.credit_checkpoints_advance(VARCHAR, BIGINT), '
                   '%I.credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], '
                   'VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT) TO eventstore_writer',
                   v_schema, v_schema);
    EXECUTE format('GRANT SELECT ON TABLE %I.credit_checkpoints TO eventstore_reader', v_schema);
END;
$grants$;
