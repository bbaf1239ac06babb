-- Batches appended set-based: one plan, one INSERT, instead of one nested function call per event
-- (a 50-event batch took 13 ms, 0.26 ms per event, against 0.5 ms for a single append).
-- depends: 0011_group_append

-- A function body replaced in place: catalog changes only, fail fast if queued.
SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

-- The same answers as migration 0008's batch, which appended element by element under the
-- batch's locks: one row per element in the caller's order; an empty row for a duplicate (its
-- idempotency_key already stored, or repeated earlier in the batch), which takes no version and
-- is never a conflict; ES409 (DETAIL: the actual version) for the first element, in order, whose
-- entity is not at its expected version, and then nothing is written.
-- Set-based: after the one lock step (all entities, ascending keys, migration 0008), one
-- statement probes the stored keys (credit_events_idempotency_key_key, one probe per element)
-- and each distinct entity's version (credit_events_entity_version_key, one backward probe per
-- entity), and numbers the new events per entity in array order; one INSERT stores them in that
-- order, so positions follow the caller's order. A key committed meanwhile by a writer that
-- shares no entity lock would make the INSERT store fewer rows than planned (and leave a gap in a
-- version sequence): then the whole statement raises ES412 and the journal sends the batch again,
-- when the probe sees that key as a duplicate.
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
DECLARE
    v_count      INTEGER := coalesce(cardinality(p_event_ids), 0);
    v_new        INTEGER[];  -- the elements to insert, in order ...
    v_versions   INTEGER[];  -- ... and the entity version each gets
    v_conflict   INTEGER;    -- the first element whose entity is not at its expected version
    v_actual     INTEGER;
    v_stored     BIGINT[];
    v_positions  BIGINT[] := array_fill(NULL::BIGINT, ARRAY[v_count]);
    v_answers    INTEGER[] := array_fill(NULL::INTEGER, ARRAY[v_count]);
BEGIN
    PERFORM credit_events_lock_entities(p_entity_ids);

    WITH element AS (
        SELECT x.ord, x.entity_id, x.expected_version,
               EXISTS (SELECT 1 FROM credit_events AS e WHERE e.idempotency_key = x.idempotency_key)
               OR row_number() OVER (PARTITION BY x.idempotency_key ORDER BY x.ord) > 1 AS duplicate
          FROM unnest(p_idempotency_keys, p_entity_ids, p_expected_versions)
               WITH ORDINALITY AS x(idempotency_key, entity_id, expected_version, ord)
    ), head AS (
        SELECT d.entity_id,
               coalesce((SELECT max(e.entity_version) FROM credit_events AS e WHERE e.entity_id = d.entity_id), 0) AS version
          FROM (SELECT DISTINCT entity_id FROM element WHERE NOT duplicate AND entity_id IS NOT NULL) AS d
    ), numbered AS (
        SELECT n.ord, n.expected_version,
               CASE WHEN n.entity_id IS NOT NULL
                    THEN h.version + row_number() OVER (PARTITION BY n.entity_id ORDER BY n.ord) END AS version
          FROM element AS n LEFT JOIN head AS h ON h.entity_id = n.entity_id
         WHERE NOT n.duplicate
    )
    SELECT array_agg(n.ord ORDER BY n.ord), array_agg(n.version ORDER BY n.ord),
           min(n.ord) FILTER (WHERE n.expected_version <> coalesce(n.version - 1, 0))
      INTO v_new, v_versions, v_conflict
      FROM numbered AS n;

    IF v_conflict IS NOT NULL THEN
        v_actual := coalesce(v_versions[array_position(v_new, v_conflict::INTEGER)] - 1, 0);
        RAISE EXCEPTION 'concurrency conflict on entity %: expected version %, actual %',
                p_entity_ids[v_conflict], p_expected_versions[v_conflict], v_actual
            USING ERRCODE = 'ES409', DETAIL = v_actual::text;
    END IF;

    IF cardinality(v_new) > 0 THEN
        WITH inserted AS (
            INSERT INTO credit_events AS e (
                event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
                correlation_id, causation_id, payload, entity_id, entity_version)
            SELECT p_event_ids[n.i], p_idempotency_keys[n.i], p_event_types[n.i], p_schema_versions[n.i],
                   p_timestamps[n.i], p_actor_ids[n.i], p_correlation_ids[n.i], p_causation_ids[n.i],
                   p_payloads[n.i], p_entity_ids[n.i], n.version
              FROM unnest(v_new, v_versions) WITH ORDINALITY AS n(i, version, ord)
             ORDER BY n.ord
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING e.id
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id) INTO v_stored FROM inserted;
        IF coalesce(cardinality(v_stored), 0) <> cardinality(v_new) THEN
            RAISE EXCEPTION 'batch append: % of % rows stored (a key committed concurrently)',
                    coalesce(cardinality(v_stored), 0), cardinality(v_new)
                USING ERRCODE = 'ES412', HINT = 'Send the batch again.';
        END IF;
        FOR k IN 1 .. cardinality(v_new) LOOP
            v_positions[v_new[k]] := v_stored[k];
            v_answers[v_new[k]] := v_versions[k];
        END LOOP;
    END IF;

    RETURN QUERY
    SELECT a.position, a.version
      FROM unnest(v_positions, v_answers) WITH ORDINALITY AS a(position, version, ord)
     ORDER BY a.ord;
END;
$$;
