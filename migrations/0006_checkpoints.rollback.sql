-- Dropping the objects drops their grants with them. Consumers' progress is lost: they restart
-- from position 0 (or from wherever they keep it) after an upgrade.
-- DROP TABLE waits for ACCESS EXCLUSIVE: fail fast instead of queueing every reader behind it.
SET LOCAL lock_timeout = '5s';

DROP FUNCTION credit_events_append_checkpointed(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[],
                                                UUID[], UUID[], JSONB[], TEXT[], INTEGER[], VARCHAR, BIGINT);
DROP FUNCTION credit_checkpoints_advance(VARCHAR, BIGINT);
-- squawk-ignore ban-drop-table
DROP TABLE credit_checkpoints;
