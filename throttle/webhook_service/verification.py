"""Which URL HubSpot called, and whether the request really came from HubSpot.

Behind an ingress the pod sees its own host and maybe plain HTTP, but HubSpot signed the public
URL. So the URL is rebuilt from `PUBLIC_URL` plus the path and raw query as received — or from
`X-Forwarded-Proto` / `X-Forwarded-Host`, but only when the peer is a trusted proxy: anyone else
could set those headers to whatever makes a replayed signature fit.
"""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlsplit

from aiohttp import web

from throttle import bounded_cache
from throttle.hubspot.signatures import SignatureCheck, verify
from throttle.settings import Settings
from throttle.webhook_service.errors import ErrorAnswer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def called_url(request: web.BaseRequest, public_url: str | None, trusted: list[Network]) -> str:
    """The full URL (scheme, host, path, raw query in original order) the caller used."""
    raw_path = request.raw_path  # path + "?" + query exactly as on the wire
    if peer_is_trusted(request.remote, trusted):
        proto = _last(request.headers.get("X-Forwarded-Proto"))
        host = _last(request.headers.get("X-Forwarded-Host"))
        if proto and host:
            return f"{proto.lower()}://{host}{raw_path}"
    if public_url:
        base = urlsplit(public_url)
        prefix = base.path.rstrip("/")
        path = raw_path if not prefix or raw_path.startswith(prefix + "/") else prefix + raw_path
        return f"{base.scheme}://{base.netloc}{path}"
    return f"{request.scheme}://{request.host}{raw_path}"


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
        return verify(
            request.headers,
            request.method,
            url,
            body,
            self.secrets,
            int(time.time() * 1000),
            self.allow_v1,
            self.v2_until_ms,
        )

    def require(self, request: web.Request, body: bytes) -> SignatureCheck:
        """Raise 401 (JSON, with the reason) unless the request is signed by HubSpot."""
        result = self.check(request, body)
        if not result.ok:
            raise ErrorAnswer(401, "invalid_signature", result.reason)
        return result
