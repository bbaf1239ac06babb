-- Writers append only through the functions, and each schema can have group roles of its own.
-- depends: 0009_keyset_indexes

-- Catalog changes only (function attributes and grants): brief locks, fail fast if queued.
SET LOCAL lock_timeout = '5s';

-- The append functions run as their owner (the role that runs `eventstore schema upgrade`), so
-- the writer role needs no INSERT on credit_events: a writer login cannot bypass the entity lock
-- and the version rule with a raw INSERT. Their search_path is pinned (migration 0008, pg_temp
-- last), as SECURITY DEFINER requires. Only the writer role may call them: PUBLIC's default
-- EXECUTE is revoked, also on the lock step and on credit_events_append_locked (the append
-- without its lock step), which only the functions (as owner) and imports (run as the owner)
-- call; those two stay SECURITY INVOKER.
ALTER FUNCTION credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB,
                                   TEXT, INTEGER) SECURITY DEFINER;
ALTER FUNCTION credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[],
                                         UUID[], JSONB[], TEXT[], INTEGER[]) SECURITY DEFINER;
ALTER FUNCTION credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[],
                                                 UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT)
    SECURITY DEFINER;
ALTER FUNCTION credit_checkpoints_advance(VARCHAR, BIGINT) SECURITY DEFINER;

REVOKE EXECUTE ON FUNCTION
    credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER),
    credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[],
                               JSONB[], TEXT[], INTEGER[]),
    credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[],
                                      UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT),
    credit_checkpoints_advance(VARCHAR, BIGINT),
    credit_events_lock_entities(TEXT[]),
    credit_events_append_locked(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER)
FROM PUBLIC;

-- The group roles of this schema: <prefix>_writer and <prefix>_reader, where the prefix is the
-- setting eventstore.role_prefix of the session that migrates (`eventstore schema upgrade
-- --role-prefix billing` sets it), "eventstore" when unset. Roles are cluster-wide: with the
-- default prefix every schema that uses it shares the two roles (a member may write each of
-- them); a prefix per schema keeps a login to its own schema. The privileges, in full:
--   writer: append, append_batch, append_checkpointed, checkpoints_advance (EXECUTE); SELECT on
--           credit_events and credit_checkpoints; credit_snapshots as migration 0004 (an upsert
--           of a derived cache); no INSERT on credit_events or credit_checkpoints, no USAGE on
--           the sequence (the functions draw ids as their owner).
--   reader: SELECT on credit_events, credit_snapshots, credit_checkpoints.
--   both:   USAGE on the schema; SELECT on the sequence (the fence's high-water mark) and on
--           _yoyo_migration (the schema check); EXECUTE on the fence functions.
-- With another prefix the default roles lose every privilege on this schema (they remain, for
-- other schemas). The names are recorded in credit_roles() for the journal's messages and for
-- later migrations.
DO $roles$
DECLARE
    v_schema  TEXT := current_schema();
    v_prefix  TEXT := coalesce(nullif(current_setting('eventstore.role_prefix', true), ''), 'eventstore');
    v_writer  TEXT := v_prefix || '_writer';
    v_reader  TEXT := v_prefix || '_reader';
    v_role    TEXT;
    v_attempt INTEGER;
BEGIN
    IF v_prefix !~ '^[a-z_][a-z0-9_]{0,55}$' THEN
        RAISE EXCEPTION 'invalid eventstore.role_prefix %: use lower-case letters, digits and _ (at most 56)', v_prefix
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_role IN ARRAY ARRAY[v_writer, v_reader] LOOP
        FOR v_attempt IN 1..10 LOOP
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
                END IF;
                EXIT;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    IF v_attempt = 10 THEN  -- created concurrently by another schema's migration: look again
                        RAISE;
                    END IF;
                    PERFORM pg_sleep(0.01 * v_attempt);
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'cannot create role % for schema %: %', v_role, v_schema, SQLERRM
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = format('Run the migration as a role with CREATEROLE, or have a DBA run '
                                            'CREATE ROLE %I NOLOGIN; CREATE ROLE %I NOLOGIN; first.', v_writer, v_reader);
            END;
        END LOOP;
    END LOOP;

    IF v_prefix <> 'eventstore' THEN
        FOREACH v_role IN ARRAY ARRAY['eventstore_writer', 'eventstore_reader'] LOOP
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', v_schema, v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', v_schema, v_role);
        END LOOP;
    END IF;
    -- What the writer held before and no longer needs (a no-op for new roles).
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %I.credit_events, %I.credit_checkpoints FROM %I',
                   v_schema, v_schema, v_writer);
    EXECUTE format('REVOKE USAGE, UPDATE ON SEQUENCE %I.credit_events_id_seq FROM %I', v_schema, v_writer);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %I.credit_events_lock_entities(TEXT[]) FROM %I', v_schema, v_writer);

    FOREACH v_role IN ARRAY ARRAY[v_writer, v_reader] LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, v_role);
        EXECUTE format('GRANT SELECT ON SEQUENCE %I.credit_events_id_seq TO %I', v_schema, v_role);
        EXECUTE format('GRANT SELECT ON TABLE %I.credit_events, %I.credit_checkpoints, %I._yoyo_migration TO %I',
                       v_schema, v_schema, v_schema, v_role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %I.credit_events_fence_mark(BIGINT), '
                       '%I.credit_events_fence_wait(xid8, INTEGER) TO %I', v_schema, v_schema, v_role);
    END LOOP;
    EXECUTE format('GRANT SELECT ON TABLE %I.credit_snapshots TO %I', v_schema, v_reader);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (position, state, created_at) ON TABLE %I.credit_snapshots TO %I',
                   v_schema, v_writer);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   '%I.credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, '
                   'TEXT, INTEGER), '
                   '%I.credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], '
                   'UUID[], UUID[], JSONB[], TEXT[], INTEGER[]), '
                   '%I.credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], '
                   'VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT), '
                   '%I.credit_checkpoints_advance(VARCHAR, BIGINT) TO %I',
                   v_schema, v_schema, v_schema, v_schema, v_writer);

    EXECUTE format('CREATE FUNCTION %I.credit_roles(OUT writer NAME, OUT reader NAME) '
                   'LANGUAGE sql IMMUTABLE SET search_path = %I, pg_temp AS %L',
                   v_schema, v_schema, format('SELECT %L::name, %L::name', v_writer, v_reader));
    EXECUTE format('COMMENT ON FUNCTION %I.credit_roles IS %L', v_schema,
                   'The group roles of this eventstore schema (migration 0010): members of writer append, of reader read.');
END;
$roles$;
