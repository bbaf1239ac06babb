-- Entity streams and filtered queries over credit_events. Every query is one keyset page
-- (never OFFSET); the journal picks the query whose leading filter has an index.

-- name: read_entity_page(entity_id, after_version, page_size)
-- credit_events_entity_version_key: versions are dense (1..n), so a page is the closed range (after, after + page], one bounded index range scan already in version order.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND entity_version > :after_version
   AND entity_version <= :after_version + :page_size
 ORDER BY entity_version
 LIMIT :page_size;

-- name: read_entity_range_page(entity_id, since, until, after_version, page_size)
-- idx_credit_events_entity_time: (entity_id, timestamp) bounds the scan to the entity's rows inside the window; the few rows found are sorted by version.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND entity_version > :after_version
 ORDER BY entity_version
 LIMIT :page_size;

-- name: query_by_correlation_page(correlation_id, after, event_type, since, until, payload_contains, page_size)
-- idx_credit_events_correlation: a correlation is a handful of rows, fetched by the index and sorted by position; the other filters are checked on those rows only.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE correlation_id = :correlation_id
   AND id > :after
   AND (:event_type::varchar IS NULL OR event_type = :event_type)
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND (:payload_contains::jsonb IS NULL OR payload @> :payload_contains)
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_payload_page(payload_contains, after, event_type, since, until, page_size)
-- idx_credit_events_payload_gin: jsonb_path_ops answers @> with a bitmap of candidate rows, rechecked and sorted by position.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE payload @> :payload_contains::jsonb
   AND id > :after
   AND (:event_type::varchar IS NULL OR event_type = :event_type)
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_type_page(event_type, after, since, until, page_size)
-- idx_credit_events_type: the type's rows by index (the planner may walk the primary key instead for a type that is most of the table), sorted by position.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE event_type = :event_type
   AND id > :after
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_time_page(since, until, after, page_size)
-- idx_credit_events_timestamp: a range scan over the window (open ends become -infinity/infinity, so the bounds are always index conditions), sorted by position.
SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND id > :after
 ORDER BY id
 LIMIT :page_size;
