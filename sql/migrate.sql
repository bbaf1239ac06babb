-- Moving events between the file journal and credit_events (eventstore.migrate, eventstore.transfer).
-- Positional parameters follow first appearance, which is always the declared order.
-- Event SELECTs return payload::text (jsonb's own text form, what the binary jsonb format
-- carries too): the client decodes a whole page's payloads with one msgspec call.

-- name: try_import_lock()$
-- One import at a time per database: a session-level advisory lock (its own class id, so it never meets an entity's append lock); it dies with the connection, also on SIGKILL.
SELECT pg_try_advisory_lock(1701147248, 0);

-- name: import_unlock()$
-- Released explicitly when the import ends normally; a killed import releases it by disconnecting.
SELECT pg_advisory_unlock(1701147248, 0);

-- name: lock_import_entities(entity_ids)
-- The first statement of an import batch's transaction, before its COPY into credit_events (the one statement the client library writes: COPY credit_events (event_id, …, entity_version) FROM STDIN (FORMAT binary), ids drawn in file order): the batch's entities locked by credit_events_lock_entities, the one lock step of every write path, so a live append to one of them waits and then numbers after the imported versions.
SELECT credit_events_lock_entities(:entity_ids::text[]);

-- name: import_batch(event_ids, idempotency_keys, event_types, schema_versions, timestamps, actor_ids, correlation_ids, causation_ids, payloads, entity_ids, entity_versions)
-- The import of a batch whose COPY met a key already stored (a re-run, or an event written since): one statement, so one round trip and atomic in autocommit. The batch's entities are locked first by credit_events_lock_entities (migration 0008), the one lock step of every write path, so a live append to one of them waits and then numbers after the imported versions, and an import and a live batch never deadlock. The file's entity_version is inserted as is: credit_events_entity_version_key then refuses a version taken by another event. Ids are drawn in file order (ORDER BY ord below the insert). Keys already stored are left out by an anti-join, cheaper than ON CONFLICT's speculative insertion; a key committed by someone else meanwhile raises a unique violation and the batch is redone with import_batch_on_conflict.
WITH batch AS (
    SELECT *
      FROM unnest(:event_ids::uuid[], :idempotency_keys::varchar[], :event_types::varchar[], :schema_versions::int[],
                  :timestamps::timestamptz[], :actor_ids::varchar[], :correlation_ids::uuid[], :causation_ids::uuid[],
                  :payloads::jsonb[], :entity_ids::text[], :entity_versions::int[])
           WITH ORDINALITY AS b(event_id, idempotency_key, event_type, schema_version, ts, actor_id,
                                correlation_id, causation_id, payload, entity_id, entity_version, ord)
), entity_locks AS MATERIALIZED (
    SELECT credit_events_lock_entities(array_agg(b.entity_id)) AS locked FROM batch b
)
INSERT INTO credit_events (event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
                           correlation_id, causation_id, payload, entity_id, entity_version)
SELECT b.event_id, b.idempotency_key, b.event_type, b.schema_version, b.ts, b.actor_id,
       b.correlation_id, b.causation_id, b.payload, b.entity_id, b.entity_version
  FROM batch b CROSS JOIN entity_locks
 WHERE NOT EXISTS (SELECT 1 FROM credit_events c WHERE c.idempotency_key = b.idempotency_key)
 ORDER BY b.ord;

-- name: import_batch_on_conflict(event_ids, idempotency_keys, event_types, schema_versions, timestamps, actor_ids, correlation_ids, causation_ids, payloads, entity_ids, entity_versions)
-- The same import with ON CONFLICT (idempotency_key) DO NOTHING as the arbiter: the retry of a batch whose fast path met a key stored concurrently.
WITH batch AS (
    SELECT *
      FROM unnest(:event_ids::uuid[], :idempotency_keys::varchar[], :event_types::varchar[], :schema_versions::int[],
                  :timestamps::timestamptz[], :actor_ids::varchar[], :correlation_ids::uuid[], :causation_ids::uuid[],
                  :payloads::jsonb[], :entity_ids::text[], :entity_versions::int[])
           WITH ORDINALITY AS b(event_id, idempotency_key, event_type, schema_version, ts, actor_id,
                                correlation_id, causation_id, payload, entity_id, entity_version, ord)
), entity_locks AS MATERIALIZED (
    SELECT credit_events_lock_entities(array_agg(b.entity_id)) AS locked FROM batch b
)
INSERT INTO credit_events (event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
                           correlation_id, causation_id, payload, entity_id, entity_version)
SELECT b.event_id, b.idempotency_key, b.event_type, b.schema_version, b.ts, b.actor_id,
       b.correlation_id, b.causation_id, b.payload, b.entity_id, b.entity_version
  FROM batch b CROSS JOIN entity_locks
 ORDER BY b.ord
    ON CONFLICT (idempotency_key) DO NOTHING;

-- name: flush_wal()$
-- The import commits with synchronous_commit off (a lost tail is re-imported by the next run); this one synchronous commit of a transaction that has an id flushes the WAL of every batch before it, so a finished import is durable.
SELECT pg_current_xact_id()::text
  FROM set_config('synchronous_commit', 'on', false);

-- name: present_keys(idempotency_keys)
-- Which of a batch's keys are already stored (import --dry-run): one probe of credit_events_idempotency_key_key per key.
SELECT idempotency_key
  FROM credit_events
 WHERE idempotency_key = ANY(:idempotency_keys::varchar[]);

-- name: events_by_keys(idempotency_keys)
-- The stored rows of a batch of the file's events (verify): one probe of credit_events_idempotency_key_key per key.
SELECT id, event_id, event_type, entity_id, payload::text AS payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events
 WHERE idempotency_key = ANY(:idempotency_keys::varchar[]);

-- name: keys_page(after, page_size)
-- Keyset page of (position, idempotency_key) for verify's extra-in-database pass: an index range scan of the primary key.
SELECT id, idempotency_key
  FROM credit_events
 WHERE id > :after
 ORDER BY id
 LIMIT :page_size;

-- name: count_events_after(after)$
-- The export's progress total, in its snapshot: an index-only scan of idx_credit_events_sequence over the range the export then reads in full anyway.
SELECT count(*) FROM credit_events WHERE id > :after;
