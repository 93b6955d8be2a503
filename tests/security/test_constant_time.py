"""Secrets and signatures an attacker presents are compared in constant time.

Two proofs: (1) at run time, each check calls `hmac.compare_digest` with the value the caller
sent (we wrap the function and watch); (2) statically, no `==`, `!=` or `in` in the code that
handles outside input compares a signature, token, secret or digest — such a comparison stops at
the first differing byte, and the time it takes tells an attacker how many bytes were right.
"""

from __future__ import annotations

import ast
import hmac
import re
import time
from pathlib import Path

import pytest

from tests.fixtures.live_webhook import LiveWebhook
from throttle.hubspot.oauth_state import OAuthStateSigner, StateError
from throttle.hubspot.signatures import sign_v2, sign_v3, verify

ROOT = Path(__file__).resolve().parents[2] / "throttle"
# Code that compares something an outsider sent against something secret.
OUTSIDE_INPUT = [
    *sorted((ROOT / "webhook_service").glob("*.py")),
    ROOT / "hubspot" / "oauth_state.py",
    ROOT / "hubspot" / "crypto.py",
    ROOT / "hubspot" / "signatures.py",
]
SECRETISH = re.compile(
    r"(signature|secret|token|digest|hmac|password|api_?key|mac)$"
    r"|^(signature|secret|token|digest|expected|given|provided|presented)",
    re.IGNORECASE,
)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every pair `hmac.compare_digest` sees while the test runs, as bytes."""
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def watch(a: bytes | str, b: bytes | str) -> bool:
        seen.append(
            (
                a.encode() if isinstance(a, str) else bytes(a),
                b.encode() if isinstance(b, str) else bytes(b),
            )
        )
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", watch)
    return seen


def _sent(seen: list[tuple[bytes, bytes]], value: str) -> bool:
    return any(value.encode() in pair for pair in seen)


def test_v3_and_v2_signatures_go_through_compare_digest(
    compared: list[tuple[bytes, bytes]],
) -> None:
    url, body, now = (
        "https://throttle.example.com/api/hubspot/action",
        b'{"a":1}',
        1_700_000_000_000,
    )
    forged_v3 = sign_v3("wrong-secret", "POST", url, body, now)
    headers = {"X-HubSpot-Signature-v3": forged_v3, "X-HubSpot-Request-Timestamp": str(now)}
    assert not verify(headers, "POST", url, body, ["the-secret"], now).ok
    assert _sent(compared, forged_v3)
    forged_v2 = sign_v2("wrong-secret", "POST", url, body)
    headers = {"X-HubSpot-Signature": forged_v2, "X-HubSpot-Signature-Version": "v2"}
    assert not verify(headers, "POST", url, body, ["the-secret"], now, v2_until_ms=now + 1).ok
    assert _sent(compared, forged_v2)


def test_the_oauth_state_signature_goes_through_compare_digest(
    compared: list[tuple[bytes, bytes]],
) -> None:
    signer = OAuthStateSigner("k" * 40)
    issued = signer.issue(now=time.time())
    nonce, expires, binding, _ = issued.state.split(".")
    forged = "A" * 43
    with pytest.raises(StateError):
        signer.verify(f"{nonce}.{expires}.{binding}.{forged}", issued.browser_key)
    assert _sent(compared, forged)


def test_the_config_api_token_goes_through_compare_digest(
    live_webhook: LiveWebhook, compared: list[tuple[bytes, bytes]]
) -> None:
    guess = "guess-" + "z" * 38
    response = live_webhook.http.get(
        live_webhook.url + "/api/config", headers=live_webhook.bearer(guess), timeout=30
    )
    assert response.status_code in (401, 429)
    assert _sent(compared, guess)


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call | ast.Subscript):
        return _name(node.func if isinstance(node, ast.Call) else node.value)
    return None


def _constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and all(map(_constant, node.elts))


def test_no_plain_comparison_of_secrets_in_code_that_handles_outside_input() -> None:
    offenders = []
    for path in OUTSIDE_INPUT:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(_constant(o) for o in operands):
                continue  # a comparison with a literal leaks nothing secret
            if any((n := _name(o)) and SECRETISH.search(n) for o in operands):
                offenders.append(
                    f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}"
                )
    assert not offenders, "compare these with hmac.compare_digest:\n" + "\n".join(offenders)
    assert len(OUTSIDE_INPUT) > 5  # the scan really covered the webhook service
