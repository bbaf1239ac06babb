-- DROP TABLE waits for ACCESS EXCLUSIVE: fail fast instead of queueing every reader behind it.
SET LOCAL lock_timeout = '5s';

-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS credit_snapshots;
