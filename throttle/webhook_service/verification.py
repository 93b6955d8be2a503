"""Which URL HubSpot called, and whether the request really came from HubSpot.

Behind an ingress the pod sees its own host and maybe plain HTTP, but HubSpot signed the public
URL. So the URL is rebuilt from `PUBLIC_URL` plus the path and raw query as received — or from
`X-Forwarded-Proto` / `X-Forwarded-Host` (and `X-Forwarded-Prefix`, else PUBLIC_URL's path), but
only when the peer is a trusted proxy: anyone else could set those headers to whatever makes a
replayed signature fit.

A signature that fails is not always an attacker's: once the client secret is rotated on
HubSpot's side before ours (or PUBLIC_URL is not the URL HubSpot calls), every request HubSpot
sends fails, and a 401 makes HubSpot fail the action and let the workflow continue unthrottled.
`SecretMismatchWatch` tells the two apart from the recent verdicts (see its docstring); the
action endpoint then answers 503, which HubSpot retries for up to 3 days.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from urllib.parse import urlsplit

from aiohttp import web

from throttle import bounded_cache
from throttle.hubspot.signatures import SignatureCheck, verify
from throttle.settings import Settings
from throttle.webhook_service.errors import ErrorAnswer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ROTATION_DETAIL = (
    "most recent requests were signed with neither configured client secret although their "
    "timestamps are fresh: the client secret was most likely rotated at HubSpot and not here (set "
    "HUBSPOT_CLIENT_SECRET to the new secret and HUBSPOT_CLIENT_SECRET_PREVIOUS to the old one), "
    "or PUBLIC_URL is not the URL HubSpot calls; answering 503 so that HubSpot retries"
)
SUSPECTED_MISMATCH = SignatureCheck(False, ROTATION_DETAIL, "v3", secret_mismatch=True)
"""The verdict on a mismatch the watch judged ours: callers answer 503, not 401."""


def _last(value: str | None) -> str | None:
    """The right-most value of a possibly comma-joined forwarded header: the one the trusted
    proxy next to us wrote. Values to its left came from further away, the left-most from the
    client itself, so believing that one would let anyone pick the URL a signature is checked
    against."""
    if not value:
        return None
    last = value.rsplit(",", 1)[-1].strip()
    return last or None


def peer_is_trusted(peer: str | None, networks: list[Network]) -> bool:
    if not peer or not networks:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _prefixed(prefix: str, raw_path: str) -> str:
    """`raw_path` under the public path prefix, unless the proxy passed the prefix on."""
    prefix = prefix.rstrip("/")
    return raw_path if not prefix or raw_path.startswith(prefix + "/") else prefix + raw_path


def called_url(request: web.BaseRequest, public_url: str | None, trusted: list[Network]) -> str:
    """The full URL (scheme, host, path, raw query in original order) the caller used.

    An ingress that serves the webhook under a path prefix strips it (ingress-nginx's
    rewrite-target) and says so only if asked (`X-Forwarded-Prefix`); without that header the
    prefix is PUBLIC_URL's path, or HubSpot's signature over the public URL never matches."""
    raw_path = request.raw_path  # path + "?" + query exactly as on the wire
    base = urlsplit(public_url) if public_url else None
    if peer_is_trusted(request.remote, trusted):
        proto = _last(request.headers.get("X-Forwarded-Proto"))
        host = _last(request.headers.get("X-Forwarded-Host"))
        if proto and host:
            prefix = _last(request.headers.get("X-Forwarded-Prefix"))
            path = _prefixed(prefix or (base.path if base else ""), raw_path)
            return f"{proto.lower()}://{host}{path}"
    if base:
        return f"{base.scheme}://{base.netloc}{_prefixed(base.path, raw_path)}"
    return f"{request.scheme}://{request.host}{raw_path}"


class SecretMismatchWatch:
    """Whether a failed signature is likely ours to fix rather than a forgery.

    Only requests with a fresh v3 timestamp and a well-formed signature count (junk never looks
    like ours). Of the last `VERDICTS` such requests within `WINDOW_S`, a mismatch is "ours"
    when mismatches outnumber valid ones: a forged request among HubSpot's valid ones still
    gets 401, while a secret HubSpot changed fails every request and, from a cold start, turns
    the very first one into 503. Mid-traffic, a rotation costs at most VERDICTS/2 failed
    actions per pod before the answers turn retryable (HUBSPOT_CLIENT_SECRET_PREVIOUS, set
    before HubSpot's secret changes, costs none). Forgeries sent while no valid request
    arrives also get 503, which changes nothing for them (nothing is queued either way).
    """

    WINDOW_S = 300.0
    """Verdicts older than this are forgotten (HubSpot's timestamp tolerance): a pod that saw
    no valid request for five minutes has no evidence that its secret still matches."""

    VERDICTS = 8
    """How many recent verdicts decide."""

    def __init__(self) -> None:
        self._recent: deque[tuple[float, bool]] = deque(maxlen=self.VERDICTS)

    def valid(self, now: float) -> None:
        self._recent.append((now, True))

    def mismatch(self, now: float) -> bool:
        """Record a secret mismatch; True when it is likely ours (it and the other mismatches
        among the recent verdicts outnumber the valid ones)."""
        self._recent.append((now, False))
        horizon = now - self.WINDOW_S
        valid = sum(1 for at, ok in self._recent if ok and at >= horizon)
        mismatched = sum(1 for at, ok in self._recent if not ok and at >= horizon)
        return mismatched > valid


class SignatureVerifier:
    """Settings-bound signature check for HubSpot's calls (action and options endpoints)."""

    MAX_URLS = 256
    """URLs remembered: HubSpot calls two paths; the bound stops junk paths from growing it."""

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.public_url
        self.trusted = settings.trusted_proxy_networks
        self.secrets = settings.client_secrets
        self.allow_v1 = settings.allow_signature_v1
        until = settings.allow_signature_v2_until
        self.v2_until_ms = int(until.timestamp() * 1000) if until is not None else 0
        self._urls: dict[str, str] = {}
        self.watch = SecretMismatchWatch()

    def url(self, request: web.BaseRequest) -> str:
        """`called_url`, remembered per raw path when PUBLIC_URL is set and no proxy is trusted:
        then the URL depends on the path alone (no header is read), and rebuilding it (urlsplit
        of PUBLIC_URL) on every request costs about as much as the HMAC (bench/caches.py)."""
        if self.trusted or not self.public_url:
            return called_url(request, self.public_url, self.trusted)
        raw_path = request.raw_path
        url = self._urls.get(raw_path)
        if url is None:
            url = called_url(request, self.public_url, self.trusted)
            bounded_cache.put(self._urls, raw_path, url, self.MAX_URLS)
        return url

    def check(self, request: web.Request, body: bytes) -> SignatureCheck:
        url = self.url(request)
        now = time.time()
        result = verify(
            request.headers,
            request.method,
            url,
            body,
            self.secrets,
            int(now * 1000),
            self.allow_v1,
            self.v2_until_ms,
        )
        if result.ok:
            if result.version == "v3":
                self.watch.valid(now)
        elif result.secret_mismatch and self.watch.mismatch(now):
            return SUSPECTED_MISMATCH
        return result

    def require(self, request: web.Request, body: bytes) -> SignatureCheck:
        """Raise unless the request is signed by HubSpot: 401 (JSON, with the reason), or 503
        when the failure looks like our secret's rather than a forgery (HubSpot retries)."""
        result = self.check(request, body)
        if not result.ok:
            raise refusal(result)
        return result


def refusal(result: SignatureCheck) -> ErrorAnswer:
    """The answer to a failed signature check."""
    if result is SUSPECTED_MISMATCH:
        return ErrorAnswer(503, "secret_mismatch", result.reason, headers={"Retry-After": "60"})
    return ErrorAnswer(401, "invalid_signature", result.reason)
