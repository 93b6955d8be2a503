-- Execution history: one row per HubSpot callback, written in batches by the history writers
-- from the engine's Redis event streams (throttle/dispatcher/history_writer.py).
CREATE TABLE IF NOT EXISTS action_executions (
    callback_id          text PRIMARY KEY,
    portal_id            bigint NOT NULL,
    policy               text NOT NULL,
    queue                text NOT NULL DEFAULT 'shared',
    workflow_id          bigint,
    action_definition_id bigint,
    object_type          text,
    object_id            text,
    input_fields         jsonb,
    received_at          timestamptz,
    expires_at           timestamptz,
    released_at          timestamptz,
    completed_at         timestamptz,
    outcome              text NOT NULL DEFAULT 'queued'
                         CHECK (outcome IN ('queued', 'released', 'completed', 'failed', 'expired')),
    outcome_rank         smallint NOT NULL DEFAULT 0, -- queued 0, released/retrying 1, final 2:
                                                      -- events applied out of order never undo
    attempts             integer NOT NULL DEFAULT 0,
    last_error           text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS action_executions_portal_received
    ON action_executions (portal_id, received_at DESC);
CREATE INDEX IF NOT EXISTS action_executions_unfinished
    ON action_executions (expires_at) WHERE outcome IN ('queued', 'released');
CREATE INDEX IF NOT EXISTS action_executions_updated ON action_executions (updated_at);
