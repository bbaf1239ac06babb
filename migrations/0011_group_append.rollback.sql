-- Back to 0010: appends one statement each (the journal of 0.2.0 and earlier never calls the group function).
SET LOCAL lock_timeout = '5s';

DROP FUNCTION credit_events_append_group(UUID[], VARCHAR[], VARCHAR[], INTEGER[], TIMESTAMPTZ[], VARCHAR[], UUID[],
                                         UUID[], JSONB[], TEXT[], INTEGER[]);
