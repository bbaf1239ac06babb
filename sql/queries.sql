-- Entity streams and filtered queries over credit_events. Every query is one keyset page
-- (never OFFSET); the journal picks the query whose leading filter has an index. The position-
-- order queries stop at :high_water, the fence taken once per call (read_events_page's rule).
-- Event SELECTs return payload::text (jsonb's own text form, what the binary jsonb format
-- carries too): the client decodes a whole page's payloads with one msgspec call.

-- name: read_entity_page(entity_id, after_version, up_to_version, page_size)
-- credit_events_entity_version_key: a true keyset range (after_version, up_to_version] walked in index order (versions need not be dense: imports keep the file's); the generic plan is this index scan. A stream of a few dozen rows may be fetched by bitmap and sorted instead.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND entity_version > :after_version
   AND entity_version <= :up_to_version
 ORDER BY entity_version
 LIMIT :page_size;

-- name: read_entity_page_backwards(entity_id, after_version, up_to_version, page_size)
-- The same range of credit_events_entity_version_key walked backwards: the latest event of a stream is one probe at the end of its range.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND entity_version > :after_version
   AND entity_version <= :up_to_version
 ORDER BY entity_version DESC
 LIMIT :page_size;

-- name: read_entity_range_page(entity_id, since, until, after_version, up_to_version, page_size)
-- idx_credit_events_entity_time: (entity_id, timestamp) bounds the scan to the entity's rows inside the window; the few rows found are sorted by version.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND entity_version > :after_version
   AND entity_version <= :up_to_version
 ORDER BY entity_version
 LIMIT :page_size;

-- name: read_entity_range_page_backwards(entity_id, since, until, after_version, up_to_version, page_size)
-- read_entity_range_page, newest first.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE entity_id = :entity_id
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND entity_version > :after_version
   AND entity_version <= :up_to_version
 ORDER BY entity_version DESC
 LIMIT :page_size;

-- name: query_by_correlation_page(correlation_id, after, high_water, event_types, since, until, payload_contains, page_size)
-- idx_credit_events_correlation_id (correlation_id, id): the correlation's rows in position order from (after, high_water], so a page stops at LIMIT with no sort; the other filters are checked on those rows only.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE correlation_id = :correlation_id
   AND id > :after
   AND id <= :high_water
   AND (:event_types::varchar[] IS NULL OR event_type = ANY(:event_types))
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND (:payload_contains::jsonb IS NULL OR payload @> :payload_contains)
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_payload_page(payload_contains, after, high_water, event_types, since, until, page_size)
-- idx_credit_events_payload_gin: jsonb_path_ops answers @> with a bitmap of candidate rows, rechecked and sorted by position.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE payload @> :payload_contains::jsonb
   AND id > :after
   AND id <= :high_water
   AND (:event_types::varchar[] IS NULL OR event_type = ANY(:event_types))
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_type_page(event_type, after, high_water, since, until, page_size)
-- idx_credit_events_type_id (event_type, id): one index range in position order that stops at LIMIT, no sort; planned for the value, so the planner may walk the primary key instead for a type that is most of the table.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE event_type = :event_type
   AND id > :after
   AND id <= :high_water
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_types_page(event_types, after, high_water, since, until, page_size)
-- idx_credit_events_type_id for a list of types: = ANY gives one index range per type but no order across them in PostgreSQL 15, so the types' rows in (after, high_water] are fetched and sorted by position; for types that are most of the table the planner walks the primary key instead.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE event_type = ANY(:event_types::varchar[])
   AND id > :after
   AND id <= :high_water
   AND "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
 ORDER BY id
 LIMIT :page_size;

-- name: query_by_time_page(since, until, after, high_water, page_size)
-- idx_credit_events_timestamp: a range scan over the window (open ends become -infinity/infinity, so the bounds are always index conditions), sorted by position.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE "timestamp" >= coalesce(:since::timestamptz, '-infinity')
   AND "timestamp" < coalesce(:until::timestamptz, 'infinity')
   AND id > :after
   AND id <= :high_water
 ORDER BY id
 LIMIT :page_size;
