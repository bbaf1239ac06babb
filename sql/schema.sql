-- Schema bookkeeping read at initialize().

-- name: applied_migrations()
-- yoyo's own table (in the journal's schema, via search_path); compared with the migrations shipped in the package.
SELECT migration_id FROM _yoyo_migration;
