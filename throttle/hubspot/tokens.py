"""OAuth tokens: encrypted at rest in PostgreSQL, refreshed before expiry, once per portal.

`TokenStore` keeps each portal's access and refresh tokens sealed with AES-256-GCM (portal id as
associated data, key id per row) and its installation status with the reason it stopped.
`TokenManager.access_token(portal)` hands out a valid token: from memory while it has more than
the refresh margin left, else it refreshes under a Redis lock shared by every pod, re-reading
PostgreSQL once the lock is held (another pod may have refreshed already). HubSpot may rotate the
refresh token on every refresh, so two pods refreshing at once would leave one with a dead token:
hence the single flight, and the returned refresh token is always the one stored.

The refresh is fenced twice, because the lock alone would not hold when the HTTP call plus the
database write outlast it: the holder renews the lock while it refreshes (so a second pod waits
instead of spending the same refresh token), and the save compares the generation it read — a
pod that lost its lock anyway (stalled past the renewal) cannot overwrite a newer refresh's
tokens with older ones. A refresh refused after another pod's refresh spent the token is not an
uninstall either: the newer tokens are used.

Only a definitive, portal-specific signal uninstalls (contract §7): HubSpot's uninstall event, or
this portal's refresh token refused (400 `BAD_REFRESH_TOKEN`, 401). Anything about the app itself
(its client id or secret refused, a 403, a 5xx, a proxy's answer) is a configuration fault: the
portal stays installed, its tokens are kept, `TokenUnavailable` makes its executions wait, and
`ConfigFaultMonitor` (throttle/hubspot/config_fault.py) makes the fault visible until the next
success.
An uninstall disables the portal's tokens rather than deleting them: for UNINSTALL_GRACE_DAYS a
mistaken uninstall can be undone (`restore`, or a reinstall); `purge_disabled_tokens` deletes them
after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from redis.exceptions import LockError

from throttle import tasks
from throttle.engine import keys
from throttle.hubspot.client import ConfigFault, HubSpotClient, TokenGrant, TokenRefused
from throttle.hubspot.config_fault import PROBE_S, ConfigFaultMonitor, FaultRecord
from throttle.hubspot.crypto import Sealed, TokenCipher
from throttle.metrics import Metrics

log = logging.getLogger(__name__)


class TokenUnavailable(Exception):
    """No usable token right now (HubSpot unreachable, lock busy); try again later."""


class NotInstalled(TokenUnavailable):
    """No tokens were ever stored for this portal."""


class ConfigFaultActive(TokenUnavailable):
    """HubSpot's token endpoint refuses the app's configuration (not this portal): wait, keep
    everything, and say what is wrong (the message names it; no secret in it)."""

    def __init__(self, portal_id: int, fault: ConfigFault) -> None:
        super().__init__(f"portal {portal_id}: no token refresh possible: {fault.describe()}")
        self.portal_id = portal_id
        self.fault = fault


class PortalStopped(Exception):
    """The portal uninstalled the app (or its refresh token was refused): stop its releases."""

    def __init__(self, portal_id: int, reason: str) -> None:
        super().__init__(f"portal {portal_id} stopped: {reason}")
        self.portal_id = portal_id
        self.reason = reason


@dataclass(frozen=True)
class StoredTokens:
    portal_id: int
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    lifetime_s: int
    generation: int

    @classmethod
    def of_grant(
        cls, portal_id: int, grant: TokenGrant, now: float, generation: int
    ) -> StoredTokens:
        """What a save of `grant` at `now` stored (an install's or a refresh's)."""
        return cls(
            portal_id,
            grant.access_token,
            grant.refresh_token,
            now + grant.expires_in,
            max(grant.expires_in, 1),
            generation,
        )

    def fresh(self, now: float, margin_s: float) -> bool:
        """More than the margin (at most half the token's lifetime) is left."""
        return self.expires_at - min(margin_s, self.lifetime_s / 2) > now


@dataclass(frozen=True)
class Installation:
    portal_id: int
    status: str
    uninstall_reason: str | None
    installed_at: datetime
    uninstalled_at: datetime | None
    hub_domain: str | None
    scopes: tuple[str, ...]
    tokens_disabled_at: datetime | None = None
    """Uninstalled with its tokens kept (disabled) since then: `restore` can still undo it."""


RestoreResult = Literal["restored", "installed", "unknown", "no_tokens"]
"""restored; already installed; never installed; uninstalled with its tokens already purged
(or dropped before tokens were kept): only a reinstall brings it back."""


class StaleUninstall(Exception):
    """An uninstall event older than the portal's current install (a late webhook retry)."""

    def __init__(self, portal_id: int, installed_at: datetime) -> None:
        super().__init__(f"portal {portal_id}: uninstall event predates its install")
        self.portal_id = portal_id
        self.installed_at = installed_at


@dataclass(frozen=True)
class RotationReport:
    rows: int
    reencrypted: int
    key_id: str
    remaining: int = 0
    """Rows still under an older key afterwards: skipped while a token refresh held them."""


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class TokenStore:
    """The `hubspot_portals` and `oauth_tokens` tables (migrations 0010, 0011).

    A row of `oauth_tokens` with `disabled_at` set belongs to an uninstalled portal: kept for
    the grace period, never handed out (`load`, `save_refreshed` skip it)."""

    def __init__(self, pool: Any, cipher: TokenCipher) -> None:
        self._pool = pool
        self._cipher = cipher

    async def save(
        self,
        portal_id: int,
        grant: TokenGrant,
        now: float | None = None,
        hub_domain: str | None = None,
    ) -> StoredTokens:
        """Store a fresh install's tokens; marks the portal installed (again)."""
        now = time.time() if now is None else now
        access = self._cipher.seal(grant.access_token, portal_id)
        refresh = self._cipher.seal(grant.refresh_token, portal_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO hubspot_portals (portal_id, status, hub_domain, scopes)
                VALUES ($1, 'installed', $2, $3)
                ON CONFLICT (portal_id) DO UPDATE SET
                    status = 'installed', hub_domain = COALESCE($2, hubspot_portals.hub_domain),
                    scopes = $3, installed_at = now(), uninstalled_at = NULL,
                    uninstall_reason = NULL, updated_at = now()
                """,
                portal_id,
                hub_domain,
                list(grant.scopes),
            )
            generation = await conn.fetchval(
                """
                INSERT INTO oauth_tokens
                    (portal_id, key_id, access_token, refresh_token, expires_at, lifetime_seconds)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (portal_id) DO UPDATE SET
                    key_id = $2, access_token = $3, refresh_token = $4, expires_at = $5,
                    lifetime_seconds = $6, refreshed_at = now(),
                    generation = oauth_tokens.generation + 1, disabled_at = NULL
                RETURNING generation
                """,
                portal_id,
                access.key_id,
                access.blob,
                refresh.blob,
                _ts(now + grant.expires_in),
                max(grant.expires_in, 1),
            )
        return StoredTokens.of_grant(portal_id, grant, now, int(generation))

    async def save_refreshed(
        self, portal_id: int, grant: TokenGrant, now: float, refreshed_generation: int
    ) -> StoredTokens | None:
        """Store a refresh's tokens over the generation it refreshed; None when that is no
        longer the stored one (another refresh or a reinstall stored newer tokens) or the
        portal was uninstalled meanwhile."""
        access = self._cipher.seal(grant.access_token, portal_id)
        refresh = self._cipher.seal(grant.refresh_token, portal_id)
        generation = await self._pool.fetchval(
            """
            UPDATE oauth_tokens SET key_id = $2, access_token = $3, refresh_token = $4,
                expires_at = $5, lifetime_seconds = $6, refreshed_at = now(),
                generation = generation + 1
            WHERE portal_id = $1 AND disabled_at IS NULL AND generation = $7
            RETURNING generation
            """,
            portal_id,
            access.key_id,
            access.blob,
            refresh.blob,
            _ts(now + grant.expires_in),
            max(grant.expires_in, 1),
            refreshed_generation,
        )
        if generation is None:
            return None
        return StoredTokens.of_grant(portal_id, grant, now, int(generation))

    async def load(self, portal_id: int) -> StoredTokens | None:
        row = await self._pool.fetchrow(
            """
            SELECT key_id, access_token, refresh_token, expires_at, lifetime_seconds, generation
            FROM oauth_tokens WHERE portal_id = $1 AND disabled_at IS NULL
            """,
            portal_id,
        )
        if row is None:
            return None
        return StoredTokens(
            portal_id,
            self._cipher.open(Sealed(row["key_id"], bytes(row["access_token"])), portal_id),
            self._cipher.open(Sealed(row["key_id"], bytes(row["refresh_token"])), portal_id),
            row["expires_at"].timestamp(),
            int(row["lifetime_seconds"]),
            int(row["generation"]),
        )

    async def installation(self, portal_id: int) -> Installation | None:
        row = await self._pool.fetchrow(_INSTALLATIONS + " WHERE p.portal_id = $1", portal_id)
        return _installation(row) if row is not None else None

    async def installations(self) -> list[Installation]:
        rows = await self._pool.fetch(_INSTALLATIONS + " ORDER BY p.portal_id")
        return [_installation(row) for row in rows]

    async def mark_uninstalled(
        self, portal_id: int, reason: str, occurred_at: datetime | None = None
    ) -> bool:
        """Record the uninstall and disable the tokens (kept for the grace period, never handed
        out); True if the portal was installed until now. An uninstall that `occurred_at` before
        the portal's current install is a late retry of an older one: StaleUninstall, nothing
        changed (it would otherwise wipe the fresh reinstall)."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT status, installed_at FROM hubspot_portals WHERE portal_id = $1 FOR UPDATE",
                portal_id,
            )
            previous = current["status"] if current is not None else None
            installed_at = current["installed_at"] if current is not None else None
            if occurred_at is not None and installed_at is not None and occurred_at < installed_at:
                raise StaleUninstall(portal_id, installed_at)
            await conn.execute(
                """
                INSERT INTO hubspot_portals (portal_id, status, uninstalled_at, uninstall_reason)
                VALUES ($1, 'uninstalled', now(), $2)
                ON CONFLICT (portal_id) DO UPDATE SET
                    status = 'uninstalled', uninstalled_at = now(), uninstall_reason = $2,
                    updated_at = now()
                WHERE hubspot_portals.status = 'installed'
                """,
                portal_id,
                reason,
            )
            await conn.execute(
                "UPDATE oauth_tokens SET disabled_at = now() "
                "WHERE portal_id = $1 AND disabled_at IS NULL",
                portal_id,
            )
        return bool(previous == "installed")

    async def restore(self, portal_id: int) -> RestoreResult:
        """Undo an uninstall within the grace period: the portal installed again, its kept tokens
        enabled (the next refresh tells whether HubSpot still honours them)."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                "SELECT status FROM hubspot_portals WHERE portal_id = $1 FOR UPDATE", portal_id
            )
            if status is None:
                return "unknown"
            if status == "installed":
                return "installed"
            enabled = await conn.execute(
                "UPDATE oauth_tokens SET disabled_at = NULL "
                "WHERE portal_id = $1 AND disabled_at IS NOT NULL",
                portal_id,
            )
            if enabled.split()[-1] == "0":
                return "no_tokens"
            await conn.execute(
                """
                UPDATE hubspot_portals SET status = 'installed', uninstalled_at = NULL,
                    uninstall_reason = NULL, updated_at = now()
                WHERE portal_id = $1
                """,
                portal_id,
            )
        return "restored"

    async def rotate(self, chunk: int = 200) -> RotationReport:
        """Re-seal every row not under the newest key; afterwards older keys can be removed."""
        current = self._cipher.current_key_id
        total = await self._pool.fetchval("SELECT count(*) FROM oauth_tokens")
        done = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    """
                    SELECT portal_id, key_id, access_token, refresh_token FROM oauth_tokens
                    WHERE key_id <> $1 ORDER BY portal_id LIMIT $2 FOR UPDATE SKIP LOCKED
                    """,
                    current,
                    chunk,
                )
                for row in rows:
                    portal_id = int(row["portal_id"])
                    access = self._cipher.open(
                        Sealed(row["key_id"], bytes(row["access_token"])), portal_id
                    )
                    refresh = self._cipher.open(
                        Sealed(row["key_id"], bytes(row["refresh_token"])), portal_id
                    )
                    sealed_access = self._cipher.seal(access, portal_id)
                    sealed_refresh = self._cipher.seal(refresh, portal_id)
                    await conn.execute(
                        """
                        UPDATE oauth_tokens SET key_id = $2, access_token = $3, refresh_token = $4
                        WHERE portal_id = $1
                        """,
                        portal_id,
                        sealed_access.key_id,
                        sealed_access.blob,
                        sealed_refresh.blob,
                    )
            done += len(rows)
            if len(rows) < chunk:
                remaining = await self._pool.fetchval(
                    "SELECT count(*) FROM oauth_tokens WHERE key_id <> $1", current
                )
                return RotationReport(int(total), done, current, int(remaining))


async def purge_disabled_tokens(pool: Any, grace_days: float) -> int:
    """Delete the tokens of portals uninstalled more than `grace_days` ago (the dispatchers'
    hourly pruning); the `hubspot_portals` row and its reason stay."""
    result = await pool.execute(
        "DELETE FROM oauth_tokens "
        "WHERE disabled_at < now() - make_interval(secs => $1::float8 * 86400)",
        float(grace_days),
    )
    return int(result.split()[-1])


async def delete_portal_tokens(conn: Any, portal_id: int) -> int:
    """A portal's purge (history.portal_purge): its tokens deleted, enabled or not, and what
    its installation row says of it beyond the status (domain, scopes); returns token rows."""
    result = await conn.execute("DELETE FROM oauth_tokens WHERE portal_id = $1", portal_id)
    await conn.execute(
        "UPDATE hubspot_portals SET hub_domain = NULL, scopes = '{}', updated_at = now() "
        "WHERE portal_id = $1",
        portal_id,
    )
    return int(result.split()[-1])


_INSTALLATIONS = """
    SELECT p.*, t.disabled_at AS tokens_disabled_at
    FROM hubspot_portals p LEFT JOIN oauth_tokens t USING (portal_id)
"""


def _installation(row: Any) -> Installation:
    return Installation(
        int(row["portal_id"]),
        str(row["status"]),
        row["uninstall_reason"],
        row["installed_at"],
        row["uninstalled_at"],
        row["hub_domain"],
        tuple(row["scopes"] or ()),
        row["tokens_disabled_at"],
    )


class TokenManager:
    """Valid access tokens for completion calls, one refresh per portal across all pods."""

    def __init__(
        self,
        store: TokenStore,
        client: HubSpotClient,
        redis: Any,
        metrics: Metrics | None = None,
        refresh_margin_s: float = 300.0,
        lock_timeout_s: float = 30.0,
        lock_wait_s: float = 5.0,
        config_probe_s: float = PROBE_S,
    ) -> None:
        self._store = store
        self._client = client
        self._redis = redis
        self._metrics = metrics
        self._margin = refresh_margin_s
        self._lock_timeout = lock_timeout_s
        self._lock_wait = lock_wait_s
        self._cache: dict[int, StoredTokens] = {}
        self._local: dict[int, asyncio.Lock] = {}
        self.faults = ConfigFaultMonitor(redis, metrics, probe_s=config_probe_s)

    @property
    def store(self) -> TokenStore:
        return self._store

    def config_fault(self) -> FaultRecord | None:
        """The configuration fault this process met last and has not seen cleared."""
        return self.faults.active()

    async def recheck(self) -> None:
        """While the token endpoint refuses the app's configuration, ask it again (the refresh
        that met the fault), so the fault clears once fixed even when no execution waits."""
        record = self.faults.active()
        if record is None or record.portal_id is None or self.faults.held() is not None:
            return
        portal_id = record.portal_id
        with contextlib.suppress(TokenUnavailable, PortalStopped):
            async with self._local.setdefault(portal_id, asyncio.Lock()):
                await self._refresh_under_lock(portal_id, None, force=True)

    async def install(
        self, portal_id: int, grant: TokenGrant, hub_domain: str | None = None
    ) -> StoredTokens:
        """Store a new install's tokens (the OAuth callback)."""
        stored = await self._store.save(portal_id, grant, hub_domain=hub_domain)
        self._cache[portal_id] = stored
        return stored

    async def access_token(self, portal_id: int, rejected: str | None = None) -> str:
        """A token with more than the margin left; `rejected` is one HubSpot just answered 401 to.

        Raises PortalStopped (uninstalled) or TokenUnavailable (try later).
        """
        cached = self._cache.get(portal_id)
        if self._usable(cached, rejected):
            assert cached is not None
            return cached.access_token
        async with self._local.setdefault(portal_id, asyncio.Lock()):
            cached = self._cache.get(portal_id)
            if self._usable(cached, rejected):
                assert cached is not None
                return cached.access_token
            stored = await self._load(portal_id)
            if self._usable(stored, rejected):
                return stored.access_token
            return await self._refresh_under_lock(portal_id, rejected)

    def forget(self, portal_id: int) -> None:
        self._cache.pop(portal_id, None)

    def _usable(self, tokens: StoredTokens | None, rejected: str | None) -> bool:
        return (
            tokens is not None
            and tokens.access_token != rejected
            and tokens.fresh(time.time(), self._margin)
        )

    async def _load(self, portal_id: int) -> StoredTokens:
        stored = await self._store.load(portal_id)
        if stored is None:
            self._cache.pop(portal_id, None)
            installation = await self._store.installation(portal_id)
            if installation is not None and installation.status == "uninstalled":
                raise PortalStopped(portal_id, installation.uninstall_reason or "uninstalled")
            raise NotInstalled(f"portal {portal_id} has not installed the app")
        self._cache[portal_id] = stored
        return stored

    async def _refresh_under_lock(
        self, portal_id: int, rejected: str | None, force: bool = False
    ) -> str:
        lock = self._redis.lock(
            keys.hubspot_token_lock(portal_id),
            timeout=self._lock_timeout,
            sleep=0.05,
            blocking_timeout=self._lock_wait,
        )
        if not await lock.acquire():
            raise TokenUnavailable(f"portal {portal_id}: token refresh lock busy")
        try:
            # Another pod may have refreshed while this one waited for the lock.
            stored = await self._load(portal_id)
            if not force and self._usable(stored, rejected):
                return stored.access_token
            async with self._renewing(lock, portal_id):
                return await self._refresh(stored, rejected)
        finally:
            with contextlib.suppress(LockError):  # lost: the generation compare fenced the save
                await lock.release()

    @contextlib.asynccontextmanager
    async def _renewing(self, lock: Any, portal_id: int) -> AsyncIterator[None]:
        """Hold the lock for as long as the refresh runs: HubSpot's answer plus the database
        write may take longer than the lock's timeout, which only bounds how long a crashed
        holder blocks the others."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self._lock_timeout / 3)
                try:
                    await lock.reacquire()
                except LockError:
                    log.warning("portal %s: token refresh lock lost mid-refresh", portal_id)
                    return

        async with tasks.running(renew(), name=f"token lock renewal {portal_id}"):
            yield

    async def _newer(self, stored: StoredTokens) -> StoredTokens | None:
        """The portal's tokens if another refresh (or a reinstall) stored newer ones than
        `stored` since it was read, else None."""
        current = await self._store.load(stored.portal_id)
        if current is None or current.generation == stored.generation:
            return None
        self._cache[stored.portal_id] = current
        log.info("portal %s: another refresh stored newer tokens; using them", stored.portal_id)
        return current

    async def _refresh(self, stored: StoredTokens, rejected: str | None) -> str:
        portal_id = stored.portal_id
        now = time.time()
        # While the app's configuration is refused, one call per probe interval asks again.
        held = self.faults.held()
        result = held or await self._client.refresh_token(stored.refresh_token)
        match result:
            case TokenGrant():
                saved = await self._store.save_refreshed(portal_id, result, now, stored.generation)
                self._count("ok")
                await self.faults.clear()
                if saved is None:
                    newer = await self._newer(stored)  # fenced: never over newer tokens
                    if newer is not None:
                        return newer.access_token
                    raise PortalStopped(portal_id, "uninstalled while refreshing")
                self._cache[portal_id] = saved
                log.info("portal %s: access token refreshed", portal_id)
                return saved.access_token
            case TokenRefused(status=status, error=error):
                newer = await self._newer(stored)
                if newer is not None:  # spent by another pod's refresh, not revoked
                    return newer.access_token
                # This portal's refresh token, definitively: the app was uninstalled there.
                reason = f"uninstalled: refresh token refused (HTTP {status} {error})"
                self._count("refused")
                await self.uninstall(portal_id, reason, cause="refresh_refused")
                raise PortalStopped(portal_id, reason)
            case ConfigFault():
                # The app's own configuration: nobody is uninstalled, nothing is dropped.
                if held is None:
                    self._count("config_fault")
                    await self.faults.report(result, portal_id)
                if stored.expires_at > time.time() + 1 and stored.access_token != rejected:
                    return stored.access_token
                raise ConfigFaultActive(portal_id, result)
            case _:
                self._count("error")
                log.warning("portal %s: token refresh failed, will retry", portal_id)
                if stored.expires_at > time.time() + 1 and stored.access_token != rejected:
                    return stored.access_token
                raise TokenUnavailable(f"portal {portal_id}: token refresh failed")

    async def uninstall(
        self, portal_id: int, reason: str, cause: str, occurred_at: datetime | None = None
    ) -> bool:
        """Record an uninstall (refresh refused or the uninstall webhook); StaleUninstall when
        the event `occurred_at` before the portal's current install."""
        changed = await self._store.mark_uninstalled(portal_id, reason, occurred_at)
        self._cache.pop(portal_id, None)
        if changed:
            log.warning("portal %s uninstalled: %s", portal_id, reason)
            if self._metrics is not None:
                self._metrics.portals_uninstalled.labels(cause).inc()
        return changed

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.token_refreshes.labels(result).inc()
