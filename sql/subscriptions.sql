-- Subscriptions: the fence (migration 0002), the delivery page, and the wake-up signal.

-- name: subscription_fence_mark(after)^
-- No table access: the identity sequence's high-water mark and, if it is past after, an xid marker, in a transaction of its own (migration 0002).
SELECT high_water, marker FROM credit_events_fence_mark(:after);

-- name: subscription_fence_wait(marker, wait_ms)$
-- No table access: polls snapshots server-side until every xid below the marker has ended, or wait_ms passes.
SELECT credit_events_fence_wait(:marker, :wait_ms);

-- name: subscription_page(after, high_water, page_size)
-- idx_credit_events_sequence: a closed keyset range (after, high_water] below the fence, so every row it can ever hold is already visible.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE id > :after
   AND id <= :high_water
 ORDER BY id
 LIMIT :page_size;

-- name: notify_appended(channel)
-- Sent after the append committed, outside its transaction (NOTIFY at commit would take a database-wide lock); listeners only wake up and read.
SELECT pg_notify(:channel, '');
