"""HubSpot request signatures (v1, v2, v3): making them and checking them. Pure: no I/O, no clock.

The webhook checks every HubSpot call with `verify`; the HubSpot simulator signs its calls with
`sign_v2` / `sign_v3`, so both sides share one definition of the signed string. The caller passes
`now_ms`, which keeps the timestamp window testable and the module free of hidden state.

Rules (see shared/hubspot-contract.md §3):
- v3 (`X-HubSpot-Signature-v3` + `X-HubSpot-Request-Timestamp`) is checked when present, and then
  ONLY v3 — a request carrying a bad v3 signature is not rescued by a v2 one, because v2 has no
  timestamp and would reopen replays.
- Otherwise v2 (`X-HubSpot-Signature`, `X-HubSpot-Signature-Version: v2`, or no version header),
  but only until `v2_until_ms`: v2 signs no time, so a captured request could be replayed, and
  only the callbackId dedupe (a bounded window) would stop it. HubSpot signs requests to OAuth
  apps with v3, so v2 is refused unless the operator opens a span no longer than the dedupe
  window (`ALLOW_SIGNATURE_V2_UNTIL`): every v2 request accepted then falls inside one window, so
  a replay of it is a duplicate.
- v1 signs neither the URL nor the time, so it is refused unless the operator allows it.
- The v3 timestamp must be within 5 minutes of now in BOTH directions: a timestamp far in the
  future would otherwise give a captured request a long replay life.
- Every secret given (current, then previous while rotating) is tried; comparisons are
  constant-time (`hmac.compare_digest`).
- A v3 request whose timestamp is fresh and whose signature is well formed (base64 of an
  HMAC-SHA256) but made by none of the secrets is flagged `secret_mismatch`: that is what HubSpot
  sends once the client secret was rotated on its side only (or PUBLIC_URL is not the URL it
  calls). The webhook decides from the run of such verdicts whether to answer a retryable status
  (throttle/webhook_service/verification.py); this module only tells them apart.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SIGNATURE_V3 = "X-HubSpot-Signature-v3"
TIMESTAMP = "X-HubSpot-Request-Timestamp"
SIGNATURE = "X-HubSpot-Signature"
SIGNATURE_VERSION = "X-HubSpot-Signature-Version"

MAX_SKEW_MS = 5 * 60 * 1000
"""How far a v3 timestamp may be from now, either way."""

# Exactly the escapes HubSpot decodes before computing a v3 signature; nothing else is touched
# (a `%20` or `%2B` stays as sent).
V3_DECODED_ESCAPES: dict[str, str] = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


@dataclass(frozen=True)
class SignatureCheck:
    """The verdict on one request. `reason` is safe to log and to return (it holds no secret)."""

    ok: bool
    reason: str
    version: str | None = None
    secret_index: int | None = None
    """Which secret matched: 0 = current, 1 = previous (rotation still underway)."""
    secret_mismatch: bool = False
    """v3, fresh timestamp, well-formed signature, no secret makes it: signed by HubSpot with a
    secret we do not hold, or forged by someone who knows the format."""


VALID_V3 = (
    SignatureCheck(True, "valid v3 signature", "v3", 0),
    SignatureCheck(True, "valid v3 signature", "v3", 1),
)
"""The verdicts for the current and the previous secret, built once (a frozen dataclass costs a
microsecond to build, on every accepted request)."""


NO_MATCH_V3 = SignatureCheck(False, "v3 signature does not match", "v3")
MISMATCH_V3 = SignatureCheck(False, "v3 signature does not match", "v3", secret_mismatch=True)

V3_SIGNATURE_LENGTH = 44
"""Characters of a v3 signature: base64 of the 32 bytes of an HMAC-SHA256."""


def _well_formed_v3(given: str) -> bool:
    """Shaped like a signature HubSpot makes (so made with some secret), not junk."""
    text = given.strip()
    if len(text) != V3_SIGNATURE_LENGTH:
        return False
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return len(raw) == 32  # the bytes of an HMAC-SHA256 (a length: nothing secret compared)


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def decode_v3_url(url: str) -> str:
    """Decode the escapes HubSpot decodes for v3 (upper-case hex, as listed in the contract)."""
    if "%" not in url:
        return url
    out: list[str] = []
    i = 0
    while i < len(url):
        chunk = url[i : i + 3]
        if chunk in V3_DECODED_ESCAPES:
            out.append(V3_DECODED_ESCAPES[chunk])
            i += 3
        else:
            out.append(url[i])
            i += 1
    return "".join(out)


def sign_v1(secret: str, body: bytes | str) -> str:
    """SHA-256 of secret + body, lowercase hex."""
    return hashlib.sha256(secret.encode("utf-8") + _bytes(body)).hexdigest()


def sign_v2(secret: str, method: str, url: str, body: bytes | str) -> str:
    """SHA-256 (not HMAC) of secret + METHOD + URL + body, lowercase hex."""
    source = (secret + method.upper() + url).encode("utf-8") + _bytes(body)
    return hashlib.sha256(source).hexdigest()


def sign_v3(secret: str, method: str, url: str, body: bytes | str, timestamp_ms: int) -> str:
    """HMAC-SHA256 keyed by the secret of METHOD + decoded URL + body + timestamp, base64."""
    return _v3(secret, _v3_prefix(method, url), _bytes(body), timestamp_ms).decode("ascii")


@functools.lru_cache(maxsize=256)
def _v3_prefix(method: str, url: str) -> bytes:
    """METHOD + decoded URL, remembered: HubSpot calls the same two URLs again and again."""
    return (method.upper() + decode_v3_url(url)).encode("utf-8")


def _v3(secret: str, prefix: bytes, body: bytes, timestamp_ms: int) -> bytes:
    """The v3 signature as base64 bytes. The webhook signs every request it receives once per
    configured secret, so the HMAC keyed by each secret is set up once and copied: OpenSSL's
    one-shot HMAC sets up the key (and looks up SHA-256) each time, twice the work."""
    mac = _keyed_sha256(secret).copy()
    mac.update(b"%b%b%d" % (prefix, body, timestamp_ms))
    return base64.b64encode(mac.digest())


@functools.lru_cache(maxsize=8)
def _keyed_sha256(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that works for aiohttp's case-insensitive headers and for plain dicts."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _match(expected: Iterable[bytes], given: str) -> int | None:
    """Index of the first expected signature equal to `given`, compared in constant time each."""
    given_bytes = given.strip().encode("utf-8", "replace")
    found: int | None = None
    for index, candidate in enumerate(expected):
        # No early exit: the time taken does not tell which secret (if any) matched.
        if hmac.compare_digest(candidate, given_bytes) and found is None:
            found = index
    return found


def verify(
    headers: Mapping[str, str],
    method: str,
    url: str,
    body: bytes | str,
    secrets: Iterable[str],
    now_ms: int,
    allow_v1: bool = False,
    v2_until_ms: int = 0,
) -> SignatureCheck:
    """Check a HubSpot request: v3 if its headers are present, else v2 until `v2_until_ms`
    (epoch ms; 0 = never), v1 only if allowed.

    `url` is the full URL HubSpot called (scheme, host, path, query as sent); `body` the raw bytes.
    """
    secret_list = [s for s in secrets if s]
    if not secret_list:
        return SignatureCheck(False, "no client secret configured")

    v3 = _header(headers, SIGNATURE_V3)
    if v3 is not None:
        stamp = _header(headers, TIMESTAMP)
        if stamp is None:
            return SignatureCheck(False, f"{TIMESTAMP} missing", "v3")
        try:
            timestamp_ms = int(stamp.strip())
        except ValueError:
            return SignatureCheck(False, f"{TIMESTAMP} is not epoch milliseconds", "v3")
        if now_ms - timestamp_ms > MAX_SKEW_MS:
            return SignatureCheck(False, "timestamp older than 5 minutes", "v3")
        if timestamp_ms - now_ms > MAX_SKEW_MS:
            return SignatureCheck(False, "timestamp more than 5 minutes in the future", "v3")
        prefix, raw = _v3_prefix(method, url), _bytes(body)
        index = _match([_v3(s, prefix, raw, timestamp_ms) for s in secret_list], v3)
        if index is None:
            return MISMATCH_V3 if _well_formed_v3(v3) else NO_MATCH_V3
        if index < len(VALID_V3):
            return VALID_V3[index]
        return SignatureCheck(True, "valid v3 signature", "v3", index)

    given = _header(headers, SIGNATURE)
    if given is None:
        return SignatureCheck(False, "no HubSpot signature header")
    version = (_header(headers, SIGNATURE_VERSION) or "v2").strip().lower()
    if version == "v2":
        if now_ms >= v2_until_ms:
            return SignatureCheck(False, "v2 signatures are not accepted (HubSpot signs v3)", "v2")
        index = _match([sign_v2(s, method, url, body).encode() for s in secret_list], given.lower())
        if index is None:
            return SignatureCheck(False, "v2 signature does not match", "v2")
        return SignatureCheck(True, "valid v2 signature", "v2", index)
    if version == "v1":
        if not allow_v1:
            return SignatureCheck(False, "v1 signatures are not accepted", "v1")
        index = _match([sign_v1(s, body).encode() for s in secret_list], given.lower())
        if index is None:
            return SignatureCheck(False, "v1 signature does not match", "v1")
        return SignatureCheck(True, "valid v1 signature", "v1", index)
    return SignatureCheck(False, "unknown signature version")
