-- Projection snapshots in credit_snapshots (migration 0003).

-- name: save_snapshot(name, position, state)$
-- Upsert on the primary key; the WHERE keeps a newer snapshot from being replaced by an older one (a slow writer losing a race). Returns the stored position.
INSERT INTO credit_snapshots AS s (name, position, state)
VALUES (:name, :position, :state)
ON CONFLICT (name) DO UPDATE
   SET position = EXCLUDED.position, state = EXCLUDED.state, created_at = now()
 WHERE s.position < EXCLUDED.position
RETURNING s.position;

-- name: load_snapshot(name)^
-- Primary-key lookup.
SELECT name, position, state, created_at FROM credit_snapshots WHERE name = :name;
