-- Subscriptions then stop working; nothing is lost (the functions store nothing).
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout
DROP FUNCTION IF EXISTS credit_events_fence_wait(xid8, INTEGER);
DROP FUNCTION IF EXISTS credit_events_fence_mark(BIGINT);
