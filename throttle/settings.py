"""The one settings object: every environment variable Throttle reads, its default and its meaning.

Settings come from the environment, then from a `.env` file in the working folder (the original
Elixir setup sourced one); the environment wins. Each command says which settings it needs with
`Settings.require`, so `throttle simulator` runs without a database while `throttle webhook`
stops at start with one line naming whatever is missing — never a traceback, never a value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import json
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable, never its value."""


@dataclasses.dataclass(frozen=True)
class EncryptionKey:
    """One AES-256 key; `key_id` is stored beside each ciphertext so rotation knows which key."""

    key_id: str
    material: bytes = dataclasses.field(repr=False)
    """Never in a repr: a key list printed by a debugger, a traceback's locals or an f-string in a
    log line would otherwise carry the key itself."""


def _decode_key(text: str) -> bytes:
    """Accept the forms people paste: base64 or hex of 32 bytes, or 32 raw characters."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    if len(text.encode()) == 32:
        return text.encode()
    raise ValueError(
        "each key must be 32 bytes, given as base64, 64 hex characters or 32 characters"
    )


def parse_budget_overrides(text: str) -> dict[int, int]:
    """`portal:calls,portal:calls` → {portal: calls} (HUBSPOT_PORTAL_BUDGET_OVERRIDES)."""
    overrides: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        portal, sep, limit = part.partition(":")
        if not sep or not portal.strip().isdigit() or not limit.strip().isdigit():
            raise ValueError(f"{part!r} is not portal:calls (e.g. 12345:50)")
        if not 1 <= int(limit) <= 110:
            raise ValueError(f"{part!r}: a portal's budget must be 1 to 110 calls per window")
        overrides[int(portal)] = int(limit)
    return overrides


CONSOLE_ROLE_NAMES = ("viewer", "operator")


def parse_console_roles(text: str) -> dict[int, dict[str, str]]:
    """CONSOLE_ROLES → {portal: {email (lower case): role}}; emails compare case-blind, as
    HubSpot's logins do."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(
            'is not JSON (e.g. {"12345": {"admin@example.com": "operator"}})'
        ) from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object {"<portal id>": {"<email>": "<role>"}}')
    table: dict[int, dict[str, str]] = {}
    for portal, users in data.items():
        if not str(portal).isdigit() or not isinstance(users, dict):
            raise ValueError(f"{portal!r}: each key is a portal id and each value an object")
        for email, role in users.items():
            if role not in CONSOLE_ROLE_NAMES:
                raise ValueError(f"{portal}: {email!r} has role {role!r}, not viewer or operator")
        table[int(portal)] = {str(e).lower(): str(r) for e, r in users.items()}
    return table


def _is_loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost" or (host or "").endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def lease_margin(lease_seconds: float) -> float:
    """The end of a lease no request may reach: a dispatcher must still hold the lease when a
    request's answer comes, to settle it (a round trip to Redis), and Redis' clock, which
    times leases, may be ahead of the pod's, which times requests."""
    return max(0.5, lease_seconds / 10)


class Settings(BaseSettings):
    """Every setting, named as its environment variable (upper case)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    # --- the seed's settings -------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL for history, tokens and local policies "
        "(postgresql://user:pass@host:5432/db; the seed's ecto:// form is accepted).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL holding queues and rate state (redis://host:6379/0, rediss://).",
    )
    redis_cluster: bool = Field(False, description="Treat REDIS_URL as a Redis Cluster seed node.")
    redis_durability: Literal["standard", "strict"] = Field(
        "standard",
        description="strict: answer BLOCK only once the write is on disk; the webhook and "
        "dispatcher refuse to start unless every Redis master has appendonly yes and appendfsync "
        "always (docs/durability.md).",
    )
    hubspot_client_id: str | None = Field(None, description="The HubSpot app's client id.")
    hubspot_client_secret: SecretStr | None = Field(
        None,
        description="The HubSpot app's client secret: signs requests and exchanges OAuth codes.",
    )
    hubspot_client_secret_previous: SecretStr | None = Field(
        None,
        description="The previous client secret, still accepted for signatures while rotating.",
    )
    encryption_key: SecretStr | None = Field(
        None, description="AES-256 key(s) for OAuth tokens at rest, comma-separated, newest first."
    )
    secret_key_base: SecretStr | None = Field(
        None, description="At least 32 characters; signs the OAuth `state` parameter."
    )

    # --- HubSpot ---------------------------------------------------------------------------------
    hubspot_api_base: str = Field(
        "https://api.hubapi.com", description="HubSpot API base URL (the simulator's URL in tests)."
    )
    hubspot_app_base: str = Field(
        "https://app.hubspot.com", description="HubSpot app base URL, for the OAuth authorize page."
    )
    hubspot_app_id: int | None = Field(None, description="The HubSpot app id (register-action).")
    hubspot_developer_api_key: SecretStr | None = Field(
        None, description="Developer API key used by `throttle hubspot register-action`."
    )
    hubspot_portal_budget: int = Field(
        100, ge=1, le=110, description="HubSpot API calls per portal per rolling window, all pods."
    )
    hubspot_budget_window_seconds: float = Field(
        10.0, gt=0, description="Length of the rolling window for HUBSPOT_PORTAL_BUDGET."
    )
    hubspot_portal_budget_overrides: str = Field(
        "", description="Per-portal budgets, comma-separated portal:calls (e.g. 12345:50,678:110)."
    )
    hubspot_portal_concurrency: int = Field(
        1,
        ge=1,
        le=10,
        description="HubSpot calls of one portal in flight at once, all pods "
        "(1: a 429 storm costs one 429 per window).",
    )
    hubspot_completion_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Deadline of one HubSpot completion request; with a margin "
        "(a tenth of the lease, at least 0.5 s) it must fit in DISPATCHER_LEASE_SECONDS, so a "
        "request always ends before the lease on what it sends does.",
    )
    hubspot_token_refresh_margin_seconds: float = Field(
        300.0,
        gt=0,
        description="Refresh an access token this long before it expires "
        "(at most half its lifetime).",
    )

    # --- the webhook service ---------------------------------------------------------------------
    public_url: str | None = Field(
        None, description="The URL HubSpot calls (https://throttle.example.com): signatures, OAuth."
    )
    throttle_api_token: SecretStr | None = Field(
        None, description="Bearer token for the config API (/api/config)."
    )
    host: str = Field("0.0.0.0", description="Address the HTTP server binds.")  # noqa: S104  # nosec B104
    port: int = Field(8080, ge=1, le=65535, description="Port of the webhook service.")
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port for /metrics, /healthz of dispatcher and operator."
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated CIDRs whose X-Forwarded-Proto/-Host are believed."
    )
    allow_signature_v1: bool = Field(
        False, description="Accept v1 signatures (they sign neither URL nor time)."
    )
    allow_signature_v2_until: datetime | None = Field(
        None,
        description="Accept v2 signatures until this time (ISO 8601, at most DEDUPE_SECONDS "
        "ahead at start): v2 signs no time, so only the dedupe window stops a replay.",
    )
    webhook_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body the webhook reads (413 beyond)."
    )
    webhook_body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a HubSpot request's body (408 beyond); a body "
        "still arriving is read before the request counts against WEBHOOK_MAX_INFLIGHT.",
    )
    require_installed_portal: bool = Field(
        True,
        description="Answer FAIL_CONTINUE to actions from portals that have not installed the app.",
    )
    webhook_access_log: Literal["all", "errors", "off"] = Field(
        "errors",
        description="Webhook access log (method, path without query, status, ms): all requests, "
        "errors (status >= 400 or slower than 1 s), or off (true = all, false = off).",
    )
    webhook_max_inflight: int = Field(
        64,
        ge=1,
        description="HubSpot requests a webhook pod serves at once (their wait for Redis "
        "included); more are shed with 429. Offered more than the pod's CPU serves, it bounds "
        "an admitted request's wait (64 x ~0.3 ms of CPU each).",
    )
    webhook_shed_lag_ms: float = Field(
        500.0,
        ge=0,
        description="Shed a share of HubSpot requests with 429 while the event loop lags more "
        "(0: never).",
    )
    webhook_early_shed: bool = Field(
        True,
        description="Refuse shed HubSpot requests (429) at the connection, before they are "
        "parsed: refusing then costs a small fraction of serving, so the pod keeps serving "
        "near its sustainable rate when offered more.",
    )
    webhook_listen_backlog: int = Field(
        1024,
        ge=1,
        description="Connections the kernel holds for the webhook until it accepts them (capped "
        "by net.core.somaxconn); beyond it a new connection, a probe's too, waits for the "
        "client's SYN retry (1 s, 3 s).",
    )
    config_api_max_failures: int = Field(
        10, ge=1, description="Wrong-token attempts per client and window before 429 (config API)."
    )
    config_api_failure_window_seconds: float = Field(
        60.0, gt=0, description="Sliding window for CONFIG_API_MAX_FAILURES."
    )
    config_backend: Literal["local", "cluster"] = Field(
        "local",
        description="Where the config API stores policies: local = PostgreSQL + reconcile, "
        "cluster = ThrottlePolicy resources.",
    )
    config_namespace: str = Field(
        "default", description="Namespace of the ThrottlePolicy resources the config API writes."
    )
    kubeconfig: str | None = Field(
        None, description="Kubeconfig for the config API's cluster mode (in-cluster if unset)."
    )

    # --- the console -----------------------------------------------------------------------------
    console_session_key: SecretStr | None = Field(
        None,
        description="At least 32 characters; signs the console's session cookies, CSRF tokens "
        "and console links. Unset: the console is off (its routes answer 404).",
    )
    console_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the console (/console/) on this port of its own instead of under "
        "PORT, so its load never shares a listener with the action endpoint.",
    )
    console_roles: str = Field(
        "",
        description='Console roles of users who sign in with HubSpot, as JSON {"<portal id>": '
        '{"<user email>": "operator" or "viewer"}}; unlisted users are viewers.',
    )
    console_session_ttl: float = Field(
        28_800.0,
        ge=60,
        le=30 * 86_400,
        description="Seconds a console session lasts (its cookie's Max-Age); 8 hours by default.",
    )

    # --- the operator ----------------------------------------------------------------------------
    operator_lease_name: str = Field(
        "throttle-operator", description="Name of the Lease that picks the one active operator."
    )
    operator_lease_namespace: str | None = Field(
        None,
        description="Namespace of the operator's Lease (default: the pod's, else default).",
    )
    operator_lease_seconds: float = Field(
        15.0, ge=2, description="How long a silent operator replica keeps the Lease."
    )
    operator_identity: str | None = Field(
        None, description="Name this replica holds the Lease under (default: host name and pid)."
    )
    operator_status_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between rounds refreshing every ThrottlePolicy's queue figures.",
    )
    operator_status_writes_per_second: float = Field(
        10.0,
        gt=0,
        description="Most status patches per second those rounds send (the stalest go first).",
    )
    operator_check_interval: float = Field(
        2.0, gt=0, description="Seconds between checks that Redis still holds every policy."
    )
    operator_retire_poll_interval: float = Field(
        5.0, gt=0, description="Seconds between checks of a deleted policy's remaining queue."
    )

    # --- operations ------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log format: json when stderr is not a terminal (auto), or forced."
    )
    history_retention_days: int = Field(
        30, ge=1, description="Execution history older than this many days is pruned."
    )
    uninstall_grace_days: float = Field(
        7.0,
        ge=0,
        description="An uninstalled portal's OAuth tokens are kept, disabled, this many days (a "
        "mistaken uninstall can be undone: `throttle portal restore`), then its data is purged: "
        "tokens, queued executions, history (`throttle portal purge` does it at once).",
    )
    history_buffer_events: int = Field(
        100_000,
        ge=100,
        description="History events buffered per Redis shard while PostgreSQL is behind; "
        "beyond it events are dropped and counted (throttle_history_events_dropped_total).",
    )

    # --- the engine ----------------------------------------------------------------------------
    dispatcher_lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a dispatcher holds released executions before another "
        "may take them back (renewed while it holds them; must exceed "
        "HUBSPOT_COMPLETION_TIMEOUT_SECONDS by a tenth of itself, at least 0.5 s).",
    )
    dispatcher_batch: int = Field(
        500, ge=1, le=10_000, description="Most executions one take call releases from a shard."
    )
    dispatcher_queue_quota: int = Field(
        100, ge=1, description="Most executions one queue releases per take (fairness)."
    )
    dispatcher_poll_seconds: float = Field(
        0.05, gt=0, description="How often a dispatcher looks at shards with nothing due."
    )
    dispatcher_min_hold_seconds: float = Field(
        1.0,
        ge=0,
        description="An execution is released no sooner than this after it arrived, so HubSpot "
        "has recorded the BLOCK answer before the completion comes.",
    )
    dedupe_seconds: float = Field(
        86_400.0,
        gt=0,
        description="How long a finished callbackId is still dropped as a duplicate.",
    )
    inline_rates_enabled: bool = Field(
        True,
        description="Honour the rates workflow builders set in the action's own fields "
        "(inline rates); false holds every execution by the portal's policies, as before "
        "inline rates existed. A portal's own switch: its default policy's spec.inline.enabled.",
    )
    inline_max_per_minute: int = Field(
        600,
        ge=1,
        le=60_000_000,
        description="The ceiling of inline rates (releases per minute) for portals whose default "
        "policy (and the global default) sets no spec.inline.maxRate; bad inline fields are "
        "held at this rate.",
    )

    @field_validator("allow_signature_v2_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _v2_within_dedupe_window(self) -> Settings:
        """Every v2 request accepted must fall inside one dedupe window, so that a replay of it
        is dropped as a duplicate: the span may not outlast the window from now."""
        until = self.allow_signature_v2_until
        if until is not None and until.timestamp() - time.time() > self.dedupe_seconds:
            raise ValueError(
                "ALLOW_SIGNATURE_V2_UNTIL must be at most DEDUPE_SECONDS "
                f"({self.dedupe_seconds:g} s) from now: a v2 signature carries no time, so only "
                "the dedupe window stops a replay"
            )
        return self

    @model_validator(mode="after")
    def _completion_call_within_lease(self) -> Settings:
        """A completion request still out when its lease runs out could be sent a second time
        by the dispatcher that takes the executions next: the request's deadline, and the
        margin for settling its answer, must fit in one lease."""
        lease = self.dispatcher_lease_seconds
        timeout = self.hubspot_completion_timeout_seconds
        margin = lease_margin(lease)
        if timeout + margin > lease:
            raise ValueError(
                f"HUBSPOT_COMPLETION_TIMEOUT_SECONDS ({timeout:g} s) must end before "
                f"DISPATCHER_LEASE_SECONDS ({lease:g} s) with a margin of {margin:g} s: "
                "lower the first or raise the second, or a completion may still be out when "
                "another dispatcher takes its executions back and sends them again"
            )
        return self

    @field_validator("webhook_access_log", mode="before")
    @classmethod
    def _access_log(cls, value: Any) -> Any:
        aliases = {"true": "all", "1": "all", "yes": "all", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "all" if value else "off"
        return aliases.get(str(value).strip().lower(), str(value).strip().lower())

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("ecto://"):
            value = "postgresql://" + value.removeprefix("ecto://")
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ValueError("must look like postgresql://user:password@host:5432/database")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host (redis://host:6379/0)")
        return value

    @field_validator("hubspot_api_base", "hubspot_app_base")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be the https:// URL HubSpot calls")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                "must be https:// (HubSpot only calls HTTPS); http:// is allowed only for localhost"
            )
        return value.rstrip("/")

    @field_validator("secret_key_base")
    @classmethod
    def _secret_key_base(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = [p for p in value.get_secret_value().split(",") if p.strip()]
            if not parts:
                raise ValueError("is empty")
            for part in parts:
                _decode_key(part)
        return value

    @field_validator("console_session_key")
    @classmethod
    def _console_session_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("console_roles")
    @classmethod
    def _console_roles(cls, value: str) -> str:
        parse_console_roles(value)
        return value

    @field_validator("hubspot_portal_budget_overrides")
    @classmethod
    def _budget_overrides(cls, value: str) -> str:
        parse_budget_overrides(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP network (e.g. 10.0.0.0/8)") from None
        return value

    # --- derived values --------------------------------------------------------------------------
    @property
    def encryption_keys(self) -> list[EncryptionKey]:
        """The keys, newest first; the first encrypts, all decrypt."""
        if self.encryption_key is None:
            return []
        keys = []
        for part in self.encryption_key.get_secret_value().split(","):
            if part.strip():
                material = _decode_key(part)
                keys.append(EncryptionKey(hashlib.sha256(material).hexdigest()[:8], material))
        return keys

    @property
    def hubspot_budget_overrides(self) -> dict[int, int]:
        return parse_budget_overrides(self.hubspot_portal_budget_overrides)

    @property
    def console_role_table(self) -> dict[int, dict[str, str]]:
        return parse_console_roles(self.console_roles)

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(p.strip(), strict=False)
            for p in self.trusted_proxies.split(",")
            if p.strip()
        ]

    @property
    def client_secrets(self) -> list[str]:
        """Secrets a signature may be made with: the current one, then the previous one."""
        return [
            s.get_secret_value()
            for s in (self.hubspot_client_secret, self.hubspot_client_secret_previous)
            if s is not None
        ]

    def secret_values(self) -> list[str]:
        """Every secret's value, so the log filter can mask them wherever they might appear."""
        values = [
            s.get_secret_value()
            for s in (
                self.hubspot_client_secret,
                self.hubspot_client_secret_previous,
                self.encryption_key,
                self.secret_key_base,
                self.throttle_api_token,
                self.hubspot_developer_api_key,
                self.console_session_key,
            )
            if s is not None
        ]
        for url in (self.database_url, self.redis_url):
            password = urlsplit(url).password if url else None
            if password:
                values.append(password)
        return [v for v in values if len(v) >= 4]

    def require(self, *names: str) -> Settings:
        """Stop with a clear message if any of these settings (field names) is unset."""
        for name in names:
            if getattr(self, name) in (None, ""):
                field = type(self).model_fields[name]
                raise SettingsError(f"{name.upper()} is not set: {field.description}")
        return self


def env_name(loc: tuple[Any, ...]) -> str:
    return str(loc[0]).upper() if loc else "settings"


def load_settings(**overrides: Any) -> Settings:
    """Read settings; turn pydantic's errors into one line per variable without its value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names them
            raise SettingsError(message) from None
        raise SettingsError(f"{env_name(first['loc'])} {message}") from None


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting, for README and `throttle settings`."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            ""
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        rows.append((name.upper(), shown, field.description or ""))
    return rows
