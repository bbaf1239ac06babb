-- Revokes every privilege of eventstore_writer and eventstore_reader on this schema's objects
-- (whatever granted them), then drops each role only when nothing else needs it: a role that
-- still holds privileges in another schema or database (DROP ROLE fails with
-- dependent_objects_still_exist) or that has members (login roles a DBA put in it, whose
-- membership DROP ROLE would silently remove) is kept. Other schemas are untouched.
DO $rollback$
DECLARE
    v_schema TEXT := current_schema();
    v_role   TEXT;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        BEGIN
            EXECUTE format('REVOKE ALL ON TABLE %I.credit_events, %I.credit_snapshots, %I._yoyo_migration FROM %I',
                           v_schema, v_schema, v_schema, v_role);
            EXECUTE format('REVOKE ALL ON SEQUENCE %I.credit_events_id_seq FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON FUNCTION '
                           '%I.credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, '
                           'UUID, UUID, JSONB, TEXT, INTEGER), '
                           '%I.credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], '
                           'TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[]), '
                           '%I.credit_events_fence_mark(BIGINT), %I.credit_events_fence_wait(xid8, INTEGER) FROM %I',
                           v_schema, v_schema, v_schema, v_schema, v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', v_schema, v_role);
        EXCEPTION WHEN undefined_object THEN
            CONTINUE;  -- dropped concurrently by another database's rollback: nothing left to revoke
        END;
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_auth_members AS m JOIN pg_roles AS r ON r.oid = m.roleid
                               WHERE r.rolname = v_role);
        BEGIN
            EXECUTE format('DROP ROLE %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist OR undefined_object THEN
            NULL;  -- still granted elsewhere (another schema or database), or already dropped
        END;
    END LOOP;
END;
$rollback$;
