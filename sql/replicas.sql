-- Reads on hot standbys (docs/scaling.md). The fence is taken on the primary, which cannot be
-- done on a standby (no xid, no LISTEN); the primary also says how far its WAL had reached by
-- then, and a standby serves the read only once it has replayed that far.

-- name: replica_fence_mark(after)^
-- subscription_fence_mark plus the primary's WAL insert position, read after the function: with no marker, every event at or below the mark committed earlier, so its commit record lies below that position.
SELECT f.high_water, f.marker, pg_current_wal_insert_lsn() AS wal
  FROM credit_events_fence_mark(:after) AS f;

-- name: replica_fence_wait(marker, wait_ms)^
-- subscription_fence_wait plus the WAL insert position once it returned true: every transaction below the marker has ended, so its commit record lies below that position.
SELECT w.settled, CASE WHEN w.settled THEN pg_current_wal_insert_lsn() END AS wal
  FROM credit_events_fence_wait(:marker, :wait_ms) AS w(settled);

-- name: primary_wal_position()$
-- The primary's WAL insert position (not the flush position: an asynchronously committed append is visible before it is flushed), for reads that take no fence (read_entity, snapshots): every append that returned lies below it.
SELECT pg_current_wal_insert_lsn();

-- name: cluster_identity()$
-- The cluster's system identifier, which a streaming standby shares with its primary: a replica URL that names another cluster is never read from.
SELECT system_identifier FROM pg_control_system();

-- name: standby_replayed()$
-- How far this standby has replayed its primary's WAL; NULL on a server that is not in recovery (a promoted standby, a wrong URL), which then serves no replica read.
SELECT pg_last_wal_replay_lsn();
