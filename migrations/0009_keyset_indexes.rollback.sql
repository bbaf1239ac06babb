-- Back to (event_type) and (correlation_id), built concurrently before the keyset indexes go.
-- yoyo pairs these statements with the forward ones in reverse (the first here undoes the last
-- there) and, when a forward statement fails, runs the undo of those that ran: so each triple
-- is "remove an INVALID leftover of the old index, build it, drop the new one".
-- No lock_timeout: CONCURRENTLY takes no lock appends wait for, and a lock_timeout would also cut its waits for older transactions short, leaving INVALID indexes.
-- squawk-ignore-file require-lock-timeout

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_correlation;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_credit_events_correlation ON credit_events (correlation_id);

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_correlation_id;

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_type;

CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_credit_events_type ON credit_events (event_type);

DROP INDEX CONCURRENTLY IF EXISTS idx_credit_events_type_id;
