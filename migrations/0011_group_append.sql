-- Group commit: many independent single appends in one statement and one transaction, with an
-- outcome per event (issue 13), so the appends in flight on one journal share a commit flush.
-- depends: 0010_definer_appends_and_schema_roles

-- A new function and its grant: catalog changes only, fail fast if queued.
SET LOCAL lock_timeout = '5s';

DO $path$
BEGIN
    PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);  -- until COMMIT
END;
$path$;

-- Each element is the append credit_events_append would make of it alone, in array order, and
-- none fails another: a version conflict or a duplicate is that element's outcome instead of an
-- exception that would roll back its neighbours.
--   stored:    inserted; its position and entity version.
--   duplicate: its idempotency_key is already stored; the original's position and version.
--   conflict:  the entity was not at the expected version; stored_entity_version is the actual one.
--   refused:   not decided here (its event_id is stored under another key, or its key repeats an
--              earlier element's): the caller appends that event alone and gets what it gets alone.
-- Set-based: after the one lock step (all entities, ascending keys, migration 0008) it reads the
-- entities' versions and the stored keys and event ids in three index probes per group, numbers
-- the new events in memory, and inserts them with one INSERT (one executor run, one statement
-- trigger) in array order, so positions follow the order the callers queued in. Nothing the
-- probes did not foresee can slip in: if the INSERT stores fewer rows than planned (a key or an
-- event id committed meanwhile by a writer that shares no entity lock), the whole statement
-- raises ES412 and the journal appends each event alone; versions never get a gap.
CREATE FUNCTION credit_events_append_group(
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
) RETURNS TABLE (outcome TEXT, stored_position BIGINT, stored_entity_version INTEGER)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_count      INTEGER := coalesce(cardinality(p_event_ids), 0);
    v_outcomes   TEXT[] := array_fill(NULL::TEXT, ARRAY[v_count]);
    v_positions  BIGINT[] := array_fill(NULL::BIGINT, ARRAY[v_count]);
    v_versions   INTEGER[] := array_fill(NULL::INTEGER, ARRAY[v_count]);
    v_entities   TEXT[];     -- the group's distinct entities ...
    v_heads      INTEGER[];  -- ... and the version each is at, advanced as elements are numbered
    v_keys       TEXT[];     -- keys already stored ...
    v_key_ids    BIGINT[];   -- ... where ...
    v_key_vers   INTEGER[];  -- ... and at which version
    v_taken_ids  UUID[];     -- event ids already stored
    v_insert     INTEGER[] := ARRAY[]::INTEGER[];  -- the elements to insert, in order
    v_stored     BIGINT[];
    v_slot       INTEGER;
    v_head       INTEGER;
BEGIN
    PERFORM credit_events_lock_entities(p_entity_ids);

    -- credit_events_entity_version_key: one backward probe per distinct entity.
    SELECT array_agg(d.entity_id),
           array_agg(coalesce((SELECT max(e.entity_version) FROM credit_events AS e WHERE e.entity_id = d.entity_id), 0))
      INTO v_entities, v_heads
      FROM (SELECT DISTINCT x.entity_id FROM unnest(p_entity_ids) AS x(entity_id) WHERE x.entity_id IS NOT NULL) AS d;
    -- credit_events_idempotency_key_key and credit_events_event_id_key: one probe per element.
    SELECT array_agg(e.idempotency_key), array_agg(e.id), array_agg(e.entity_version)
      INTO v_keys, v_key_ids, v_key_vers
      FROM credit_events AS e WHERE e.idempotency_key = ANY (p_idempotency_keys);
    SELECT array_agg(e.event_id) INTO v_taken_ids
      FROM credit_events AS e WHERE e.event_id = ANY (p_event_ids);

    FOR i IN 1 .. v_count LOOP
        v_slot := array_position(v_keys, p_idempotency_keys[i]::TEXT);
        IF v_slot IS NOT NULL THEN
            v_outcomes[i] := 'duplicate';
            v_positions[i] := v_key_ids[v_slot];
            v_versions[i] := v_key_vers[v_slot];
            CONTINUE;
        END IF;
        IF array_position(p_idempotency_keys[1:i - 1], p_idempotency_keys[i]) IS NOT NULL
           OR array_position(v_taken_ids, p_event_ids[i]) IS NOT NULL THEN
            v_outcomes[i] := 'refused';
            CONTINUE;
        END IF;
        IF p_entity_ids[i] IS NOT NULL THEN
            v_slot := array_position(v_entities, p_entity_ids[i]);
            v_head := v_heads[v_slot];
            IF p_expected_versions[i] IS NOT NULL AND v_head <> p_expected_versions[i] THEN
                v_outcomes[i] := 'conflict';
                v_versions[i] := v_head;
                CONTINUE;
            END IF;
            v_heads[v_slot] := v_head + 1;
            v_versions[i] := v_head + 1;
        END IF;
        v_outcomes[i] := 'stored';
        v_insert := v_insert || i;
    END LOOP;

    IF cardinality(v_insert) > 0 THEN
        WITH inserted AS (
            INSERT INTO credit_events AS e (
                event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
                correlation_id, causation_id, payload, entity_id, entity_version)
            SELECT p_event_ids[n.i], p_idempotency_keys[n.i], p_event_types[n.i], p_schema_versions[n.i],
                   p_timestamps[n.i], p_actor_ids[n.i], p_correlation_ids[n.i], p_causation_ids[n.i],
                   p_payloads[n.i], p_entity_ids[n.i], v_versions[n.i]
              FROM unnest(v_insert) WITH ORDINALITY AS n(i, ord)
             ORDER BY n.ord
            ON CONFLICT DO NOTHING
            RETURNING e.id
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id) INTO v_stored FROM inserted;
        IF coalesce(cardinality(v_stored), 0) <> cardinality(v_insert) THEN
            RAISE EXCEPTION 'group append: % of % rows stored (a key or event id committed concurrently)',
                    coalesce(cardinality(v_stored), 0), cardinality(v_insert)
                USING ERRCODE = 'ES412', HINT = 'Append the events one by one.';
        END IF;
        FOR n IN 1 .. cardinality(v_insert) LOOP
            v_positions[v_insert[n]] := v_stored[n];
        END LOOP;
    END IF;

    RETURN QUERY
    SELECT o.outcome, o.position, o.version
      FROM unnest(v_outcomes, v_positions, v_versions) WITH ORDINALITY AS o(outcome, position, version, ord)
     ORDER BY o.ord;
END;
$$;

COMMENT ON FUNCTION credit_events_append_group IS
    'Group commit (eventstore): independent appends in one transaction, one outcome per element (stored, duplicate, conflict, refused).';

-- Only the writer role may call it (migration 0010's rule for every append function).
REVOKE EXECUTE ON FUNCTION credit_events_append_group(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[],
                                                      UUID[], UUID[], JSONB[], TEXT[], INTEGER[]) FROM PUBLIC;
DO $grants$
DECLARE
    v_writer NAME := (SELECT r.writer FROM credit_roles() AS r);
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.credit_events_append_group(UUID[], VARCHAR[], VARCHAR[], INTEGER[], '
                   'TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[]) TO %I',
                   current_schema(), v_writer);
END;
$grants$;
