-- Policies created through the config API when no Kubernetes cluster holds them (local mode).
CREATE TABLE IF NOT EXISTS policies (
    portal_id  bigint NOT NULL,
    name       text NOT NULL,
    action_id  bigint,
    spec       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (portal_id, name)
);

CREATE INDEX IF NOT EXISTS policies_portal_action ON policies (portal_id, action_id);
