-- Destroys the event history: `eventstore schema downgrade` demands --yes.
-- DROP TABLE waits for ACCESS EXCLUSIVE: fail fast instead of queueing every reader behind it.
SET LOCAL lock_timeout = '5s';

DROP FUNCTION IF EXISTS credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[]);
DROP FUNCTION IF EXISTS credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER);
-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS credit_events;
DROP FUNCTION IF EXISTS credit_events_refuse_change();
DROP FUNCTION IF EXISTS credit_events_take_xid();
