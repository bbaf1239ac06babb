-- Least privilege: NOLOGIN group roles eventstore_writer and eventstore_reader (docs/operations.md).
-- depends: 0003_snapshots

-- Roles are cluster-global while this migration runs once per database and schema, often in
-- many databases at once: creation is idempotent (IF NOT EXISTS) and a creation racing another
-- migration's (duplicate_object, or unique_violation on pg_authid's name index when both
-- inserted) or a rollback's DROP ROLE elsewhere (undefined_object: "role was concurrently
-- dropped") is retried. Grants are on this schema's objects only (current_schema(): yoyo's
-- ?schema= search_path), never on a hard-coded public.
--   writer: SELECT + INSERT on credit_events (no UPDATE/DELETE/TRUNCATE: append-only);
--           SELECT + INSERT on credit_snapshots and UPDATE of (position, state, created_at)
--           only, because save_snapshot is an upsert where a newer snapshot replaces an older;
--           no DELETE (snapshots are a derived cache that the owner may clear).
--   reader: SELECT on credit_events and credit_snapshots.
--   both:   USAGE on the schema, USAGE + SELECT on the identity sequence (the subscription
--           fence reads its high-water mark), SELECT on _yoyo_migration (initialize() checks
--           the applied migrations), EXECUTE on the functions they call (PUBLIC has EXECUTE by
--           default; explicit grants keep working if a DBA revokes it). The functions are
--           SECURITY INVOKER: calling credit_events_append still needs INSERT.
-- pg_read_all_stats is deliberately not granted: it shows every session's query text in the
-- cluster. Without it credit_events_fence_wait stays correct (it falls back to the snapshot
-- test), only a long transaction elsewhere in the cluster can delay subscribers.
DO $migration$
DECLARE
    v_schema  TEXT := current_schema();
    v_role    TEXT;
    v_attempt INTEGER;
BEGIN
    IF v_schema IS NULL THEN
        RAISE EXCEPTION 'eventstore roles: no current schema (search_path)';
    END IF;
    FOREACH v_role IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader'] LOOP
        FOR v_attempt IN 1..10 LOOP
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
                END IF;
                EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, v_role);
                EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.credit_events_id_seq TO %I', v_schema, v_role);
                EXECUTE format('GRANT SELECT ON TABLE %I._yoyo_migration TO %I', v_schema, v_role);
                EXECUTE format('GRANT EXECUTE ON FUNCTION %I.credit_events_fence_mark(BIGINT), '
                               '%I.credit_events_fence_wait(xid8, INTEGER) TO %I', v_schema, v_schema, v_role);
                IF v_role = 'eventstore_writer' THEN
                    EXECUTE format('GRANT SELECT, INSERT ON TABLE %I.credit_events TO %I', v_schema, v_role);
                    EXECUTE format('GRANT SELECT, INSERT, UPDATE (position, state, created_at) '
                                   'ON TABLE %I.credit_snapshots TO %I', v_schema, v_role);
                    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                                   '%I.credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, '
                                   'UUID, UUID, JSONB, TEXT, INTEGER), '
                                   '%I.credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], '
                                   'TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[]) TO %I',
                                   v_schema, v_schema, v_role);
                ELSE
                    EXECUTE format('GRANT SELECT ON TABLE %I.credit_events, %I.credit_snapshots TO %I',
                                   v_schema, v_schema, v_role);
                END IF;
                EXIT;  -- this role is done
            EXCEPTION
                WHEN duplicate_object OR unique_violation OR undefined_object THEN
                    -- Created or dropped concurrently by another database's migration: look again.
                    IF v_attempt = 10 THEN
                        RAISE;
                    END IF;
                    PERFORM pg_sleep(0.01 * v_attempt);
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'cannot set up role % in schema %: %', v_role, v_schema, SQLERRM
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = 'Run the migration as a role with CREATEROLE, or have a DBA run '
                                     'CREATE ROLE eventstore_writer NOLOGIN; CREATE ROLE eventstore_reader NOLOGIN; first.';
            END;
        END LOOP;
    END LOOP;
END;
$migration$;
