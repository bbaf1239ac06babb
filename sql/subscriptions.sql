-- The fence (migration 0002) that every position-order read takes once per call (read_events,
-- query_events, last_position, each step of a subscription), and the wake-up signal.

-- name: subscription_fence_mark(after)^
-- No table access: the identity sequence's high-water mark and, if it is past after, an xid marker, in a transaction of its own (migration 0002).
SELECT high_water, marker FROM credit_events_fence_mark(:after);

-- name: subscription_fence_wait(marker, wait_ms)$
-- No table access: polls snapshots server-side until every xid below the marker has ended, or wait_ms passes.
SELECT credit_events_fence_wait(:marker, :wait_ms);

-- name: notify_appended(channel)
-- Sent after the append committed, outside its transaction (NOTIFY at commit would take a database-wide lock); listeners only wake up and read. A NOTIFY's transaction takes an xid, so its commit would wait for a WAL flush while it holds that lock: a wake-up is worth no flush (set_config local to this statement's transaction; one lost in a crash costs a subscriber its fallback poll).
SELECT pg_notify(:channel, '')
  FROM set_config('synchronous_commit', 'off', true);
