-- HubSpot installations and their OAuth tokens (owner: HubSpot integration).
--
-- hubspot_portals: one row per portal that ever installed the app. An uninstall (refresh token
-- refused, or the uninstall webhook) keeps the row with the reason and drops the tokens, so
-- support can answer "why did my throttle stop?" from PostgreSQL.
CREATE TABLE IF NOT EXISTS hubspot_portals (
    portal_id        bigint PRIMARY KEY,
    status           text NOT NULL DEFAULT 'installed'
                     CHECK (status IN ('installed', 'uninstalled')),
    hub_domain       text,
    scopes           text[] NOT NULL DEFAULT '{}',
    installed_at     timestamptz NOT NULL DEFAULT now(),
    uninstalled_at   timestamptz,
    uninstall_reason text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- oauth_tokens: AES-256-GCM ciphertexts (12-byte nonce first), the portal id as associated data,
-- and the id of the key that sealed both tokens of the row (key rotation re-seals by key_id).
CREATE TABLE IF NOT EXISTS oauth_tokens (
    portal_id        bigint PRIMARY KEY REFERENCES hubspot_portals (portal_id) ON DELETE CASCADE,
    key_id           text NOT NULL,
    access_token     bytea NOT NULL,
    refresh_token    bytea NOT NULL,
    expires_at       timestamptz NOT NULL,
    lifetime_seconds integer NOT NULL CHECK (lifetime_seconds > 0),
    refreshed_at     timestamptz NOT NULL DEFAULT now(),
    generation       bigint NOT NULL DEFAULT 1
);

CREATE INDEX IF NOT EXISTS oauth_tokens_key_id ON oauth_tokens (key_id);
