-- Appends and replay of credit_events. Positional parameters follow first appearance,
-- which here is always the declared order (eventstore.postgres checks it on load).
-- Event SELECTs return payload::text (jsonb's own text form, what the binary jsonb format
-- carries too): the client decodes a whole page's payloads with one msgspec call.

-- name: append_event(event_id, idempotency_key, event_type, schema_version, timestamp, actor_id, correlation_id, causation_id, payload, entity_id, expected_version)^
-- One round trip in autocommit: credit_events_append (migration 0001) locks the entity, checks the version, and inserts ON CONFLICT (idempotency_key) DO NOTHING.
SELECT stored_position, stored_entity_version
  FROM credit_events_append(:event_id, :idempotency_key, :event_type, :schema_version, :timestamp, :actor_id,
                            :correlation_id, :causation_id, :payload, :entity_id, :expected_version);

-- name: append_group(event_ids, idempotency_keys, event_types, schema_versions, timestamps, actor_ids, correlation_ids, causation_ids, payloads, entity_ids, expected_versions)
-- Group commit (migration 0011): the single appends queued while the previous round trip was out, in one transaction with one outcome per event, so one caller's conflict or duplicate never fails a neighbour.
SELECT outcome, stored_position, stored_entity_version
  FROM credit_events_append_group(:event_ids, :idempotency_keys, :event_types, :schema_versions, :timestamps, :actor_ids,
                                  :correlation_ids, :causation_ids, :payloads, :entity_ids, :expected_versions);

-- name: append_events(event_ids, idempotency_keys, event_types, schema_versions, timestamps, actor_ids, correlation_ids, causation_ids, payloads, entity_ids, expected_versions)
-- One statement, so atomic without BEGIN/COMMIT round trips: credit_events_append_batch locks the batch's entities in a global order, then plans and inserts the whole batch set-based (migration 0012); an empty row marks a duplicate.
SELECT stored_position, stored_entity_version
  FROM credit_events_append_batch(:event_ids, :idempotency_keys, :event_types, :schema_versions, :timestamps, :actor_ids,
                                  :correlation_ids, :causation_ids, :payloads, :entity_ids, :expected_versions);

-- name: append_checkpointed(event_ids, idempotency_keys, event_types, schema_versions, timestamps, actor_ids, correlation_ids, causation_ids, payloads, entity_ids, expected_versions, checkpoint_name, checkpoint_position)
-- append_events plus a consumer checkpoint in one statement: credit_events_append_checkpointed (migration 0006) moves the checkpoint forward or raises ES410, then appends the batch.
SELECT stored_position, stored_entity_version
  FROM credit_events_append_checkpointed(:event_ids, :idempotency_keys, :event_types, :schema_versions, :timestamps,
                                         :actor_ids, :correlation_ids, :causation_ids, :payloads, :entity_ids,
                                         :expected_versions, :checkpoint_name, :checkpoint_position);

-- name: read_events_page(after, high_water, page_size)
-- Keyset page on the primary key (idx_credit_events_sequence), a closed range (after, high_water] below the fence of subscriptions.sql: every row it can ever hold is already visible, so a follower paging by position never skips one. Never OFFSET: the millionth page costs what the first does.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE id > :after
   AND id <= :high_water
 ORDER BY id
 LIMIT :page_size;

-- name: locate_keys(idempotency_keys)
-- Where duplicates were first stored (append/append_many): one probe of credit_events_idempotency_key_key per key.
SELECT idempotency_key, id, entity_version
  FROM credit_events
 WHERE idempotency_key = ANY(:idempotency_keys::varchar[]);

-- name: entity_version(entity_id)$
-- The entity's current version: a backward probe of credit_events_entity_version_key.
SELECT coalesce(max(entity_version), 0) FROM credit_events WHERE entity_id = :entity_id;

-- name: estimated_events()$
-- get_metrics()'s total_events at initialize: the planner's row estimate (pg_class.reltuples, kept by autovacuum and ANALYZE), read without touching the table, so startup costs the same at a billion rows; -1 before the first VACUUM or ANALYZE.
SELECT c.reltuples::bigint FROM pg_class AS c WHERE c.oid = 'credit_events'::regclass;

-- name: count_events_up_to(bound)$
-- The exact count while the table is small: an index-only scan of idx_credit_events_sequence that stops after :bound rows, run only when the estimate is below it.
SELECT count(*) FROM (SELECT FROM credit_events LIMIT :bound) AS head;
