-- Uninstalls disable a portal's tokens instead of deleting them (owner: HubSpot integration).
--
-- A mistaken uninstall (a refusal that was about the app's configuration, not the portal) must
-- be undoable: the row stays, sealed as before, with `disabled_at` set. Disabled tokens are never
-- handed out; `throttle portal restore` (or a reinstall) clears `disabled_at`, and the
-- dispatchers' hourly pruning deletes rows disabled longer than UNINSTALL_GRACE_DAYS ago.
ALTER TABLE oauth_tokens ADD COLUMN IF NOT EXISTS disabled_at timestamptz;

CREATE INDEX IF NOT EXISTS oauth_tokens_disabled_at ON oauth_tokens (disabled_at)
    WHERE disabled_at IS NOT NULL;
