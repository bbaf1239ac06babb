-- Back to migration 0002's fence wait (every xid below the marker; backends of this database
-- only when the role may see them all).
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout

CREATE OR REPLACE FUNCTION credit_events_fence_wait(p_marker xid8, p_wait_ms INTEGER) RETURNS BOOLEAN
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

COMMENT ON FUNCTION credit_events_fence_wait IS
    'Subscriptions, fence step 2: true once every xid below the marker has ended, false after p_wait_ms.';
