-- Schema bookkeeping read at initialize().

-- name: applied_migrations()
-- yoyo's own table (in the journal's schema, via search_path); compared with the migrations shipped in the package.
SELECT migration_id FROM _yoyo_migration;

-- name: schema_roles()^
-- The schema's group roles (migration 0010 records them in credit_roles()), named in permission errors.
SELECT writer, reader FROM credit_roles();

-- name: schema_hidden(schema)$
-- True when the schema exists but this role has no USAGE on it (its tables then look missing): a permission error, not a missing schema.
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = :schema) AND NOT has_schema_privilege(:schema, 'USAGE');
