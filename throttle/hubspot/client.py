"""The one place that talks to HubSpot's API (or the simulator standing in for it).

Every call returns a typed result instead of raising on HTTP status, so callers decide with a
`match`: completion callers need to tell "wait for the window" from "try again" from "refresh the
token" from "this callback is dead", and token callers "this portal's refresh token is dead" (an
uninstall) from "the app's own configuration is refused" (never an uninstall; `token_result`).
Tokens are never put in a log line, an exception message or a `repr`; URLs that carry a token
(introspection) are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import quote

import aiohttp

from throttle.metrics import Metrics
from throttle.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 100
RATE_LIMIT_WINDOW_S = 10.0


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Success:
    """2xx. `remaining` is X-HubSpot-RateLimit-Remaining when HubSpot sent it."""

    remaining: int | None = None


@dataclass(frozen=True)
class RateLimited:
    """429: the portal must not call again for `wait_seconds` (the window rolling, at least)."""

    wait_seconds: float
    policy_name: str = ""


@dataclass(frozen=True)
class Retryable:
    """5xx, a timeout or a broken connection: nothing is known to have happened; try again."""

    reason: str
    status: int | None = None


@dataclass(frozen=True)
class Unauthorized:
    """401 (or 403 for scopes): the access token is expired, revoked or lacks a scope."""

    reason: str
    status: int = 401


@dataclass(frozen=True)
class Rejected:
    """Another 4xx: the request itself is wrong and repeating it will not help."""

    status: int
    reason: str
    category: str = ""
    callback_ids: tuple[str, ...] = ()
    already_completed: int = 0
    """How many of HubSpot's errors say a callback is already completed: an earlier request
    went through (its answer was lost or late). The execution is done, not failed."""
    other_errors: int = 0
    """How many errors say anything else (expired, unknown, invalid)."""
    already_completed_ids: tuple[str, ...] = ()
    """The already-completed callbacks HubSpot named, if it named them."""

    @property
    def only_already_completed(self) -> bool:
        """Every error says "already completed": nothing else is wrong with the request."""
        return self.already_completed > 0 and self.other_errors == 0


CallResult = Success | RateLimited | Retryable | Unauthorized | Rejected


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint returned; tokens are kept out of repr."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    hub_id: int | None = None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenRefused:
    """The token endpoint refused this grant itself, definitively: this install's code, or this
    portal's refresh token (400 `BAD_REFRESH_TOKEN`, or 401: the app was uninstalled)."""

    status: int
    error: str
    message: str = ""


ConfigFaultKind = Literal[
    "client_credentials", "forbidden", "bad_request", "server_error", "unexpected_answer"
]
CONFIG_FAULT_KINDS: tuple[ConfigFaultKind, ...] = get_args(ConfigFaultKind)


@dataclass(frozen=True)
class ConfigFault:
    """The token endpoint refused the app, not a portal (contract §7): the client id or secret
    is not accepted, a 403, a 5xx, an answer that is not HubSpot's (a proxy's page, a wrong
    HUBSPOT_API_BASE). Never a reason to uninstall: keep the tokens, hold the executions, and
    say what is wrong. `error` is HubSpot's error code when it sent one (never its message or
    anything else from the body, which could echo what was sent)."""

    kind: ConfigFaultKind
    status: int
    error: str = ""

    def describe(self) -> str:
        """One line for logs, /readyz, `throttle doctor`: what HubSpot answered, what to check."""
        answer = f"HTTP {self.status}{f' {self.error}' if self.error else ''}"
        match self.kind:
            case "client_credentials":
                return (
                    f"HubSpot's token endpoint refuses the app's client id or secret ({answer}): "
                    "check HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET against the app in HubSpot"
                )
            case "forbidden":
                return (
                    f"HubSpot's token endpoint answers {answer}: a proxy or firewall between "
                    "Throttle and HubSpot, or the app's access"
                )
            case "bad_request":
                return (
                    f"HubSpot's token endpoint refuses the app's requests ({answer}), not one "
                    "portal's token: check the app's settings"
                )
            case "server_error":
                return f"HubSpot's token endpoint fails ({answer})"
        return (
            f"the token endpoint's answer is not HubSpot's ({answer}): check HUBSPOT_API_BASE "
            "and any proxy in between"
        )


TokenResult = TokenGrant | TokenRefused | ConfigFault | Retryable | RateLimited


@dataclass(frozen=True)
class TokenInfo:
    """Introspection of an access token."""

    hub_id: int
    app_id: int | None
    scopes: tuple[str, ...]
    expires_in: int
    hub_domain: str = ""
    user: str = ""
    """The email of the user who authorized (the console's sign-in learns who signed in)."""


IntrospectResult = TokenInfo | Unauthorized | Retryable | RateLimited | Rejected


@dataclass(frozen=True)
class CallbackCompletion:
    """One `inputs[]` entry of the batch completion call."""

    callback_id: str
    output_fields: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"callbackId": self.callback_id, "outputFields": dict(self.output_fields)}


@dataclass(frozen=True)
class DeveloperAuth:
    """How action-definition calls authenticate: a developer API key or a bearer token."""

    api_key: str | None = field(default=None, repr=False)
    bearer: str | None = field(default=None, repr=False)


class HubSpotError(Exception):
    """A definition call failed; raised only by the admin calls used from the CLI."""


# --- the client ---------------------------------------------------------------------------------
class HubSpotClient:
    """HubSpot API over one shared aiohttp session (connection reuse, per-call timeouts)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_base: str,
        client_id: str = "",
        client_secret: str = "",  # empty means "not configured"  # nosec B107
        timeout_s: float = 10.0,
        on_response: Callable[[str, int | None], None] | None = None,
        completion_timeout_s: float | None = None,
    ) -> None:
        """`on_response(operation, status or None)` is called after every request (for metrics).
        `completion_timeout_s` (default `timeout_s`) is the deadline of a completion request:
        the dispatcher's lease on what it sends must outlast it."""
        self._session = session
        self._base = api_base.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._completion_timeout = aiohttp.ClientTimeout(
            total=timeout_s if completion_timeout_s is None else completion_timeout_s
        )
        self._on_response = on_response

    @property
    def timeout_s(self) -> float:
        """The longest one completion request may take: a caller's lease on what it sends must
        outlast it."""
        return float(self._completion_timeout.total or 0.0)

    @classmethod
    def from_settings(
        cls, session: aiohttp.ClientSession, settings: Settings, metrics: Metrics | None = None
    ) -> HubSpotClient:
        secret = settings.hubspot_client_secret
        observe = None
        if metrics is not None:

            def observe(operation: str, status: int | None) -> None:
                metrics.hubspot_requests.labels(operation, str(status or 0)).inc()

        return cls(
            session,
            settings.hubspot_api_base,
            settings.hubspot_client_id or "",
            secret.get_secret_value() if secret is not None else "",
            on_response=observe,
            completion_timeout_s=settings.hubspot_completion_timeout_seconds,
        )

    # completion --------------------------------------------------------------------------------
    async def complete_batch(
        self, access_token: str, inputs: Sequence[CallbackCompletion]
    ) -> CallResult:
        """One batch completion request (≤ 100 inputs); 204 means every callback is complete."""
        if not 0 < len(inputs) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} callbacks, not {len(inputs)}")
        body = {"inputs": [entry.as_json() for entry in inputs]}
        return await self._call(
            "POST",
            "/automation/v4/actions/callbacks/complete",
            "complete_batch",
            bearer=access_token,
            json_body=body,
        )

    async def complete_one(self, access_token: str, entry: CallbackCompletion) -> CallResult:
        path = f"/automation/v4/actions/callbacks/{quote(entry.callback_id, safe='')}/complete"
        return await self._call(
            "POST",
            path,
            "complete_one",
            bearer=access_token,
            json_body={"outputFields": dict(entry.output_fields)},
        )

    # OAuth ------------------------------------------------------------------------------------
    async def exchange_code(self, code: str, redirect_uri: str) -> TokenResult:
        return await self._token(
            {"grant_type": "authorization_code", "redirect_uri": redirect_uri, "code": code}
        )

    async def refresh_token(self, refresh_token: str) -> TokenResult:
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def introspect(self, access_token: str) -> IntrospectResult:
        path = f"/oauth/v1/access-tokens/{quote(access_token, safe='')}"
        outcome = await self._request("GET", path, "introspect")
        if not isinstance(outcome, _Response):
            return outcome
        if outcome.status == 200:
            data = outcome.json()
            return TokenInfo(
                hub_id=int(data["hub_id"]),
                app_id=int(data["app_id"]) if data.get("app_id") is not None else None,
                scopes=tuple(data.get("scopes") or ()),
                expires_in=int(data.get("expires_in") or 0),
                hub_domain=str(data.get("hub_domain") or ""),
                user=str(data.get("user") or ""),
            )
        if outcome.status in (401, 404):
            return Unauthorized(f"introspection answered {outcome.status}", outcome.status)
        result = _classify(outcome)
        return Retryable(f"HTTP {outcome.status}") if isinstance(result, Success) else result

    async def _token(self, form: dict[str, str]) -> TokenResult:
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        outcome = await self._request("POST", "/oauth/v1/token", "token", form=form)
        if not isinstance(outcome, _Response):
            return outcome
        return token_result(
            outcome.status, outcome.body, form["grant_type"], outcome.headers, self._client_secret
        )

    # action definitions ------------------------------------------------------------------------
    async def list_definitions(self, app_id: int, auth: DeveloperAuth) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            data = await self._admin("GET", f"/automation/v4/actions/{app_id}", auth, params=params)
            results.extend(data.get("results", []))
            after = ((data.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return results

    async def create_definition(
        self, app_id: int, definition: Mapping[str, Any], auth: DeveloperAuth
    ) -> dict[str, Any]:
        return await self._admin(
            "POST", f"/automation/v4/actions/{app_id}", auth, body=dict(definition)
        )

    async def update_definition(
        self, app_id: int, definition_id: str, definition: Mapping[str, Any], auth: DeveloperAuth
    ) -> dict[str, Any]:
        path = f"/automation/v4/actions/{app_id}/{quote(definition_id, safe='')}"
        return await self._admin("PATCH", path, auth, body=dict(definition))

    async def archive_definition(
        self, app_id: int, definition_id: str, auth: DeveloperAuth
    ) -> None:
        path = f"/automation/v4/actions/{app_id}/{quote(definition_id, safe='')}"
        await self._admin("DELETE", path, auth)

    async def _admin(
        self,
        method: str,
        path: str,
        auth: DeveloperAuth,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        params = dict(params or {})
        if auth.api_key:
            params["hapikey"] = auth.api_key
        outcome = await self._request(
            method, path, "definitions", bearer=auth.bearer, json_body=body, params=params
        )
        if not isinstance(outcome, _Response):
            raise HubSpotError(f"{method} {path}: {_describe(outcome)}")
        if outcome.status >= 300:
            data = outcome.json_or_empty()
            raise HubSpotError(
                f"{method} {path} answered {outcome.status}: {str(data.get('message', ''))[:300]}"
            )
        return outcome.json() if outcome.body else {}

    # transport --------------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        operation: str,
        bearer: str | None = None,
        json_body: Any = None,
    ) -> CallResult:
        """A completion request, under the completion deadline."""
        outcome = await self._request(
            method,
            path,
            operation,
            bearer=bearer,
            json_body=json_body,
            deadline=self._completion_timeout,
        )
        if not isinstance(outcome, _Response):
            return outcome
        return _classify(outcome)

    async def _request(
        self,
        method: str,
        path: str,
        operation: str,
        bearer: str | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        deadline: aiohttp.ClientTimeout | None = None,
    ) -> _Response | Retryable:
        headers = {"Accept": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                self._base + path,
                headers=headers,
                json=json_body,
                data=form,
                params=params,
                timeout=deadline or self._timeout,
            ) as response:
                body = await response.read()
                outcome = _Response(response.status, dict(response.headers), body)
        except TimeoutError:
            log.warning("hubspot %s timed out", operation)
            self._observe(operation, None)
            return Retryable("timeout")
        except aiohttp.ClientError as exc:
            # The exception text may carry the URL (introspection URLs hold a token): log the type.
            log.warning("hubspot %s failed: %s", operation, type(exc).__name__)
            self._observe(operation, None)
            return Retryable(f"connection error: {type(exc).__name__}")
        self._observe(operation, outcome.status)
        log.debug(
            "hubspot %s answered %s in %.0f ms",
            operation,
            outcome.status,
            (time.monotonic() - started) * 1000,
        )
        return outcome

    def _observe(self, operation: str, status: int | None) -> None:
        if self._on_response is not None:
            self._on_response(operation, status)


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object; None when it is anything else (empty, HTML, a list)."""
        try:
            data = json.loads(self.body) if self.body else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def json_or_empty(self) -> dict[str, Any]:
        return self.json_object() or {}

    def header_int(self, name: str) -> int | None:
        value = self.headers.get(name)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None


_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _error_codes(data: Mapping[str, Any], hide: str = "") -> list[str]:
    """HubSpot's error codes in an answer (`status`, OAuth's `error`, `category`, `errorType`),
    as sent; the generic `status: "error"`, anything that does not look like a code, and anything
    holding `hide` (the client secret, in any case) dropped."""
    codes = []
    secret = hide.upper().replace("-", "_")
    for name in ("status", "error", "category", "errorType"):
        value = data.get(name)
        if not isinstance(value, str) or not _ERROR_CODE.fullmatch(value):
            continue
        if value.lower() == "error" or (secret and secret in value.upper()):
            continue
        codes.append(value)
    return codes


def token_result(
    status: int,
    body: bytes,
    grant_type: str,
    headers: Mapping[str, str] | None = None,
    hide: str = "",
) -> TokenResult:
    """What an answer of the token endpoint means (contract §7), as a typed result.

    Only a definitive, grant-specific refusal is `TokenRefused`: for a refresh, 400 naming
    `BAD_REFRESH_TOKEN` or a 401 (HubSpot's JSON); for a code exchange, a 400/401 about the code.
    `hide` (the client secret) never makes it into an error code.
    Everything about the app itself — its client id or secret refused (any status), a 403,
    another 400, a 5xx, a status HubSpot does not use here, a body that is not HubSpot's JSON
    (a proxy's page), a 200 without tokens — is a `ConfigFault`: never an uninstall. 429 and
    408/425 keep their usual meaning (wait, retry)."""
    response = _Response(status, dict(headers or {}), body)
    data = response.json_object()
    if status == 200:
        if data is None:
            return ConfigFault("unexpected_answer", status, "NOT_JSON")
        try:
            scopes = data.get("scopes") or data.get("scope") or ()
            if isinstance(scopes, str):
                scopes = scopes.split()
            return TokenGrant(
                access_token=str(data["access_token"]),
                refresh_token=str(data["refresh_token"]),
                expires_in=int(data["expires_in"]),
                hub_id=int(data["hub_id"]) if data.get("hub_id") is not None else None,
                scopes=tuple(scopes),
            )
        except (KeyError, TypeError, ValueError):
            return ConfigFault("unexpected_answer", status, "NO_TOKENS_IN_ANSWER")
    if status == 429:
        return RateLimited(_wait_after_429(response), str((data or {}).get("policyName") or ""))
    if status in (408, 425):
        return Retryable(f"HTTP {status}", status)
    if status >= 500:
        codes = _error_codes(data or {}, hide)
        return ConfigFault("server_error", status, codes[0] if codes else "")
    if data is None:
        return ConfigFault("unexpected_answer", status, "NOT_JSON")
    codes = _error_codes(data, hide)
    error = codes[0] if codes else ""
    if any("CLIENT" in code.upper() for code in codes):  # BAD_CLIENT_SECRET, invalid_client...
        return ConfigFault("client_credentials", status, error)
    message = str(data.get("message") or "")[:200]
    if grant_type == "refresh_token":
        if status == 401 or (status == 400 and "BAD_REFRESH_TOKEN" in {c.upper() for c in codes}):
            return TokenRefused(status, error or "UNAUTHORIZED", message)
    elif status in (400, 401):
        return TokenRefused(status, error or "BAD_REQUEST", message)
    if status == 400:
        return ConfigFault("bad_request", status, error)
    if status == 403:
        return ConfigFault("forbidden", status, error)
    return ConfigFault("unexpected_answer", status, error)


def _classify(outcome: _Response) -> CallResult:
    status = outcome.status
    if 200 <= status < 300:
        return Success(outcome.header_int("X-HubSpot-RateLimit-Remaining"))
    data = outcome.json_or_empty()
    if status == 429:
        return RateLimited(_wait_after_429(outcome), str(data.get("policyName") or ""))
    if status == 401:
        return Unauthorized(str(data.get("category") or "UNAUTHORIZED"), 401)
    if status == 403 and data.get("category") in ("MISSING_SCOPES", "INVALID_AUTHENTICATION"):
        return Unauthorized(str(data["category"]), 403)
    if status >= 500 or status in (408, 425):
        return Retryable(f"HTTP {status}", status)
    already, other, already_ids = _already_completed_in(data)
    return Rejected(
        status,
        _rejection_reason(status, data),
        str(data.get("category") or ""),
        _callback_ids_in(data),
        already,
        other,
        already_ids,
    )


def _rejection_reason(status: int, data: Mapping[str, Any]) -> str:
    """HubSpot's message plus the first few `errors[].message` (they say what was wrong)."""
    parts = [str(data.get("message") or f"HTTP {status}")]
    details = [
        str(e["message"])
        for e in data.get("errors") or []
        if isinstance(e, dict) and e.get("message")
    ]
    if details:
        parts.append("; ".join(details[:3]))
    return ": ".join(parts)[:300]


def _wait_after_429(outcome: _Response) -> float:
    """The whole interval (the contract's Decision), or longer if Retry-After asks for longer."""
    interval_ms = outcome.header_int("X-HubSpot-RateLimit-Interval-Milliseconds")
    window = interval_ms / 1000 if interval_ms else RATE_LIMIT_WINDOW_S
    retry_after = outcome.header_int("Retry-After") or 0
    if outcome.json_or_empty().get("policyName") == "DAILY":
        return max(3600.0, retry_after)
    return max(window, float(retry_after))


def _callback_ids_in(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Callback ids HubSpot named in `errors[].context.callbackId` (if it names any)."""
    found: list[str] = []
    for error in data.get("errors") or []:
        if isinstance(error, dict):
            found.extend(_named_ids(error))
    return tuple(found)


def _named_ids(error: Mapping[str, Any]) -> list[str]:
    context = error.get("context") or {}
    if not isinstance(context, dict):
        return []
    ids = context.get("callbackId") or context.get("callbackIds") or []
    if isinstance(ids, str):
        ids = [ids]
    return [str(i) for i in ids]


_ALREADY_COMPLETED = re.compile(r"already\s+(been\s+)?(completed|complete)\b", re.IGNORECASE)
_ALREADY_COMPLETED_CODES = {"ALREADY_COMPLETED", "CALLBACK_ALREADY_COMPLETED", "DUPLICATE"}


def _says_already_completed(error: Mapping[str, Any]) -> bool:
    codes = {str(error.get(k) or "").upper() for k in ("subCategory", "code", "errorType")}
    return bool(codes & _ALREADY_COMPLETED_CODES) or bool(
        _ALREADY_COMPLETED.search(str(error.get("message") or ""))
    )


def _already_completed_in(data: Mapping[str, Any]) -> tuple[int, int, tuple[str, ...]]:
    """(errors saying "already completed", other errors, the already-completed ids named).

    HubSpot does not document what completing a completed callback answers (contract §5): a
    batch is refused as a whole (400) with one `errors[]` entry per offender that may or may
    not name the callback; the single endpoint answers 400 with only a message. Both are read
    here: the entry's subCategory or code, else its message."""
    errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
    if not errors:
        return (1, 0, ()) if _says_already_completed(data) else (0, 0, ())
    already = [e for e in errors if _says_already_completed(e)]
    ids = tuple(i for e in already for i in _named_ids(e))
    return len(already), len(errors) - len(already), ids


def _describe(result: Retryable | RateLimited | Unauthorized | Rejected) -> str:
    match result:
        case Retryable(reason=reason):
            return reason
        case RateLimited(wait_seconds=wait):
            return f"rate limited for {wait:.0f} s"
        case Unauthorized(reason=reason):
            return f"unauthorized ({reason})"
        case Rejected(status=status, reason=reason):
            return f"HTTP {status}: {reason}"
    return "failed"
