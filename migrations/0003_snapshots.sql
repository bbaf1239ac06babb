-- Projection snapshots: the state of a named projection as of a journal position.
-- depends: 0002_subscription_fence
-- No lock_timeout: it only creates, comments on or replaces objects nothing waits on.
-- squawk-ignore-file require-lock-timeout

CREATE TABLE credit_snapshots (
    name       TEXT        NOT NULL,
    position   BIGINT      NOT NULL,
    state      JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_snapshots_pkey PRIMARY KEY (name),
    CONSTRAINT credit_snapshots_position_check CHECK (position >= 0),
    CONSTRAINT credit_snapshots_name_check CHECK (length(name) BETWEEN 1 AND 200)
);

COMMENT ON TABLE credit_snapshots IS
    'Latest snapshot per projection (eventstore). A derived cache: safe to delete, never the source of truth.';
