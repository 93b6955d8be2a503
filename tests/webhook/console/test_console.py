"""The portal console over HTTP, against real Redis, PostgreSQL and the simulator's OAuth."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from click.testing import CliRunner

from tests.fixtures.console import (
    PORTAL_A,
    PORTAL_B,
    ConsoleStack,
    StartConsole,
    cookie_attributes,
    parse_html,
)
from throttle.cli.main import main
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue
from throttle.engine.queue_status import StatusReader
from throttle.engine.registry import reconcile
from throttle.logs import RedactingFilter
from throttle.webhook_service.appkeys import REDIS as REDIS_KEY
from throttle.webhook_service.console.sessions import SessionSigner
from throttle_dev.localenv import free_port


async def _paused(stack: ConsoleStack, name: str, portal_id: int = PORTAL_A) -> bool:
    for policy in await StatusReader(stack.app[REDIS_KEY]).policies():
        if policy.portal_id == portal_id and policy.name == name:
            return policy.paused
    raise AssertionError(f"{name} is not in the registry")


async def _changes(stack: ConsoleStack) -> list[Any]:
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        return list(await conn.fetch("SELECT * FROM console_changes ORDER BY id"))
    finally:
        await conn.close()


async def test_sign_in_with_hubspot_binds_the_portal_and_the_role(
    start_console: StartConsole,
) -> None:
    roles = f'{{"{PORTAL_A}": {{"Ops@Example.com": "operator"}}}}'
    stack = await start_console(console_roles=roles)
    await stack.add_policy("enrichment", PORTAL_A)
    operator = await stack.sign_in_hubspot(PORTAL_A, "ops@example.com")
    page = await stack.page(operator, f"/console/portals/{PORTAL_A}/queues/enrichment")
    assert page.status == 200
    assert page.dom.has_id("pause-form")
    assert "ops@example.com" in page.by_id("sign-out-form").text() or "ops@example.com" in (
        page.dom.text()
    )
    viewer = await stack.sign_in_hubspot(PORTAL_A, "someone@example.com")
    page = await stack.page(viewer, f"/console/portals/{PORTAL_A}/queues/enrichment")
    assert page.status == 200
    assert not page.dom.has_id("pause-form")
    assert not page.dom.has_id("resume-form")
    # The user's HubSpot tokens were dropped: nothing stored for the portal.
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM oauth_tokens") == 0
    finally:
        await conn.close()
    # A session binds one portal: the HubSpot user of A sees nothing of B.
    page = await stack.page(operator, f"/console/portals/{PORTAL_B}")
    assert page.status == 403


async def test_sign_in_refuses_a_state_from_another_browser(console_stack: ConsoleStack) -> None:
    first = console_stack.browser()
    async with first.get("/console/oauth/start", allow_redirects=False) as r:
        authorize = r.headers["Location"]
    async with first.get(authorize + f"&portal_id={PORTAL_A}", allow_redirects=False) as r:
        callback = r.headers["Location"]
    other = console_stack.browser()
    async with other.get(callback, allow_redirects=False) as r:
        assert r.status == 403
        assert "another browser" in parse_html(await r.text()).by_id("error").text() or (
            "cookie" in parse_html(await r.text()).by_id("error").text()
        )
        assert "throttle_console" not in r.cookies


async def test_link_sets_a_signed_cookie_with_every_flag(console_stack: ConsoleStack) -> None:
    browser = console_stack.browser()
    link = console_stack.link(PORTAL_A, "viewer", expires_in=86_400)
    async with browser.get(link, allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == f"/console/portals/{PORTAL_A}"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        set_cookie = [v for v in r.headers.getall("Set-Cookie") if "throttle_console=" in v]
    assert len(set_cookie) == 1
    attributes = cookie_attributes(set_cookie[0])
    assert "httponly" in attributes
    assert "secure" in attributes
    assert attributes["samesite"] == "Lax"
    assert attributes["path"] == "/console/"
    ttl = console_stack.settings.console_session_ttl
    assert ttl - 5 <= int(attributes["max-age"]) <= ttl
    # A link that ends sooner ends its session with it.
    async with browser.get(console_stack.link(PORTAL_A, "viewer", expires_in=600)) as r:
        short = [v for v in r.history[0].headers.getall("Set-Cookie") if "throttle_console=" in v]
    assert 590 <= int(cookie_attributes(short[0])["max-age"]) <= 600
    # The cookie is signed: changing one character of it is not a session.
    value = set_cookie[0].split(";")[0].split("=", 1)[1]
    tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    async with aiohttp.ClientSession(base_url=console_stack.base) as raw:
        async with raw.get(
            f"/console/portals/{PORTAL_A}", headers={"Cookie": f"throttle_console={tampered}"}
        ) as r:
            assert r.status == 403
        async with raw.get(
            f"/console/portals/{PORTAL_A}", headers={"Cookie": f"throttle_console={value}"}
        ) as r:
            assert r.status == 200


@pytest.mark.parametrize("kind", ["expired", "forged", "tampered", "session_as_link", "missing"])
async def test_expired_or_forged_link_is_refused(console_stack: ConsoleStack, kind: str) -> None:
    signer = console_stack.signer
    if kind == "expired":
        token, _ = signer.issue("link", PORTAL_A, "operator", "link:x", time.time() - 1)
    elif kind == "forged":
        other = SessionSigner("another-console-key-of-at-least-32-characters")
        token, _ = other.issue("link", PORTAL_A, "operator", "link:x", time.time() + 600)
    elif kind == "tampered":
        good, _ = signer.issue("link", PORTAL_A, "viewer", "link:x", time.time() + 600)
        evil, _ = signer.issue("link", PORTAL_A, "operator", "link:x", time.time() + 600)
        token = evil.split(".")[0] + "." + good.split(".")[1]
    elif kind == "session_as_link":
        token, _ = signer.issue("session", PORTAL_A, "operator", "link:x", time.time() + 600)
    else:
        token = ""
    browser = console_stack.browser()
    async with browser.get(f"/console/link?t={token}", allow_redirects=False) as r:
        assert r.status == 403
        assert parse_html(await r.text()).by_id("error").text()
        assert not [v for v in r.headers.getall("Set-Cookie", []) if "throttle_console=" in v]
    async with browser.get(f"/console/link?t={token}", headers={"Accept": "application/json"}) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "link_refused"


async def test_portal_b_gets_403_on_every_portal_a_route(console_stack: ConsoleStack) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A)
    intruder = await console_stack.enter(PORTAL_B, "operator")
    csrf = await console_stack.csrf(intruder, f"/console/portals/{PORTAL_B}")
    base = f"/console/portals/{PORTAL_A}"
    for path in (base, base + "/queues.json", base + "/queues/enrichment", base + "/lookup?q=x"):
        async with intruder.get(path) as r:
            assert r.status == 403, path
            body = await r.text()
            assert "enrichment" not in body or path.endswith("/queues/enrichment"), path
    for path in (base + "/queues/enrichment/pause", base + "/queues/enrichment/resume"):
        async with intruder.post(path, data={"csrf_token": csrf}) as r:
            assert r.status == 403, path
    assert not await _paused(console_stack, "enrichment")
    assert await _changes(console_stack) == []
    # Not signed in at all: 403 too.
    anonymous = console_stack.browser()
    async with anonymous.get(base) as r:
        assert r.status == 403


async def test_viewer_cannot_pause(console_stack: ConsoleStack) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A)
    viewer = await console_stack.enter(PORTAL_A, "viewer")
    path = f"/console/portals/{PORTAL_A}/queues/enrichment"
    page = await console_stack.page(viewer, path)
    assert not page.dom.has_id("pause-form")
    csrf = await console_stack.csrf(viewer, f"/console/portals/{PORTAL_A}")
    async with viewer.post(path + "/pause", data={"csrf_token": csrf}) as r:
        assert r.status == 403
        assert "viewer" in parse_html(await r.text()).by_id("error").text()
    assert not await _paused(console_stack, "enrichment")
    assert await _changes(console_stack) == []


@pytest.mark.parametrize("token", [None, "", "wrong", "other-session"])
async def test_a_form_without_its_csrf_token_changes_nothing(
    console_stack: ConsoleStack, token: str | None
) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A)
    operator = await console_stack.enter(PORTAL_A, "operator")
    if token == "other-session":
        other = await console_stack.enter(PORTAL_A, "operator", name="other")
        token = await console_stack.csrf(other, f"/console/portals/{PORTAL_A}")
    data = {} if token is None else {"csrf_token": token}
    path = f"/console/portals/{PORTAL_A}/queues/enrichment/pause"
    async with operator.post(path, data=data) as r:
        assert r.status == 403
        assert "csrf" in parse_html(await r.text()).by_id("error").text()
    assert not await _paused(console_stack, "enrichment")
    assert await _changes(console_stack) == []


async def test_pause_stops_releases_until_resumed_and_is_recorded(
    console_stack: ConsoleStack, redis: Any
) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A)
    operator = await console_stack.enter(PORTAL_A, "operator", name="ann")
    path = f"/console/portals/{PORTAL_A}/queues/enrichment"
    csrf = await console_stack.csrf(operator, path)
    async with operator.post(path + "/pause", data={"csrf_token": csrf}) as r:
        assert r.status == 200
        assert r.url.path == path
        page = parse_html(await r.text())
    assert page.has_id("resume-form")
    assert not page.has_id("pause-form")
    rows = page.by_id("changes").find_all("tr")
    assert "link:ann" in rows[1].text()
    assert "pause" in rows[1].text()

    sent = await console_stack.send(PORTAL_A, "enrichment", 3)
    queue = Queue(redis)
    assert (await queue.take(min_hold_seconds=0)).released == []
    await asyncio.sleep(0.2)
    assert (await queue.take(min_hold_seconds=0)).released == []

    async with operator.post(path + "/resume", data={"csrf_token": csrf}) as r:
        assert r.status == 200
        page = parse_html(await r.text())
    assert page.has_id("pause-form")
    released: list[str] = []
    deadline = time.monotonic() + 5
    while len(released) < len(sent) and time.monotonic() < deadline:  # at the policy's rate
        released += [e.callback_id for e in (await queue.take(min_hold_seconds=0)).released]
        await asyncio.sleep(0.05)
    assert sorted(released) == sorted(sent)
    changes = await _changes(console_stack)
    assert [(c["portal_id"], c["queue"], c["change"], c["who"]) for c in changes] == [
        (PORTAL_A, "enrichment", "pause", "link:ann"),
        (PORTAL_A, "enrichment", "resume", "link:ann"),
    ]


async def test_overview_shows_the_status_figures_of_its_portal_only(
    console_stack: ConsoleStack, redis: Any
) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A, dailyCap={"limit": 500})
    await console_stack.add_policy("slow", PORTAL_A, rate={"limit": 1, "period": "1h"})
    await console_stack.add_policy("theirs", PORTAL_B)
    await console_stack.send(PORTAL_A, "slow", 3)
    viewer = await console_stack.enter(PORTAL_A, "viewer")
    page = await console_stack.page(viewer, f"/console/portals/{PORTAL_A}")
    assert page.status == 200
    table = page.by_id("queues")
    rows = {tr.attrs["data-queue"]: tr for tr in table.find_all("tr") if "data-queue" in tr.attrs}
    assert set(rows) == {"enrichment", "slow"}
    printed = await asyncio.to_thread(  # the CLI runs its own event loop
        CliRunner().invoke,
        main,
        ["status", "--json", "--portal", str(PORTAL_A)],
        env={"REDIS_URL": console_stack.settings.redis_url or ""},
    )
    assert printed.exit_code == 0, printed.output
    expected = json.loads(printed.output)
    async with viewer.get(f"/console/portals/{PORTAL_A}/queues.json") as r:
        live = await r.json()
    assert [q["name"] for q in live["queues"]] == ["enrichment", "slow"]
    assert live["portal_id"] == PORTAL_A
    for q in expected["queues"]:
        cells = {td.attrs["data-field"]: td for td in rows[q["name"]].find_all("td")}
        for name in ("rate", "state", "queued", "in_flight", "released_today", "drain_s"):
            value = q[name]
            shown = "" if value is None else str(value)
            assert cells[name].attrs["data-value"] == shown, (q["name"], name)
        assert float(cells["oldest_wait_s"].attrs["data-value"]) <= q["oldest_wait_s"] + 5
    assert rows["slow"].find_all("td", data_field="queued")[0].attrs["data-value"] == "3"
    assert (
        rows["enrichment"].find_all("td", data_field="released_today")[0].attrs["data-value"] == "0"
    )


async def test_queue_page_chart_failures_and_lookup_from_history(
    console_stack: ConsoleStack,
) -> None:
    await console_stack.add_policy("enrichment", PORTAL_A)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(console_stack.settings.database_url)
    try:
        rows = [
            ("cb-1", "completed", now - timedelta(minutes=2), None, "101"),
            ("cb-2", "completed", now - timedelta(minutes=2), None, "102"),
            (
                "cb-3",
                "failed",
                now - timedelta(minutes=5),
                "HubSpot refused: CALLBACK_EXPIRED",
                "103",
            ),
            ("cb-4", "completed", now - timedelta(hours=3), None, "104"),
        ]
        for cb, outcome, released, error, record in rows:
            await conn.execute(
                """INSERT INTO action_executions (callback_id, portal_id, policy, object_type,
                       object_id, received_at, released_at, completed_at, outcome, last_error)
                   VALUES ($1, $2, 'enrichment', 'CONTACT', $3, $4, $4, $4, $5, $6)""",
                cb,
                PORTAL_A,
                record,
                released,
                outcome,
                error,
            )
        await conn.execute(
            """INSERT INTO action_executions (callback_id, portal_id, policy, outcome, last_error)
               VALUES ('cb-b', $1, 'enrichment', 'failed', 'portal B secret reason')""",
            PORTAL_B,
        )
    finally:
        await conn.close()
    viewer = await console_stack.enter(PORTAL_A, "viewer")
    page = await console_stack.page(viewer, f"/console/portals/{PORTAL_A}/queues/enrichment")
    assert page.status == 200
    svg = page.by_id("releases-chart")
    heights = [float(r.attrs["height"]) for r in svg.find_all("rect")]
    assert len(heights) == 60
    assert sum(1 for h in heights if h > 0) == 2
    per_minute = page.by_id("releases-per-minute").find_all("td")
    assert sum(int(td.text()) for td in per_minute) == 3
    failures = page.by_id("failures").text()
    assert "CALLBACK_EXPIRED" in failures
    assert "portal B" not in failures
    assert page.by_id("settings").find_all("dt")
    for query in ("cb-3", "103"):
        page = await console_stack.page(viewer, f"/console/portals/{PORTAL_A}/lookup?q={query}")
        events = page.by_id("timeline").find_all("li")
        assert [e.text().split(": ", 1)[-1] for e in events][-1].startswith("Failed")
        assert len(events) == 3
    page = await console_stack.page(viewer, f"/console/portals/{PORTAL_A}/lookup?q=cb-b")
    assert page.dom.has_id("not-found")
    assert not page.dom.has_id("timeline")


async def test_inline_queue_says_it_cannot_be_paused_here(
    console_stack: ConsoleStack, redis: Any
) -> None:
    operator = await console_stack.enter(PORTAL_A, "operator")
    csrf = await console_stack.csrf(operator, f"/console/portals/{PORTAL_A}")
    path = f"/console/portals/{PORTAL_A}/queues/inline.q.bulk"
    async with operator.post(path + "/pause", data={"csrf_token": csrf}) as r:
        assert r.status == 409
        assert "workflow" in parse_html(await r.text()).by_id("error").text()


async def test_a_policy_from_a_manifest_file_offers_no_pause_button(
    console_stack: ConsoleStack, redis: Any
) -> None:
    """Locally, `throttle operator --local` applies manifest files straight to the registry; the
    config store does not hold them, so a Pause button there could only answer 404."""
    from_file = Policy.model_validate(
        {"name": "from-file", "portalId": PORTAL_A, "rate": {"limit": 60, "period": "1m"}}
    )
    await reconcile(Queue(redis), from_file)  # what the local operator does with a file
    await console_stack.add_policy("from-api", PORTAL_A)
    operator = await console_stack.enter(PORTAL_A, "operator")
    base = f"/console/portals/{PORTAL_A}/queues"
    page = await console_stack.page(operator, f"{base}/from-file")
    assert page.dom.has_id("manifest-note")
    assert "spec.paused" in page.dom.by_id("manifest-note").text()
    assert not page.dom.has_id("pause-form")
    page = await console_stack.page(operator, f"{base}/from-api")
    assert page.dom.has_id("pause-form")
    assert not page.dom.has_id("manifest-note")


async def test_console_is_off_without_its_key(start_console: StartConsole) -> None:
    stack = await start_console()
    async with aiohttp.ClientSession(base_url=stack.base) as b, b.get("/console/sign-in") as r:
        assert r.status == 200
    off = await start_console(console_session_key=None)
    async with aiohttp.ClientSession(base_url=off.base) as b, b.get("/console/sign-in") as r:
        assert r.status == 404


async def test_no_token_or_key_in_logs(start_console: StartConsole) -> None:
    stack = await start_console(run=True, webhook_access_log="all", log_level="DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(stack.settings.secret_values()))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        link = stack.link(PORTAL_A, "operator")
        browser = stack.browser()
        async with browser.get(link) as r:
            assert r.status == 200
        signed_in = await stack.sign_in_hubspot(PORTAL_A, "ops@example.com")
        async with signed_in.get(f"/console/portals/{PORTAL_A}") as r:
            assert r.status == 200
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert "console/link" in text  # the access log saw the request, without its query
    secrets_seen = [link.split("t=")[1], stack.settings.console_session_key.get_secret_value()]
    secrets_seen += list(stack.sim.sim.access_tokens) + list(stack.sim.sim.refresh_tokens)
    secrets_seen += [c.value for b in stack.browsers for c in b.cookie_jar]
    for secret in secrets_seen:
        assert secret
        assert secret not in text


async def test_console_port_serves_the_console_alone(start_console: StartConsole) -> None:
    port = free_port()
    stack = await start_console(run=True, console_port=port)
    async with aiohttp.ClientSession() as raw:
        async with raw.get(stack.base + "/console/sign-in") as r:
            assert r.status == 404  # not on the webhook's port
        async with raw.get(f"http://127.0.0.1:{port}/console/sign-in") as r:
            assert r.status == 200
            assert parse_html(await r.text()).has_id("sign-in-hubspot")
        async with raw.get(f"http://127.0.0.1:{port}/api/config") as r:
            assert r.status == 404  # and nothing but the console on its own
    stack.base = f"http://127.0.0.1:{port}"
    browser = await stack.enter(PORTAL_A, "viewer")
    async with browser.get(f"/console/portals/{PORTAL_A}/queues.json") as r:
        assert r.status == 200
        assert (await r.json()) == {"portal_id": PORTAL_A, "queues": []}
