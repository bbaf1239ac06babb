-- The reader side of gap-free subscriptions (docs/ordering.md).
-- depends: 0001_credit_events
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout

-- Step 1 of the fence, its own transaction: the sequence's high-water mark, then (a later
-- statement) a fresh transaction id as a marker. Every inserting transaction takes its xid
-- before it draws an id (trigger credit_events_take_xid_first), and xids are handed out in
-- time order, so every transaction holding an id at or below the mark has an xid below the
-- marker. The marker is needed because a snapshot's in-progress list (xip) omits transactions
-- whose xid is at or above its xmax (latest completed xid + 1), so the list alone misses some.
-- The marker transaction writes nothing: its commit record is not flushed. No marker (and no
-- xid spent) when nothing was drawn after p_after, the position the caller already has.
CREATE FUNCTION credit_events_fence_mark(p_after BIGINT, OUT high_water BIGINT, OUT marker xid8)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO high_water
      FROM credit_events_id_seq AS s;
    IF high_water > p_after THEN
        marker := pg_current_xact_id();
    END IF;
END;
$$;

-- Step 2, in a later transaction that takes no xid: true once every transaction with an xid
-- below the marker has ended, false if some outlast p_wait_ms (the caller asks again). After
-- true, every row at or below the high-water mark is committed or never will be.
-- Fast test: the oldest running xid of a fresh snapshot is not below the marker (snapshots
-- rather than the commit log: a transaction is marked committed a moment before its rows
-- become visible to new snapshots). Otherwise only transactions connected to this database
-- can insert here: when this role may see every backend, a transaction elsewhere in the
-- cluster does not hold subscribers back. age() compares xids without wraparound trouble.
CREATE FUNCTION credit_events_fence_wait(p_marker xid8, p_wait_ms INTEGER) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_deadline  TIMESTAMPTZ := clock_timestamp() + p_wait_ms * INTERVAL '1 millisecond';
    v_sees_all  BOOLEAN := (SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user)
                           OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER');
BEGIN
    LOOP
        IF pg_snapshot_xmin(pg_current_snapshot()) >= p_marker THEN
            RETURN true;
        END IF;
        IF v_sees_all THEN
            PERFORM pg_stat_clear_snapshot();
            IF NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                            WHERE a.datname = current_database()
                              AND age(a.backend_xid) > age(p_marker::xid))
               AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts AS p  -- prepared: no backend
                                WHERE p.database = current_database()
                                  AND age(p.transaction) > age(p_marker::xid)) THEN
                RETURN true;
            END IF;
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.0005);
    END LOOP;
END;
$$;

COMMENT ON FUNCTION credit_events_fence_mark IS
    'Subscriptions, fence step 1: (sequence high-water mark, xid marker); see credit_events_fence_wait.';
COMMENT ON FUNCTION credit_events_fence_wait IS
    'Subscriptions, fence step 2: true once every xid below the marker has ended, false after p_wait_ms.';
