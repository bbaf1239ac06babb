-- Consumers' checkpoints in credit_checkpoints (migration 0006); they are moved by
-- append_checkpointed in events.sql, in the same statement as the consumer's events.

-- name: load_checkpoint(name)$
-- Primary-key lookup.
SELECT position FROM credit_checkpoints WHERE name = :name;

-- name: all_checkpoints()
-- Every checkpoint, for export and verify: a small table read in name order.
SELECT name, position FROM credit_checkpoints ORDER BY name;

-- name: import_checkpoints(names, positions)
-- Import from a file journal: each checkpoint moves forward to the file's position, never back (a checkpoint only moves forward; GREATEST keeps the newer one).
INSERT INTO credit_checkpoints AS c (name, position)
SELECT n, p FROM unnest(:names::varchar[], :positions::bigint[]) AS f(n, p)
ON CONFLICT (name) DO UPDATE
   SET position = EXCLUDED.position, updated_at = now()
 WHERE c.position < EXCLUDED.position;
