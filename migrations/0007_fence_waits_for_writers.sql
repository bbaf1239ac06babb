-- The subscription fence (0002) waits only for transactions that write credit_events, so a long
-- transaction elsewhere (another table, another database, a forgotten session) no longer holds
-- back position-order reads, whatever the reader's privileges.
-- depends: 0006_checkpoints
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout

-- A transaction can hold a position only if it inserted into credit_events: the INSERT takes
-- RowExclusiveLock on the table (whatever else it holds) before its trigger takes the xid and before it draws an id, and
-- keeps it until the transaction ends; PostgreSQL releases locks after the commit is visible to
-- new snapshots. So once no transaction that holds a lock on credit_events has an xid below the
-- marker, every row at or below the high-water mark is visible or will never exist. Every
-- xid-holding transaction holds ExclusiveLock on its own xid, under the same virtual transaction
-- id (prepared transactions included): that is how a table lock is matched to its xid. pg_locks
-- needs no privilege. Fast path first: the oldest running xid is not below the marker at all.
-- Only the body changes (CREATE OR REPLACE keeps the function's grants).
CREATE OR REPLACE FUNCTION credit_events_fence_wait(p_marker xid8, p_wait_ms INTEGER) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_deadline TIMESTAMPTZ := clock_timestamp() + p_wait_ms * INTERVAL '1 millisecond';
    v_table    OID := 'credit_events'::regclass;
BEGIN
    LOOP
        IF pg_snapshot_xmin(pg_current_snapshot()) >= p_marker THEN
            RETURN true;
        END IF;
        IF NOT EXISTS (SELECT 1
                         FROM pg_locks AS t
                         JOIN pg_locks AS x ON x.virtualtransaction = t.virtualtransaction
                        WHERE t.locktype = 'relation' AND t.relation = v_table AND t.mode = 'RowExclusiveLock'
                          AND t.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
                          AND x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock'
                          AND age(x.transactionid) > age(p_marker::xid)) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.0005);
    END LOOP;
END;
$$;

COMMENT ON FUNCTION credit_events_fence_wait IS
    'Subscriptions, fence step 2: true once no writer of credit_events with an xid below the marker is running, false after p_wait_ms.';
