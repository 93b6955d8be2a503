-- Portal purges: a record of each time a portal's data was deleted (owner: history).
--
-- `throttle portal purge P` (on request) and the dispatchers' hourly pruning (UNINSTALL_GRACE_DAYS
-- after an uninstall) delete a portal's tokens, its queued state in Redis and its execution
-- history; this row says when, why and how much, and holds nothing of the portal's data itself.
CREATE TABLE IF NOT EXISTS portal_purges (
    id                  bigserial PRIMARY KEY,
    portal_id           bigint NOT NULL,
    purged_at           timestamptz NOT NULL DEFAULT now(),
    reason              text NOT NULL CHECK (reason IN ('request', 'uninstalled')),
    policies            integer NOT NULL DEFAULT 0,
    executions_dropped  integer NOT NULL DEFAULT 0,
    history_rows        integer NOT NULL DEFAULT 0,
    tokens              integer NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS portal_purges_portal ON portal_purges (portal_id, purged_at DESC);
