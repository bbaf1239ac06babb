-- Destroys the event history: `eventstore schema downgrade` demands --yes.
DROP FUNCTION IF EXISTS credit_events_append_batch(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[], UUID[], JSONB[], TEXT[], INTEGER[]);
DROP FUNCTION IF EXISTS credit_events_append(UUID, VARCHAR, VARCHAR, INTEGER, TIMESTAMPTZ, VARCHAR, UUID, UUID, JSONB, TEXT, INTEGER);
DROP TABLE IF EXISTS credit_events;
DROP FUNCTION IF EXISTS credit_events_refuse_change();
DROP FUNCTION IF EXISTS credit_events_take_xid();
