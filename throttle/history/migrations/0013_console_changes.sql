-- Changes made in the portal console (owner: the console, throttle/webhook_service/console).
--
-- One row per pause or resume of a queue: which portal and queue, what, who (the HubSpot user's
-- email, or `link:<name>` for a console link) and when. The queue page lists them; a portal purge
-- deletes them with the rest of the portal's data.
CREATE TABLE IF NOT EXISTS console_changes (
    id         bigserial PRIMARY KEY,
    portal_id  bigint NOT NULL,
    queue      text NOT NULL,
    change     text NOT NULL CHECK (change IN ('pause', 'resume')),
    who        text NOT NULL,
    made_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS console_changes_queue ON console_changes (portal_id, queue, made_at DESC);

-- The queue page's chart (releases per minute over the last hour) and its recent failures read
-- one policy's rows: without these they would scan the portal's whole history.
CREATE INDEX IF NOT EXISTS action_executions_policy_released
    ON action_executions (portal_id, policy, released_at) WHERE released_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS action_executions_policy_failed
    ON action_executions (portal_id, policy, updated_at) WHERE outcome IN ('failed', 'expired');
