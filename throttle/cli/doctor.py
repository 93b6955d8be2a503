"""`throttle doctor`: the troubleshooting list answered in one command.

Each check is a small function returning `Check`s; one failing check never hides the others
(Redis down still lets PostgreSQL and HubSpot be checked). Checks:
- Redis reachable; the engine's Lua scripts cached (they load on first use, so only a note);
- durability: REDIS_DURABILITY and whether Redis' persistence settings hold it (strict: every
  master has appendonly yes and appendfsync always; standard: what Redis has);
- PostgreSQL reachable; migrations current;
- policies in the registry that no longer validate; policies of portals that are not installed;
- each installed portal's token: valid now (refreshed if due) and introspected — the right portal,
  the `automation` and `oauth` scopes; uninstalled portals with their reason, and whether their
  tokens are still kept (then `throttle portal restore` can undo the uninstall);
- HubSpot refusing the app's own configuration (client id or secret, a proxy): met by this run's
  refreshes or recorded by a dispatcher or webhook pod — portals stay installed meanwhile;
- the action definition registered for HUBSPOT_APP_ID with this PUBLIC_URL (when a developer
  API key is configured).
Tokens are never printed; a failed check names the setting or the step to fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from throttle.engine import keys
from throttle.engine.policy_index import registry_load
from throttle.engine.redis_client import (
    DurabilityError,
    persistence,
    redis_client,
    require_strict_durability,
)
from throttle.engine.scripts import ENGINE_SCRIPTS, lua_source
from throttle.history.migrations import pending_migrations
from throttle.history.pool import create_pool
from throttle.hubspot.action_definition import action_definition
from throttle.hubspot.client import DeveloperAuth, HubSpotClient, HubSpotError, TokenInfo
from throttle.hubspot.config_fault import read_shared
from throttle.hubspot.crypto import CryptoError, TokenCipher
from throttle.hubspot.tokens import PortalStopped, TokenManager, TokenStore, TokenUnavailable
from throttle.settings import Settings

Status = Literal["ok", "warn", "fail"]
REQUIRED_SCOPES = ("automation", "oauth")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


async def check_redis(redis: Any) -> list[Check]:

    try:
        await redis.ping()
    except Exception as exc:
        return [Check("redis", "fail", f"REDIS_URL unreachable ({type(exc).__name__})")]
    # Redis names scripts by SHA-1 of their source: an identifier, not a security use.
    shas = [
        hashlib.sha1(lua_source(n).encode(), usedforsecurity=False).hexdigest()
        for n in ENGINE_SCRIPTS
    ]
    try:
        cached = sum(bool(x) for x in await redis.script_exists(*shas))
    except Exception:  # a cluster client may refuse SCRIPT EXISTS across nodes
        cached = -1
    note = (
        f"{cached} of {len(shas)} engine scripts cached (the rest load on first use)"
        if cached >= 0
        else "script cache not inspected"
    )
    return [Check("redis", "ok", f"reachable; {note}")]


async def check_durability(redis: Any, mode: str) -> list[Check]:
    """What a Redis crash can take of the BLOCK answers given (docs/durability.md)."""
    if mode == "strict":
        try:
            await require_strict_durability(redis)
        except DurabilityError as exc:
            return [Check("durability", "fail", str(exc))]
        return [
            Check("durability", "ok", "strict: every master fsyncs each write before answering")
        ]
    try:
        nodes = await persistence(redis)
    except Exception:
        return [Check("durability", "ok", "standard (Redis' persistence settings not readable)")]
    seen = sorted(
        {
            f"appendonly {c.get('appendonly')}, appendfsync {c.get('appendfsync')}"
            for c in nodes.values()
        }
    )
    detail = f"standard: Redis has {'; '.join(seen)}"
    if any(c.get("appendonly") != "yes" for c in nodes.values()):
        return [Check("durability", "warn", detail + ": a restart loses every queue")]
    return [
        Check(
            "durability",
            "ok",
            detail + " (REDIS_DURABILITY=strict: nothing answered BLOCK is lost to a crash)",
        )
    ]


async def check_postgres(dsn: str) -> list[Check]:

    try:
        pending = await pending_migrations(dsn)
    except Exception as exc:
        return [Check("postgresql", "fail", f"DATABASE_URL unreachable ({type(exc).__name__})")]
    if pending:
        return [
            Check("postgresql", "ok", "reachable"),
            Check("migrations", "fail", f"pending: {', '.join(pending)} (run `throttle migrate`)"),
        ]
    return [Check("postgresql", "ok", "reachable"), Check("migrations", "ok", "current")]


async def check_policies(redis: Any, installed: set[int] | None) -> list[Check]:

    try:
        entries = await redis.hlen(keys.REGISTRY)
        _, policies = await registry_load(redis)
    except Exception as exc:
        return [Check("policies", "fail", f"registry unreadable ({type(exc).__name__})")]
    checks = [Check("policies", "ok", f"{len(policies)} active")]
    if entries > len(policies):
        checks.append(
            Check("policies", "fail", f"{entries - len(policies)} registry entries do not validate")
        )
    if installed is not None:
        orphans = sorted(
            {p.portal_id for p in policies if p.portal_id and p.portal_id not in installed}
        )
        if orphans:
            listed = ", ".join(map(str, orphans[:10]))
            checks.append(
                Check("policies", "warn", f"policies for portals without the app: {listed}")
            )
    return checks


async def check_portals(tokens: Any, client: Any) -> tuple[list[Check], set[int]]:
    """Each portal's install: a usable token, introspected; uninstalled ones with their reason."""

    checks: list[Check] = []
    installed: set[int] = set()
    for installation in await tokens.store.installations():
        name = f"portal {installation.portal_id}"
        if installation.status != "installed":
            reason = installation.uninstall_reason or "no reason recorded"
            if installation.tokens_disabled_at is not None:
                reason += (
                    f"; tokens kept since {installation.tokens_disabled_at:%Y-%m-%d %H:%M} UTC "
                    f"(`throttle portal restore {installation.portal_id}` undoes the uninstall "
                    "until UNINSTALL_GRACE_DAYS have passed)"
                )
            checks.append(Check(name, "warn", reason))
            continue
        installed.add(installation.portal_id)
        try:
            token = await tokens.access_token(installation.portal_id)
        except (PortalStopped, TokenUnavailable) as exc:
            checks.append(Check(name, "fail", str(exc)))
            continue
        info = await client.introspect(token)
        if not isinstance(info, TokenInfo):
            checks.append(Check(name, "fail", f"introspection failed: {type(info).__name__}"))
        elif info.hub_id != installation.portal_id:
            checks.append(Check(name, "fail", f"token belongs to portal {info.hub_id}"))
        elif missing := [s for s in REQUIRED_SCOPES if s not in info.scopes]:
            checks.append(
                Check(name, "fail", f"missing scopes {' '.join(missing)}: reinstall the app")
            )
        else:
            checks.append(Check(name, "ok", f"token valid {info.expires_in} s more; scopes ok"))
    if not checks:
        checks.append(Check("portals", "warn", "no portal has installed the app yet"))
    return checks, installed


async def check_config_fault(redis: Any, tokens: Any) -> list[Check]:
    """HubSpot refusing the app itself: what this run's refreshes met, else what a pod recorded."""

    record = tokens.config_fault() if tokens is not None else None
    if record is None and redis is not None:
        record = await read_shared(redis)
    if record is not None:
        return [Check("hubspot app", "fail", record.summary())]
    return [Check("hubspot app", "ok", "no configuration fault met at HubSpot's token endpoint")]


async def check_action_definition(client: Any, settings: Settings) -> list[Check]:

    key = settings.hubspot_developer_api_key
    if settings.hubspot_app_id is None or key is None or not settings.public_url:
        return [
            Check(
                "action definition",
                "warn",
                "not checked: needs HUBSPOT_APP_ID, HUBSPOT_DEVELOPER_API_KEY and PUBLIC_URL",
            )
        ]
    wanted = action_definition(settings.public_url)
    try:
        found = await client.list_definitions(
            settings.hubspot_app_id, DeveloperAuth(api_key=key.get_secret_value())
        )
    except HubSpotError as exc:
        return [Check("action definition", "fail", str(exc))]
    ours = [d for d in found if d.get("actionUrl") == wanted["actionUrl"]]
    if not ours:
        return [
            Check(
                "action definition",
                "fail",
                f"none with actionUrl {wanted['actionUrl']} (run `throttle hubspot "
                "register-action`)",
            )
        ]
    definition = ours[0]
    if not definition.get("published"):
        return [Check("action definition", "warn", f"{definition['id']} is not published")]
    return [Check("action definition", "ok", f"{definition['id']} → {wanted['actionUrl']}")]


async def run_checks(settings: Settings) -> list[Check]:

    checks: list[Check] = [
        Check(name, "fail", f"{name.upper()} is not set")
        for name in ("redis_url", "database_url", "encryption_key")
        if getattr(settings, name) in (None, "")
    ]
    redis = redis_client(settings) if settings.redis_url else None
    pool = None
    try:
        if redis is not None:
            checks += await check_redis(redis)
            if checks[-1].status == "ok":
                checks += await check_durability(redis, settings.redis_durability)
        database_ok = False
        if settings.database_url:
            found = await check_postgres(settings.database_url)
            checks += found
            database_ok = all(c.status == "ok" for c in found)
        async with aiohttp.ClientSession() as session:
            client = HubSpotClient.from_settings(session, settings)
            installed: set[int] | None = None
            tokens = None
            if database_ok and redis is not None and settings.encryption_keys:
                assert settings.database_url is not None
                pool = await create_pool(settings.database_url, max_size=2)
                try:
                    tokens = TokenManager(
                        TokenStore(pool, TokenCipher(settings.encryption_keys)), client, redis
                    )
                    portal_checks, installed = await check_portals(tokens, client)
                    checks += portal_checks
                except CryptoError as exc:
                    checks.append(Check("tokens", "fail", f"{exc} (see `throttle rotate-keys`)"))
            checks += await check_config_fault(redis, tokens)
            if redis is not None and any(c.name == "redis" and c.status == "ok" for c in checks):
                checks += await check_policies(redis, installed)
            checks += await check_action_definition(client, settings)
    finally:
        if pool is not None:
            await pool.close()
        if redis is not None:
            await redis.aclose()
    return checks
