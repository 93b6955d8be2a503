"""What each answer of the token endpoint means (contract §7), through the real client and a real
HTTP server answering exactly what the row says: only a definitive refusal of this portal's
refresh token (or this install's code) is a `TokenRefused` — an uninstall; everything about the
app itself is a `ConfigFault` — never one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from throttle.hubspot.client import (
    ConfigFault,
    HubSpotClient,
    RateLimited,
    TokenGrant,
    TokenRefused,
    TokenResult,
)

SECRET = "the-client-secret-0123456789"  # a test value that must never be echoed
HTML = "text/html"
PROXY_PAGE = "<html><body><h1>403 Forbidden</h1>egress proxy says no</body></html>"
GRANT = {"access_token": "at", "refresh_token": "rt", "expires_in": 1800, "token_type": "bearer"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None
    content_type: str = "application/json"

    def response(self) -> web.Response:
        text = self.body if isinstance(self.body, str) else json.dumps(self.body)
        if self.body is None:
            text = ""
        return web.Response(status=self.status, text=text, content_type=self.content_type)


def hubspot(status: str, message: str = "refused") -> dict[str, str]:
    return {"status": status, "message": message, "correlationId": "c0ffee"}


REVOKED = "revoked"
CODE = "authorization_code"
BAD_CLIENT_SECRET = hubspot("BAD_CLIENT_SECRET")


def row(name: str, answer: Answer, expected: Any, grant: str = "refresh_token") -> Any:
    """expected: REVOKED (a TokenRefused), a ConfigFault kind, or a result type."""
    return pytest.param(grant, answer, expected, id=name)


ROWS = [
    # this portal's refresh token, definitively: the only refusals that uninstall
    row("400-bad-refresh-token", Answer(400, hubspot("BAD_REFRESH_TOKEN")), REVOKED),
    row("401", Answer(401, hubspot("UNAUTHORIZED")), REVOKED),
    row("401-category", Answer(401, {"status": "error", "category": "EXPIRED"}), REVOKED),
    # the app's own credentials, whatever the status: never an uninstall
    row("400-bad-client-secret", Answer(400, BAD_CLIENT_SECRET), "client_credentials"),
    row("400-bad-client-id", Answer(400, hubspot("BAD_CLIENT_ID")), "client_credentials"),
    row("401-invalid-client", Answer(401, {"error": "invalid_client"}), "client_credentials"),
    # anything else about the app or the way to HubSpot
    row("400-other", Answer(400, hubspot("BAD_GRANT_TYPE")), "bad_request"),
    row("400-no-code", Answer(400, {"status": "error", "message": "?"}), "bad_request"),
    row("403-json", Answer(403, {"category": "FORBIDDEN"}), "forbidden"),
    row("403-proxy-html", Answer(403, PROXY_PAGE, HTML), "unexpected_answer"),
    row("400-proxy-html", Answer(400, PROXY_PAGE, HTML), "unexpected_answer"),
    row("401-proxy-empty", Answer(401, None, "text/plain"), "unexpected_answer"),
    row("401-json-list", Answer(401, ["not", "an", "object"]), "unexpected_answer"),
    row("404-wrong-base-url", Answer(404, {"message": "no route"}), "unexpected_answer"),
    row("407-proxy-auth", Answer(407, PROXY_PAGE, HTML), "unexpected_answer"),
    row("200-proxy-login-page", Answer(200, PROXY_PAGE, HTML), "unexpected_answer"),
    row("200-without-tokens", Answer(200, {"ok": True}), "unexpected_answer"),
    row("500", Answer(500, hubspot("error")), "server_error"),
    row("502-proxy-html", Answer(502, PROXY_PAGE, HTML), "server_error"),
    row("503", Answer(503, {"category": "UNAVAILABLE"}), "server_error"),
    # the usual meanings stay
    row("429", Answer(429, {"policyName": "TEN_SECONDLY_ROLLING"}), RateLimited),
    row("200", Answer(200, GRANT), TokenGrant),
    # a code exchange: this install's code refused, or the app's configuration
    row("code-400-bad-auth-code", Answer(400, hubspot("BAD_AUTH_CODE")), REVOKED, CODE),
    row("code-400-bad-client-secret", Answer(400, BAD_CLIENT_SECRET), "client_credentials", CODE),
    row("code-403-proxy-html", Answer(403, PROXY_PAGE, HTML), "unexpected_answer", CODE),
]


@pytest.fixture
async def token_endpoint(aiohttp_server: Any) -> tuple[str, list[Answer]]:
    """A server whose /oauth/v1/token answers whatever is queued next."""
    queued: list[Answer] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_secret"] == SECRET
        return queued.pop(0).response()

    app = web.Application()
    app.router.add_post("/oauth/v1/token", token)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), queued


async def ask(url: str, grant: str) -> TokenResult:
    async with aiohttp.ClientSession() as session:
        client = HubSpotClient(session, url, "client-id", SECRET)
        if grant == "refresh_token":
            return await client.refresh_token("rt-portal")
        return await client.exchange_code("code", "https://throttle.example.com/cb")


@pytest.mark.parametrize(("grant", "answer", "expected"), ROWS)
async def test_token_answer_classification(
    token_endpoint: tuple[str, list[Answer]], grant: str, answer: Answer, expected: Any
) -> None:
    url, queued = token_endpoint
    queued.append(answer)
    result = await ask(url, grant)
    if expected == REVOKED:
        assert isinstance(result, TokenRefused), result
        assert result.status == answer.status
    elif isinstance(expected, str):
        assert isinstance(result, ConfigFault), result
        assert result.kind == expected
        assert result.status == answer.status
        assert result.describe()
    else:
        assert isinstance(result, expected), result


async def test_a_config_fault_carries_no_body_text_and_no_secret(
    token_endpoint: tuple[str, list[Answer]],
) -> None:
    """Only HubSpot's error code travels (to logs, Redis, /readyz): never its message, never a
    proxy's page, never anything that could echo what was sent."""
    url, queued = token_endpoint
    queued.append(Answer(400, hubspot("BAD_CLIENT_SECRET", f"secret {SECRET} does not match")))
    queued.append(Answer(403, {"status": f"<b>{SECRET}</b>", "message": SECRET}))
    queued.append(Answer(400, {"status": SECRET, "error": SECRET.upper().replace("-", "_")}))
    queued.append(Answer(403, PROXY_PAGE, HTML))
    for _ in range(4):
        fault = await ask(url, "refresh_token")
        assert isinstance(fault, ConfigFault)
        text = f"{fault!r} {fault.describe()}"
        assert SECRET not in text
        assert SECRET.upper().replace("-", "_") not in text
        assert "proxy says" not in text
    assert fault.describe() == (
        "the token endpoint's answer is not HubSpot's (HTTP 403 NOT_JSON): check "
        "HUBSPOT_API_BASE and any proxy in between"
    )
