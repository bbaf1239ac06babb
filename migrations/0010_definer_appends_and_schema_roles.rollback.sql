-- Back to migration 0009's privileges: SECURITY INVOKER functions that PUBLIC may execute, and
-- the shared eventstore_writer / eventstore_reader roles holding what 0004, 0006 and 0008 granted
-- (the writer INSERTs into credit_events through the functions). Roles of another prefix lose
-- this schema's privileges and are dropped when nothing else needs them (no members, no
-- privileges elsewhere), as migration 0004's rollback does.
SET LOCAL lock_timeout = '5s';

DO $rollback$
DECLARE
    v_schema TEXT := current_schema();
    v_writer TEXT;
    v_reader TEXT;
    v_role   TEXT;
BEGIN
    SELECT r.writer, r.reader INTO v_writer, v_reader FROM credit_roles() AS r;
    IF v_writer <> 'eventstore_writer' THEN
        FOREACH v_role IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader'] LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            END IF;
        END LOOP;
        FOREACH v_role IN ARRAY ARRAY[v_writer, v_reader] LOOP
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', v_schema, v_role);
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_auth_members AS m JOIN pg_roles AS r ON r.oid = m.roleid
                                   WHERE r.rolname = v_role);
            BEGIN
                EXECUTE format('DROP ROLE %I', v_role);
            EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
                NULL;  -- still granted elsewhere (another schema or database), or already dropped
            END;
        END LOOP;
    END IF;

    FOREACH v_role IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader'] LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, v_role);
        EXECUTE format('GRANT SELECT ON TABLE %I._yoyo_migration, %I.credit_checkpoints TO %I', v_schema, v_schema, v_role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.credit_events_fence_mark(BIGINT), '
                       '%I.credit_events_fence_wait(xid8, INTEGER) TO %I', v_schema, v_schema, v_role);
    END LOOP;
    EXECUTE format('GRANT SELECT ON SEQUENCE %I.credit_events_id_seq TO eventstore_reader', v_schema);
    EXECUTE format('GRANT SELECT ON TABLE %I.credit_events, %I.credit_snapshots TO eventstore_reader', v_schema, v_schema);
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.credit_events_id_seq TO eventstore_writer', v_schema);
    EXECUTE format('GRANT SELECT, INSERT ON TABLE %I.credit_events TO eventstore_writer', v_schema);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (position, state, created_at) ON TABLE %I.credit_snapshots '
                   'TO eventstore_writer', v_schema);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (position, updated_at) ON TABLE %I.credit_checkpoints '
                   'TO eventstore_writer', v_schema);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   '%I.credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, '
                   'TEXT, INTEGER), '
                   '%I.credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], '
                   'UUID[], UUID[], JSONB[], TEXT[], INTEGER[]), '
                   '%I.credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], '
                   'VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT), '
                   '%I.credit_checkpoints_advance(VARCHAR, BIGINT), %I.credit_events_lock_entities(TEXT[]) '
                   'TO eventstore_writer',
                   v_schema, v_schema, v_schema, v_schema, v_schema);
END;
$rollback$;

ALTER FUNCTION credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB,
                                   TEXT, INTEGER) SECURITY INVOKER;
ALTER FUNCTION credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[],
                                         UUID[], JSONB[], TEXT[], INTEGER[]) SECURITY INVOKER;
ALTER FUNCTION credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[],
                                                 UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT)
    SECURITY INVOKER;
ALTER FUNCTION credit_checkpoints_advance(VARCHAR, BIGINT) SECURITY INVOKER;

GRANT EXECUTE ON FUNCTION
    credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER),
    credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[],
                               JSONB[], TEXT[], INTEGER[]),
    credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[],
                                      UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT),
    credit_checkpoints_advance(VARCHAR, BIGINT),
    credit_events_lock_entities(TEXT[]),
    credit_events_append_locked(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER)
TO PUBLIC;

DROP FUNCTION credit_roles();
