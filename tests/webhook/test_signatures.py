"""Every signature case, with HubSpot's own Python SDK as the independent check."""

from __future__ import annotations

import json

import pytest
from hubspot.utils.signature import Signature

from throttle.hubspot.signatures import (
    MAX_SKEW_MS,
    decode_v3_url,
    sign_v1,
    sign_v2,
    sign_v3,
    verify,
)

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
OLD_SECRET = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
URL = "https://throttle.example.com/api/hubspot/action"
NOW_MS = 1_780_000_000_000
V2_OPEN = NOW_MS + 60_000
"""v2 is refused unless a span is open: these tests open one that covers NOW_MS."""
BODY = json.dumps(
    {"callbackId": "ap-1-2-3-0", "origin": {"portalId": 1}, "inputFields": {"policy": "p"}},
    separators=(",", ":"),
).encode()


def v3_headers(secret: str, url: str, body: bytes, ts: int, method: str = "POST") -> dict[str, str]:
    return {
        "X-HubSpot-Signature-v3": sign_v3(secret, method, url, body, ts),
        "X-HubSpot-Request-Timestamp": str(ts),
    }


def v2_headers(secret: str, url: str, body: bytes, method: str = "POST") -> dict[str, str]:
    return {
        "X-HubSpot-Signature": sign_v2(secret, method, url, body),
        "X-HubSpot-Signature-Version": "v2",
    }


# --- the contract's published vectors and the SDK ---------------------------------------------


def test_published_v2_vectors() -> None:
    get = sign_v2(SECRET, "GET", "https://www.example.com/webhook_uri", b"")
    post = sign_v2(
        SECRET, "POST", "https://www.example.com/webhook_uri", b'{"example_field":"example_value"}'
    )
    assert get == "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
    assert post == "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"


@pytest.mark.parametrize(
    "body", [b"", BODY, '{"name":"Zoë Ñandú 東京 🚀"}'.encode(), b'{"a":"\\u00e9"}']
)
def test_matches_sdk_for_every_version(body: bytes) -> None:
    text = body.decode("utf-8")
    assert sign_v1(SECRET, body) == Signature.get_signature(SECRET, text, "v1")
    assert sign_v2(SECRET, "POST", URL, body) == Signature.get_signature(
        SECRET, text, "v2", URL, "POST"
    )
    assert sign_v3(SECRET, "POST", URL, body, NOW_MS) == Signature.get_signature(
        SECRET, text, "v3", URL, "POST", str(NOW_MS)
    )


def test_sdk_accepts_what_we_sign_now() -> None:
    """The SDK checks v3 timestamps against its own clock, so sign with the real time here."""
    import time

    ts = int(time.time() * 1000)
    signature = sign_v3(SECRET, "POST", URL, BODY, ts)
    assert Signature.is_valid(signature, SECRET, BODY.decode(), URL, "POST", "v3", str(ts))


# --- verify: the accepted cases ---------------------------------------------------------------


def test_valid_v3() -> None:
    check = verify(
        v3_headers(SECRET, URL, BODY, NOW_MS),
        "POST",
        URL,
        BODY,
        [SECRET],
        NOW_MS,
        v2_until_ms=V2_OPEN,
    )
    assert check.ok
    assert check.version == "v3"
    assert check.secret_index == 0


def test_valid_v3_signed_by_the_sdk() -> None:
    sdk = Signature.get_signature(SECRET, BODY.decode(), "v3", URL, "POST", str(NOW_MS))
    headers = {"X-HubSpot-Signature-v3": sdk, "X-HubSpot-Request-Timestamp": str(NOW_MS)}
    assert verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


def test_valid_v2_signed_by_the_sdk() -> None:
    sdk = Signature.get_signature(SECRET, BODY.decode(), "v2", URL, "POST")
    headers = {"X-HubSpot-Signature": sdk, "X-HubSpot-Signature-Version": "v2"}
    check = verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN)
    assert check.ok
    assert check.version == "v2"


def test_v2_is_refused_by_default_and_after_its_span() -> None:
    """HubSpot signs requests to OAuth apps with v3; a v2 request signs no time, so a captured
    one could be replayed once the dedupe window has forgotten its callbackId."""
    headers = v2_headers(SECRET, URL, BODY)
    for until in (0, NOW_MS, NOW_MS - 1):
        check = verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=until)
        assert not check.ok
        assert check.reason == "v2 signatures are not accepted (HubSpot signs v3)"
    assert not verify(headers, "POST", URL, BODY, [SECRET], NOW_MS).ok
    assert verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=NOW_MS + 1).ok


def test_v2_without_version_header_is_v2() -> None:
    headers = {"X-HubSpot-Signature": sign_v2(SECRET, "POST", URL, BODY)}
    assert verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


def test_header_names_are_case_insensitive_in_plain_dicts() -> None:
    headers = {k.lower(): v for k, v in v3_headers(SECRET, URL, BODY, NOW_MS).items()}
    assert verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


def test_previous_secret_accepted_while_rotating() -> None:
    check = verify(
        v3_headers(OLD_SECRET, URL, BODY, NOW_MS), "POST", URL, BODY, [SECRET, OLD_SECRET], NOW_MS
    )
    assert check.ok
    assert check.secret_index == 1


def test_edges_of_the_window_are_accepted() -> None:
    for ts in (NOW_MS - MAX_SKEW_MS, NOW_MS + MAX_SKEW_MS):
        assert verify(
            v3_headers(SECRET, URL, BODY, ts),
            "POST",
            URL,
            BODY,
            [SECRET],
            NOW_MS,
            v2_until_ms=V2_OPEN,
        ).ok


# --- verify: the refused cases ----------------------------------------------------------------


def test_v1_refused_unless_allowed() -> None:
    sdk = Signature.get_signature(SECRET, BODY.decode(), "v1")
    headers = {"X-HubSpot-Signature": sdk, "X-HubSpot-Signature-Version": "v1"}
    refused = verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN)
    assert not refused.ok
    assert "v1" in refused.reason
    assert verify(
        headers, "POST", URL, BODY, [SECRET], NOW_MS, allow_v1=True, v2_until_ms=V2_OPEN
    ).ok
    wrong = {**headers, "X-HubSpot-Signature": sign_v1(OLD_SECRET, BODY)}
    assert not verify(
        wrong, "POST", URL, BODY, [SECRET], NOW_MS, allow_v1=True, v2_until_ms=V2_OPEN
    ).ok


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_wrong_secret(version: str) -> None:
    headers = (
        v3_headers(OLD_SECRET, URL, BODY, NOW_MS)
        if version == "v3"
        else v2_headers(OLD_SECRET, URL, BODY)
    )
    check = verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN)
    assert not check.ok
    assert "does not match" in check.reason


def test_stale_timestamp() -> None:
    ts = NOW_MS - MAX_SKEW_MS - 1
    check = verify(
        v3_headers(SECRET, URL, BODY, ts), "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN
    )
    assert not check.ok
    assert "older" in check.reason
    # The SDK agrees that such a request is too old.
    from hubspot.exceptions import InvalidSignatureTimestampError

    with pytest.raises(InvalidSignatureTimestampError):
        Signature.is_valid("x", SECRET, "", URL, "POST", "v3", str(ts))


def test_future_timestamp() -> None:
    ts = NOW_MS + MAX_SKEW_MS + 1
    check = verify(
        v3_headers(SECRET, URL, BODY, ts), "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN
    )
    assert not check.ok
    assert "future" in check.reason


@pytest.mark.parametrize("stamp", [None, "", "abc", "1.5e12"])
def test_missing_or_malformed_timestamp(stamp: str | None) -> None:
    headers = v3_headers(SECRET, URL, BODY, NOW_MS)
    if stamp is None:
        del headers["X-HubSpot-Request-Timestamp"]
    else:
        headers["X-HubSpot-Request-Timestamp"] = stamp
    assert not verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


def test_body_altered_by_one_byte() -> None:
    for version in ("v3", "v2"):
        headers = (
            v3_headers(SECRET, URL, BODY, NOW_MS)
            if version == "v3"
            else v2_headers(SECRET, URL, BODY)
        )
        for position in (0, len(BODY) // 2, len(BODY) - 1):
            altered = bytearray(BODY)
            altered[position] ^= 0x01
            assert not verify(
                headers, "POST", URL, bytes(altered), [SECRET], NOW_MS, v2_until_ms=V2_OPEN
            ).ok


def test_non_ascii_body_signed_on_raw_bytes() -> None:
    """HubSpot escapes non-ASCII; re-serialising the parsed JSON would change the bytes."""
    raw = b'{"callbackId":"c1","object":{"properties":{"name":"Zo\\u00eb \\u6771\\u4eac"}}}'
    utf8 = json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")).encode()
    assert raw != utf8
    headers = v3_headers(SECRET, URL, raw, NOW_MS)
    assert verify(headers, "POST", URL, raw, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
    assert not verify(headers, "POST", URL, utf8, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
    # And literal UTF-8 bodies verify too, with the SDK agreeing on the signature.
    literal = '{"name":"Zoë 東京"}'.encode()
    sdk = Signature.get_signature(SECRET, literal.decode(), "v3", URL, "POST", str(NOW_MS))
    headers = {"X-HubSpot-Signature-v3": sdk, "X-HubSpot-Request-Timestamp": str(NOW_MS)}
    assert verify(headers, "POST", URL, literal, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


def test_query_string_order_matters() -> None:
    signed = URL + "?b=2&a=1"
    for headers in (v3_headers(SECRET, signed, BODY, NOW_MS), v2_headers(SECRET, signed, BODY)):
        assert verify(headers, "POST", signed, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
        assert not verify(
            headers, "POST", URL + "?a=1&b=2", BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN
        ).ok


def test_method_and_url_are_signed() -> None:
    headers = v3_headers(SECRET, URL, BODY, NOW_MS)
    assert not verify(headers, "PUT", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
    assert not verify(
        headers, "POST", "http://10.0.0.5:8080/api/hubspot/action", BODY, [SECRET], NOW_MS
    ).ok


def test_bad_v3_is_not_rescued_by_v2() -> None:
    headers = {**v2_headers(SECRET, URL, BODY), **v3_headers(OLD_SECRET, URL, BODY, NOW_MS)}
    check = verify(headers, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN)
    assert not check.ok
    assert check.version == "v3"


def test_no_signature_and_no_secret() -> None:
    assert not verify({}, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
    assert not verify(v3_headers(SECRET, URL, BODY, NOW_MS), "POST", URL, BODY, [], NOW_MS).ok
    unknown = {"X-HubSpot-Signature": "abc", "X-HubSpot-Signature-Version": "v9"}
    assert not verify(unknown, "POST", URL, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok


# --- v3 URL decoding ----------------------------------------------------------------------------


def test_v3_decodes_exactly_the_listed_escapes() -> None:
    encoded = (
        "https://h.example/p?x=a%3Ab%2Fc%3Fd%40e%21f%24g%27h%28i%29j%2Ak%2Cl%3Bm&y=%20%2B%25%3a"
    )
    assert (
        decode_v3_url(encoded) == "https://h.example/p?x=a:b/c?d@e!f$g'h(i)j*k,l;m&y=%20%2B%25%3a"
    )


def test_v3_signature_of_escaped_url_matches_sdk_on_decoded_url() -> None:
    encoded = URL + "?next=https%3A%2F%2Fapp.example%2Fx%3Fa%3D1&name=O%27Brien%20%28x%29"
    decoded = URL + "?next=https://app.example/x?a%3D1&name=O'Brien%20(x)"
    ours = sign_v3(SECRET, "POST", encoded, BODY, NOW_MS)
    assert ours == Signature.get_signature(
        SECRET, BODY.decode(), "v3", decoded, "POST", str(NOW_MS)
    )
    headers = v3_headers(SECRET, decoded, BODY, NOW_MS)
    assert verify(headers, "POST", encoded, BODY, [SECRET], NOW_MS, v2_until_ms=V2_OPEN).ok
    # v2 does not decode: the escaped and decoded URLs sign differently.
    assert sign_v2(SECRET, "POST", encoded, BODY) != sign_v2(SECRET, "POST", decoded, BODY)
