"""What the simulated HubSpot knows: apps, portals, tokens, callbacks, completions, rate windows.

Pure bookkeeping with the clock passed in; the HTTP layer (`server.py`) and the traffic driver
(`driver.py`) both work on one `Simulator`. Where HubSpot's behaviour is undocumented it follows
the harshest reasonable reading of shared/hubspot-contract.md (each such choice says "Harsh:").

What completing a callback answers (the contract leaves it open):
- batch (`POST .../callbacks/complete`): all or nothing. One bad input (unknown, another
  portal's, expired, already completed, not blocked, a non-final `hs_execution_state`, a callback
  twice) rejects the whole batch with 400 `VALIDATION_ERROR` and applies nothing; `errors[]`
  does not name the offenders unless `name_offenders_in_errors`. More than 100 inputs: 400.
- single (`POST .../callbacks/{id}/complete`): unknown or another portal's → 404
  `OBJECT_NOT_FOUND`; expired or already completed → 400 `VALIDATION_ERROR`.
- every attempt on an already-completed callback counts as a duplicate, on an expired one as
  late, on an unknown one as unknown (per portal, in the report). Separately, every completion
  request that names an already-completed callback counts as "sent twice" when it arrives,
  however it is answered (a 401, 429 or 5xx too): the invariant is that Throttle never sends a
  completion twice, not merely that HubSpot never applies one twice.
- 204 on success. 401 for a missing, unknown, revoked or expired bearer token; 403
  `MISSING_SCOPES` without `automation`. Rate limit: 110 calls per rolling 10 s per portal
  (calls answered 429 count too), 429 with HubSpot's body and `X-HubSpot-RateLimit-*` headers.
- OAuth: codes are single use and bound to their `redirect_uri`; refresh tokens rotate on every
  refresh (the old one dies); token responses carry no `hub_id`; a revoked refresh token answers
  400 `BAD_REFRESH_TOKEN`; access tokens stay valid until they expire. A client id or secret the
  app does not have answers 400 `BAD_CLIENT_ID` / `BAD_CLIENT_SECRET` (the same status as a dead
  refresh token: only the body tells the app's fault from the portal's).
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FINAL_STATES = ("SUCCESS", "FAIL_CONTINUE")
DEFAULT_EXPIRATION_S = 7 * 24 * 3600.0


@dataclass
class Faults:
    """Injected trouble; change at run time with `Simulator.set_faults` or POST /_sim/faults."""

    error_ratio: float = 0.0
    """Share of authenticated API calls answered with `error_status` (nothing applied)."""
    error_status: int = 503
    error_after_apply_ratio: float = 0.0
    """Share of completion calls that apply, then answer 5xx anyway (the answer was "lost")."""
    latency_ms: float = 0.0
    """Added to every API answer (not to /_sim admin calls), before the call is handled."""
    completion_answer_delay_ms: float = 0.0
    """Completion calls are handled (applied) at once, then answered this much later: HubSpot
    slow to answer, not slow to apply. A client that gives up first does not know it worked."""
    token_answer_delay_ms: float = 0.0
    """Token requests (code exchange, refresh) are handled at once, then answered this much
    later: a refresh token rotated by a call whose answer is still on its way."""
    storm_until: float = 0.0
    """Until this epoch time every completion call of `storm_portals` answers 429."""
    storm_portals: list[int] | None = None
    """Portals the 429 storm hits; None means every portal."""
    reject_client_secret_until: float = 0.0
    """Until this epoch time the token endpoint refuses the app's client secret as HubSpot
    refuses one it does not hold (a secret rotated in HubSpot before the deployment, a stray
    newline in a Secret): 400 `BAD_CLIENT_SECRET`, for refreshes and code exchanges alike.
    Harsh: the status is the one a revoked refresh token gets, so only the body tells them
    apart. Nothing is consumed (codes and refresh tokens stay valid)."""

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (a bad one changes nothing)."""
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name in ("storm_seconds", "reject_client_secret_seconds"):
                if float(value) < 0:
                    raise ValueError(f"{name} must not be negative")
                parsed[name.replace("_seconds", "_until")] = time.time() + float(value)
            elif name == "storm_portals":
                parsed[name] = None if value is None else [int(p) for p in value]
            elif name == "error_status":
                if not 500 <= int(value) <= 599:
                    raise ValueError("error_status must be a 5xx status")
                parsed[name] = int(value)
            elif name in ("error_ratio", "error_after_apply_ratio"):
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
                parsed[name] = float(value)
            elif name in (
                "latency_ms",
                "storm_until",
                "completion_answer_delay_ms",
                "token_answer_delay_ms",
                "reject_client_secret_until",
            ):
                if float(value) < 0:
                    raise ValueError(f"{name} must not be negative")
                parsed[name] = float(value)
            else:
                raise ValueError(f"unknown fault {name!r}")
        for name, value in parsed.items():
            setattr(self, name, value)


DEFAULT_USER = "sim-user@example.com"


@dataclass
class SimulatorConfig:
    """How the simulated HubSpot app and account behave (defaults follow the contract)."""

    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - the simulator's own test app
    app_id: int = 424242
    developer_api_key: str = "sim-developer-key"
    required_scopes: tuple[str, ...] = ("automation", "oauth")
    access_token_ttl_s: int = 1800
    auth_code_ttl_s: float = 600.0
    rate_limit: int = 110
    rate_window_s: float = 10.0
    max_batch: int = 100
    default_portal_id: int = 1001
    rotate_refresh_tokens: bool = True
    """Harsh: every refresh returns a new refresh token and invalidates the old one, so two pods
    refreshing at once leave one holding a dead token."""
    token_response_includes_hub_id: bool = False
    """Harsh: older token responses carry no hub_id; the client must introspect to learn it."""
    name_offenders_in_errors: bool = False
    """Harsh: a rejected batch does not say which callbacks were at fault; clients must split."""
    max_expiration_s: float | None = None
    """Cap on a BLOCK's hs_expiration_duration (tests use seconds instead of days)."""
    user_emails: dict[int, str] = field(default_factory=dict)
    """The user who authorizes for each portal (introspection's `user`); others are
    DEFAULT_USER. The authorize page's `user_email` parameter names one for that sign-in."""
    seed: int | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False)


CallbackState = Literal["pending", "blocked", "answered", "failed"]


@dataclass
class Callback:
    """One workflow execution the driver sent to the action URL."""

    callback_id: str
    portal_id: int
    action_definition_id: int
    created_at: float
    state: CallbackState = "pending"
    expires_at: float | None = None
    blocked_at: float | None = None
    completed_at: float | None = None
    deliveries: int = 0
    answer: str | None = None
    output_fields: dict[str, Any] | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.completed_at is None and now > self.expires_at


@dataclass(frozen=True)
class Completion:
    """A callback completed: when, by which portal's token, through which endpoint."""

    callback_id: str
    portal_id: int
    at: float
    via: Literal["batch", "single"]
    output_fields: dict[str, Any]
    request: int = 0
    """The completion request that applied it (numbered from 1 since the last reset): what
    batch sizes HubSpot saw, for the benchmarks' callbacks per request."""


@dataclass
class AccessToken:
    portal_id: int
    expires_at: float
    scopes: tuple[str, ...]
    revoked: bool = False
    user: str = ""


@dataclass
class RefreshToken:
    portal_id: int
    scopes: tuple[str, ...]
    revoked: bool = False
    user: str = ""


@dataclass
class AuthCode:
    portal_id: int
    redirect_uri: str
    scopes: tuple[str, ...]
    expires_at: float
    used: bool = False
    user: str = ""


@dataclass
class PortalStats:
    """Everything counted per portal for the report."""

    requests: int = 0
    completion_requests: int = 0
    rate_limited: int = 0
    rate_limited_at: list[float] = field(default_factory=list)
    server_errors: int = 0
    unauthorized: int = 0
    rejected: int = 0
    duplicates: int = 0
    """Completion attempts naming a callback that was already completed (or answered)."""
    sent_twice: int = 0
    """Completion requests naming a callback already completed (or answered) when the request
    arrived, counted once per callback named, whatever the answer (401, 429 and 5xx too)."""
    late: int = 0
    """Completion attempts naming an expired callback."""
    unknown: int = 0
    """Completion attempts naming a callback this portal never had."""
    refreshes: int = 0
    refresh_failures: int = 0
    client_refusals: int = 0
    """Refreshes of this portal's token refused for the app's client secret (not the portal)."""
    max_in_window: int = 0


class ApiError(Exception):
    """An HTTP error answer: status, HubSpot-shaped body, extra headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


def error_body(category: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "category": category,
        "message": message,
        "correlationId": str(uuid.uuid4()),
        **extra,
    }


def oauth_error(status: str, message: str) -> dict[str, Any]:
    return {"status": status, "message": message, "correlationId": str(uuid.uuid4())}


class Simulator:
    """The simulated HubSpot: one app, any number of portals."""

    def __init__(self, config: SimulatorConfig | None = None, faults: Faults | None = None):
        self.config = config or SimulatorConfig()
        self.faults = faults or Faults()
        self.random = random.Random(self.config.seed)
        self.reset()

    def now(self) -> float:
        return self.config.clock()

    def reset(self) -> None:
        self.codes: dict[str, AuthCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.callbacks: dict[str, Callback] = {}
        self.completions: list[Completion] = []
        self.stats: dict[int, PortalStats] = {}
        self.windows: dict[int, deque[float]] = {}
        self.definitions: dict[int, dict[str, dict[str, Any]]] = {}
        self.archived: set[str] = set()
        self._definition_seq = 0
        self._request_seq = 0

    def portal(self, portal_id: int) -> PortalStats:
        return self.stats.setdefault(portal_id, PortalStats())

    def set_faults(self, **changes: Any) -> Faults:
        """Change faults; `storm_seconds=n` starts a 429 storm of n seconds now (simulator time),
        `reject_client_secret_seconds=n` refuses the app's client secret for n seconds from now,
        `client_secret=s` rotates the app's client secret in HubSpot's developer portal: requests
        are signed with `s` from now on and the token endpoint accepts only `s` (a rotation the
        deployment has not learned yet)."""
        rotated = changes.pop("client_secret", None)
        if rotated is not None and (not isinstance(rotated, str) or not rotated.strip()):
            raise ValueError("client_secret must be a non-empty string")
        for name in ("storm_seconds", "reject_client_secret_seconds"):
            if name in changes:
                seconds = float(changes.pop(name))
                if seconds < 0:
                    raise ValueError(f"{name} must not be negative")
                changes[name.replace("_seconds", "_until")] = self.now() + seconds
        self.faults.update(changes)
        if rotated is not None:
            self.config.client_secret = rotated
        return self.faults

    # --- OAuth -------------------------------------------------------------------------------
    def authorize(
        self,
        client_id: str,
        redirect_uri: str,
        scope: str,
        portal_id: int | None = None,
        user_email: str | None = None,
    ) -> str:
        """Approve an install (or a sign-in): a fresh authorization code for `redirect_uri`."""
        if client_id != self.config.client_id:
            raise ApiError(400, oauth_error("BAD_CLIENT_ID", "unknown client_id"))
        if not redirect_uri:
            raise ApiError(400, oauth_error("BAD_REDIRECT_URI", "redirect_uri is required"))
        scopes = tuple(s for s in scope.replace("+", " ").split() if s)
        missing = [s for s in self.config.required_scopes if s not in scopes]
        if missing:
            # Harsh: an install that does not ask for every scope the app requires is refused.
            raise ApiError(
                400, oauth_error("BAD_SCOPES", f"missing required scopes: {' '.join(missing)}")
            )
        code = str(uuid.uuid4())
        portal = portal_id or self.config.default_portal_id
        self.codes[code] = AuthCode(
            portal,
            redirect_uri,
            scopes,
            self.now() + self.config.auth_code_ttl_s,
            user=user_email or self.config.user_emails.get(portal, DEFAULT_USER),
        )
        return code

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """POST /oauth/v1/token with a form already parsed."""
        if form.get("client_id") != self.config.client_id:
            raise ApiError(400, oauth_error("BAD_CLIENT_ID", "missing or unknown client id"))
        now = self.now()
        if form.get("client_secret") != self.config.client_secret or (
            now < self.faults.reject_client_secret_until
        ):
            refresh = self.refresh_tokens.get(form.get("refresh_token", ""))
            if refresh is not None:
                self.portal(refresh.portal_id).client_refusals += 1
            raise ApiError(400, oauth_error("BAD_CLIENT_SECRET", "client secret does not match"))
        grant = form.get("grant_type")
        if grant == "authorization_code":
            code = self.codes.get(form.get("code", ""))
            if code is None or code.used or code.expires_at < now:
                raise ApiError(400, oauth_error("BAD_AUTH_CODE", "missing or unknown auth code"))
            if form.get("redirect_uri") != code.redirect_uri:
                raise ApiError(
                    400, oauth_error("BAD_REDIRECT_URI", "redirect_uri does not match the code's")
                )
            code.used = True
            return self._grant(code.portal_id, code.scopes, user=code.user)
        if grant == "refresh_token":
            presented = form.get("refresh_token", "")
            refresh = self.refresh_tokens.get(presented)
            if refresh is None or refresh.revoked:
                if refresh is not None:
                    self.portal(refresh.portal_id).refresh_failures += 1
                raise ApiError(
                    400, oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
                )
            self.portal(refresh.portal_id).refreshes += 1
            if self.config.rotate_refresh_tokens:
                refresh.revoked = True
                return self._grant(refresh.portal_id, refresh.scopes, user=refresh.user)
            return self._grant(
                refresh.portal_id, refresh.scopes, refresh_token=presented, user=refresh.user
            )
        raise ApiError(400, oauth_error("BAD_GRANT_TYPE", "unsupported grant_type"))

    def _grant(
        self,
        portal_id: int,
        scopes: tuple[str, ...],
        refresh_token: str | None = None,
        user: str = DEFAULT_USER,
    ) -> dict[str, Any]:
        access = "C" + secrets.token_urlsafe(90)
        self.access_tokens[access] = AccessToken(
            portal_id, self.now() + self.config.access_token_ttl_s, scopes, user=user
        )
        if refresh_token is None:
            refresh_token = f"na1-{uuid.uuid4().hex[:4]}-{uuid.uuid4()}"
            self.refresh_tokens[refresh_token] = RefreshToken(portal_id, scopes, user=user)
        body: dict[str, Any] = {
            "token_type": "bearer",  # a type name  # nosec B105
            "access_token": access,
            "refresh_token": refresh_token,
            "expires_in": self.config.access_token_ttl_s,
        }
        if self.config.token_response_includes_hub_id:
            body["hub_id"] = portal_id
            body["scopes"] = list(scopes)
        return body

    def issue_tokens(self, portal_id: int, scopes: Iterable[str] | None = None) -> dict[str, Any]:
        """Install a portal without the browser dance (tests, demo seeding)."""
        user = self.config.user_emails.get(portal_id, DEFAULT_USER)
        grant = self._grant(portal_id, tuple(scopes or self.config.required_scopes), user=user)
        return {**grant, "hub_id": portal_id}

    def introspect(self, token: str) -> dict[str, Any]:
        access = self.access_tokens.get(token)
        now = self.now()
        if access is None or access.revoked or access.expires_at <= now:
            raise ApiError(404, error_body("NOT_FOUND", "access token not found or expired"))
        return {
            "token": token,
            "user": access.user or DEFAULT_USER,
            "hub_domain": f"portal-{access.portal_id}.example.com",
            "scopes": list(access.scopes),
            "hub_id": access.portal_id,
            "app_id": self.config.app_id,
            "expires_in": int(access.expires_at - now),
            "user_id": 1,
            "token_type": "access",  # a type name  # nosec B105
        }

    def refresh_token_info(self, token: str) -> dict[str, Any]:
        refresh = self.refresh_tokens.get(token)
        if refresh is None or refresh.revoked:
            raise ApiError(404, error_body("NOT_FOUND", "refresh token not found"))
        return {
            "token": token,
            "user": refresh.user or DEFAULT_USER,
            "hub_id": refresh.portal_id,
            "scopes": list(refresh.scopes),
            "client_id": self.config.client_id,
            "token_type": "refresh",  # a type name  # nosec B105
        }

    def revoke_refresh_token(self, token: str) -> None:
        refresh = self.refresh_tokens.get(token)
        if refresh is None or refresh.revoked:
            raise ApiError(404, error_body("NOT_FOUND", "refresh token not found"))
        refresh.revoked = True

    def revoke(self, portal_id: int, access_tokens: bool = False) -> int:
        """Uninstall-like: revoke every refresh token of a portal (and its access tokens)."""
        count = 0
        for refresh in self.refresh_tokens.values():
            if refresh.portal_id == portal_id and not refresh.revoked:
                refresh.revoked = True
                count += 1
        if access_tokens:
            for access in self.access_tokens.values():
                if access.portal_id == portal_id:
                    access.revoked = True
        return count

    def authenticate(self, authorization: str | None) -> AccessToken:
        """Bearer check for API calls: 401 for a missing, unknown, revoked or expired token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(
                401, error_body("INVALID_AUTHENTICATION", "Authentication credentials not found.")
            )
        access = self.access_tokens.get(authorization[7:].strip())
        if access is None or access.revoked:
            raise ApiError(401, error_body("INVALID_AUTHENTICATION", "The OAuth token is invalid."))
        now = self.now()
        if access.expires_at <= now:
            self.portal(access.portal_id).unauthorized += 1
            raise ApiError(
                401,
                error_body(
                    "EXPIRED_AUTHENTICATION",
                    f"The OAuth token used to make this call expired "
                    f"{int(now - access.expires_at)} second(s) ago.",
                ),
            )
        return access

    # --- rate limit ----------------------------------------------------------------------------
    def admit(self, portal_id: int, completion: bool) -> dict[str, str]:
        """Count one API call for the portal; raise 429 if over the rolling limit or storming.

        Harsh: calls answered 429 count too, so a client that keeps knocking stays locked out.
        """
        now = self.now()
        limit, window_s = self.config.rate_limit, self.config.rate_window_s
        stats = self.portal(portal_id)
        stats.requests += 1
        if completion:
            stats.completion_requests += 1
        window = self.windows.setdefault(portal_id, deque())
        while window and window[0] <= now - window_s:
            window.popleft()
        over = len(window) >= limit
        window.append(now)
        stats.max_in_window = max(stats.max_in_window, min(len(window), limit))
        headers = {
            "X-HubSpot-RateLimit-Max": str(limit),
            "X-HubSpot-RateLimit-Remaining": str(max(limit - len(window), 0)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(window_s * 1000)),
        }
        storming = (
            completion
            and now < self.faults.storm_until
            and (self.faults.storm_portals is None or portal_id in self.faults.storm_portals)
        )
        if over or storming:
            stats.rate_limited += 1
            stats.rate_limited_at.append(now)
            raise ApiError(
                429,
                {
                    "status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": "TEN_SECONDLY_ROLLING",
                    "groupName": f"publicapi:oauth:{self.config.app_id}:{portal_id}",
                },
                {**headers, "X-HubSpot-RateLimit-Remaining": "0"},
            )
        return headers

    def maybe_fail(self, portal_id: int) -> None:
        if self.faults.error_ratio > 0 and self.random.random() < self.faults.error_ratio:
            self.portal(portal_id).server_errors += 1
            raise ApiError(
                self.faults.error_status,
                error_body("INTERNAL_ERROR", "internal error (injected)"),
            )

    # --- callbacks ------------------------------------------------------------------------------
    def register_callback(
        self, callback_id: str, portal_id: int, action_definition_id: int = 1
    ) -> Callback:
        """The driver is about to deliver this execution (again, if it already exists)."""
        callback = self.callbacks.get(callback_id)
        if callback is None:
            callback = Callback(callback_id, portal_id, action_definition_id, self.now())
            self.callbacks[callback_id] = callback
        callback.deliveries += 1
        return callback

    def record_answer(
        self, callback_id: str, state: str | None, expiration_s: float | None = None
    ) -> None:
        """What the action URL answered. BLOCK (or ASYNC) leaves the callback open until expiry."""
        callback = self.callbacks[callback_id]
        now = self.now()
        if state in ("BLOCK", "ASYNC"):
            if callback.state != "blocked":
                ttl = DEFAULT_EXPIRATION_S if expiration_s is None else expiration_s
                if self.config.max_expiration_s is not None:
                    ttl = min(ttl, self.config.max_expiration_s)
                callback.state = "blocked"
                callback.blocked_at = now
                callback.expires_at = now + ttl
        elif state == "FAILED":
            if callback.state == "pending":
                callback.state = "failed"
        elif callback.state in ("pending", "failed"):
            callback.state = "answered"
        callback.answer = state

    def add_blocked(
        self,
        callback_id: str,
        portal_id: int,
        expires_in_s: float = DEFAULT_EXPIRATION_S,
        action_definition_id: int = 1,
    ) -> Callback:
        """A blocked callback, as if an action URL had answered BLOCK (completer tests)."""
        self.register_callback(callback_id, portal_id, action_definition_id)
        self.record_answer(callback_id, "BLOCK", expires_in_s)
        return self.callbacks[callback_id]

    def expire(self, callback_ids: Iterable[str]) -> int:
        now = self.now()
        count = 0
        for callback_id in callback_ids:
            callback = self.callbacks.get(callback_id)
            if callback is not None and callback.completed_at is None:
                callback.expires_at = now - 0.001
                count += 1
        return count

    def note_completion_request(self, callback_ids: Iterable[Any]) -> int:
        """A completion request arrived naming these callbacks: count each one that is already
        completed (or answered) as sent twice, under the callback's own portal. Returns how
        many (before authentication: a resend is a fault however HubSpot answers it)."""
        count = 0
        for callback_id in callback_ids:
            callback = self.callbacks.get(callback_id) if isinstance(callback_id, str) else None
            if callback is None:
                continue
            if callback.completed_at is not None or callback.state == "answered":
                self.portal(callback.portal_id).sent_twice += 1
                count += 1
        return count

    def _check_completion(
        self, portal_id: int, callback_id: Any, output_fields: Any
    ) -> tuple[str, str] | None:
        """Why this completion cannot be applied, as (kind, message), or None if it can."""
        if not isinstance(callback_id, str) or not callback_id:
            return ("invalid", "callbackId must be a non-empty string")
        if not isinstance(output_fields, dict):
            return ("invalid", "outputFields must be an object")
        state = output_fields.get("hs_execution_state")
        if state is not None and state not in FINAL_STATES:
            return ("invalid", f"hs_execution_state must be one of {', '.join(FINAL_STATES)}")
        callback = self.callbacks.get(callback_id)
        if callback is None or callback.portal_id != portal_id:
            # The token must belong to the callback's portal; another portal's callback is unknown.
            return ("unknown", f"callback {callback_id} not found")
        if callback.completed_at is not None or callback.state == "answered":
            return ("duplicate", f"callback {callback_id} is already completed")
        if callback.state != "blocked":
            return ("unknown", f"callback {callback_id} is not waiting for completion")
        if callback.expired(self.now()):
            return ("late", f"callback {callback_id} has expired")
        return None

    def _count(self, portal_id: int, kind: str) -> None:
        stats = self.portal(portal_id)
        if kind == "duplicate":
            stats.duplicates += 1
        elif kind == "late":
            stats.late += 1
        elif kind == "unknown":
            stats.unknown += 1

    def _apply(
        self, portal_id: int, callback_id: str, output: dict[str, Any], via: str, request: int
    ) -> None:
        callback = self.callbacks[callback_id]
        now = self.now()
        callback.completed_at = now
        callback.output_fields = dict(output)
        self.completions.append(
            Completion(
                callback_id,
                portal_id,
                now,
                "batch" if via == "batch" else "single",
                output,
                request,
            )
        )

    def _next_request(self) -> int:
        self._request_seq += 1
        return self._request_seq

    def complete_batch(self, portal_id: int, body: Any) -> None:
        """All or nothing. Harsh: any bad input rejects the whole batch with 400."""
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, error_body("VALIDATION_ERROR", "inputs must be a non-empty list"))
        if len(inputs) > self.config.max_batch:
            raise ApiError(
                400,
                error_body(
                    "VALIDATION_ERROR",
                    f"at most {self.config.max_batch} inputs per batch, got {len(inputs)}",
                ),
            )
        problems: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for entry in inputs:
            if not isinstance(entry, dict):
                problems.append(("", "invalid", "each input must be an object"))
                continue
            callback_id = entry.get("callbackId")
            problem = self._check_completion(portal_id, callback_id, entry.get("outputFields"))
            if problem is None and callback_id in seen:
                problem = ("invalid", f"callback {callback_id} appears twice in the batch")
            if problem is not None:
                problems.append((str(callback_id), *problem))
            seen.add(str(callback_id))
        if problems:
            self.portal(portal_id).rejected += 1
            for _, kind, _ in problems:
                self._count(portal_id, kind)
            errors = []
            for callback_id, kind, message in problems:
                error: dict[str, Any] = {"message": message, "subCategory": kind.upper()}
                if self.config.name_offenders_in_errors and callback_id:
                    error["context"] = {"callbackId": [callback_id]}
                errors.append(error)
            raise ApiError(
                400,
                error_body(
                    "VALIDATION_ERROR",
                    f"{len(problems)} of {len(inputs)} inputs cannot be completed",
                    errors=errors,
                ),
            )
        request = self._next_request()
        for entry in inputs:
            self._apply(portal_id, entry["callbackId"], entry["outputFields"], "batch", request)

    def complete_one(self, portal_id: int, callback_id: str, body: Any) -> None:
        output = body.get("outputFields") if isinstance(body, dict) else None
        problem = self._check_completion(portal_id, callback_id, output)
        if problem is not None:
            kind, message = problem
            self._count(portal_id, kind)
            self.portal(portal_id).rejected += 1
            status = 404 if kind == "unknown" else 400
            category = "OBJECT_NOT_FOUND" if kind == "unknown" else "VALIDATION_ERROR"
            raise ApiError(status, error_body(category, message))
        assert isinstance(output, dict)
        self._apply(portal_id, callback_id, output, "single", self._next_request())

    # --- action definitions ----------------------------------------------------------------------
    def check_developer(self, app_id: int, api_key: str | None) -> None:
        if api_key != self.config.developer_api_key:
            raise ApiError(
                401, error_body("INVALID_AUTHENTICATION", "missing or invalid developer API key")
            )
        if app_id != self.config.app_id:
            raise ApiError(404, error_body("OBJECT_NOT_FOUND", f"app {app_id} not found"))

    def create_definition(self, app_id: int, definition: Any) -> dict[str, Any]:
        validate_definition(definition, partial=False)
        self._definition_seq += 1
        stored = {
            **definition,
            "id": str(self._definition_seq),
            "revisionId": "1",
            "published": bool(definition.get("published", False)),
        }
        self.definitions.setdefault(app_id, {})[stored["id"]] = stored
        return stored

    def get_definition(self, app_id: int, definition_id: str) -> dict[str, Any]:
        found = self.definitions.get(app_id, {}).get(definition_id)
        if found is None:
            raise ApiError(404, error_body("OBJECT_NOT_FOUND", "action definition not found"))
        return found

    def update_definition(self, app_id: int, definition_id: str, changes: Any) -> dict[str, Any]:
        stored = self.get_definition(app_id, definition_id)
        validate_definition(changes, partial=True)
        merged = {**stored, **changes, "id": definition_id}
        merged["revisionId"] = str(int(stored["revisionId"]) + 1)
        self.definitions[app_id][definition_id] = merged
        return merged

    def archive_definition(self, app_id: int, definition_id: str) -> None:
        self.get_definition(app_id, definition_id)
        del self.definitions[app_id][definition_id]
        self.archived.add(definition_id)

    def list_definitions(self, app_id: int, limit: int, after: str | None) -> dict[str, Any]:
        items = sorted(self.definitions.get(app_id, {}).values(), key=lambda d: int(d["id"]))
        if after:
            items = [d for d in items if int(d["id"]) > int(after)]
        page = items[:limit]
        body: dict[str, Any] = {"results": page}
        if len(items) > limit:
            body["paging"] = {"next": {"after": page[-1]["id"]}}
        return body

    def snapshot(self) -> dict[str, Any]:
        return {"faults": asdict(self.faults)}


def validate_definition(definition: Any, partial: bool) -> None:
    """The checks HubSpot makes on a definition (harsh: HTTPS action URLs, English labels)."""

    def bad(message: str, field_name: str) -> ApiError:
        return ApiError(400, error_body("VALIDATION_ERROR", message, field=field_name))

    if not isinstance(definition, dict):
        raise bad("body must be an object", "")
    required = ("actionUrl", "objectTypes", "inputFields", "labels", "functions")
    if not partial:
        for name in required:
            if name not in definition:
                raise bad(f"{name} is required", name)
    if "actionUrl" in definition:
        url = definition["actionUrl"]
        loopback = isinstance(url, str) and url.startswith(
            ("http://127.0.0.1", "http://localhost", "http://[::1]")
        )
        if not isinstance(url, str) or not (url.startswith("https://") or loopback):
            raise bad("actionUrl must be an HTTPS URL", "actionUrl")
    if "objectTypes" in definition:
        types = definition["objectTypes"]
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise bad("objectTypes must be a non-empty list of object types", "objectTypes")
    if "inputFields" in definition:
        fields = definition["inputFields"]
        if not isinstance(fields, list):
            raise bad("inputFields must be a list", "inputFields")
        for index, input_field in enumerate(fields):
            type_definition = (
                input_field.get("typeDefinition") if isinstance(input_field, dict) else None
            )
            if not isinstance(type_definition, dict) or not type_definition.get("name"):
                raise bad("each input field needs typeDefinition.name", f"inputFields[{index}]")
            if not type_definition.get("type"):
                raise bad("each input field needs typeDefinition.type", f"inputFields[{index}]")
            if not isinstance(input_field.get("supportedValueTypes"), list):
                raise bad("supportedValueTypes must be a list", f"inputFields[{index}]")
    if "labels" in definition:
        labels = definition["labels"]
        english = labels.get("en") if isinstance(labels, dict) else None
        if not isinstance(english, dict) or not english.get("actionName"):
            raise bad("labels.en.actionName is required", "labels.en.actionName")
    if "functions" in definition and not isinstance(definition["functions"], list):
        raise bad("functions must be a list", "functions")
