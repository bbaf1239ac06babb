-- Subscriptions then stop working; nothing is lost (the functions store nothing).
DROP FUNCTION IF EXISTS credit_events_fence_wait(xid8, INTEGER);
DROP FUNCTION IF EXISTS credit_events_fence_mark(BIGINT);
