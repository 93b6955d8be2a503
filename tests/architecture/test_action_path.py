"""docs/architecture.md lists the modules one action passes through, from HubSpot's POST to the
ack: this test sends a real action through the real webhook app, dispatcher and HubSpot
simulator, records every `throttle` module whose code runs on that action's behalf (a profile
hook that counts a call only when the webhook's handler or the dispatcher's take-and-send is on
its stack, so background loops do not count), and fails when the list differs from the
document's. Settings, metrics and logs are not counted: every module uses them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from tests.fixtures.hubspot_simulator import StartSimulator
from tests.fixtures.webhook import ServeWebhook
from throttle.dispatcher.drain import Dispatcher
from throttle.dispatcher.hubspot_completer import build_completer
from throttle.engine.queue import Queue
from throttle.history.migrations import migrate
from throttle.hubspot.signatures import sign_v3
from throttle.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
PORTAL = 5150
ROOTS = {"ActionEndpoint.handle", "Dispatcher.step", "Dispatcher._send"}
"""The code that works on one action: the webhook's handler; the dispatcher's take and the
per-portal sender that completes and settles what the take released."""
NOT_COUNTED = {"throttle.settings", "throttle.metrics", "throttle.logs"}


def action_body(callback_id: str) -> bytes:
    return json.dumps(
        {
            "callbackId": callback_id,
            "origin": {"portalId": PORTAL, "actionDefinitionId": 7, "actionDefinitionVersion": 1},
            "context": {"source": "WORKFLOWS", "workflowId": 1},
            "object": {"objectId": 1, "objectType": "CONTACT"},
            "inputFields": {},
        }
    ).encode()


def documented_path() -> list[str]:
    section = DOC.read_text().split("<!-- action-path -->")[1].split("<!-- /action-path -->")[0]
    rows = [line.strip() for line in section.splitlines()]
    return [row.split("`")[1] for row in rows if row[:1].isdigit()]


@contextmanager
def modules_on_the_path() -> Iterator[list[str]]:
    """Record the modules entered on the action's behalf: inside a root, or in a task that a
    task working on the action started (a completion call runs in a task of its own)."""
    seen: list[str] = []
    working: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    loop = asyncio.get_running_loop()
    previous_factory = loop.get_task_factory()

    def task_factory(
        loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        parent = asyncio.current_task(loop)
        if parent is not None and parent in working:
            working.add(task)
        return task

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not (module == "throttle" or module.startswith("throttle.")):
            return
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return
        if task is None:
            return
        if frame.f_code.co_qualname in ROOTS:
            working.add(task)
        if task in working and module not in NOT_COUNTED and module not in seen:
            seen.append(module)

    loop.set_task_factory(task_factory)
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)
        loop.set_task_factory(previous_factory)


async def test_one_action_passes_through_the_documented_modules(
    start_simulator: StartSimulator,
    make_settings: Any,
    database_url: str,
    redis: Any,
    serve_webhook: ServeWebhook,
) -> None:
    await migrate(database_url)
    settings = make_settings(database_url=database_url)
    secret = settings.hubspot_client_secret.get_secret_value()
    sim = await start_simulator(client_id=settings.hubspot_client_id, client_secret=secret)
    settings = make_settings(
        database_url=database_url,
        hubspot_api_base=sim.url,
        hubspot_app_base=sim.url,
        dispatcher_min_hold_seconds=0,
    )
    await serve_webhook(settings)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    url = settings.public_url
    assert url is not None
    assert settings.throttle_api_token is not None
    bearer = {"Authorization": f"Bearer {settings.throttle_api_token.get_secret_value()}"}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            # The portal installs the app (OAuth) and an operator creates its default policy.
            async with session.get(url + "/api/oauth/authorize", allow_redirects=False) as r:
                authorize = r.headers["Location"]
            async with session.get(f"{authorize}&portal_id={PORTAL}", allow_redirects=False) as r:
                callback = r.headers["Location"]
            assert urlsplit(callback).path == "/api/oauth/callback"
            async with session.get(callback) as r:
                assert r.status == 200, await r.text()
            spec = {"portalId": PORTAL, "rate": {"limit": 10, "period": "1s"}}
            async with session.post(url + "/api/config", json=spec, headers=bearer) as r:
                assert r.status == 201, await r.text()
            queue = Queue(redis, lease_seconds=30)
            completer = build_completer(
                settings, session, redis, pool, Metrics(CollectorRegistry())
            )
            dispatcher = Dispatcher(queue, completer, Metrics(CollectorRegistry()))
            action_url = url + "/api/hubspot/action"

            async def one_action(callback_id: str) -> None:
                sim.sim.register_callback(callback_id, PORTAL, 7)
                body = action_body(callback_id)
                now_ms = int(time.time() * 1000)
                headers = {
                    "Content-Type": "application/json",
                    "X-HubSpot-Signature-v3": sign_v3(secret, "POST", action_url, body, now_ms),
                    "X-HubSpot-Request-Timestamp": str(now_ms),
                }
                async with session.post(action_url, data=body, headers=headers) as r:
                    answer = await r.json()
                assert answer["outputFields"]["hs_execution_state"] == "BLOCK", answer
                sim.sim.record_answer(callback_id, "BLOCK")
                deadline = time.monotonic() + 5
                while await dispatcher.step() == 0:  # the policy's rate spaces releases
                    assert time.monotonic() < deadline, f"{callback_id} was never released"
                    await asyncio.sleep(0.02)
                await dispatcher.wait_idle()

            # The product has been running: the first action of a portal fills what is kept in
            # memory (the request URL, the decrypted token, the BLOCK answer's bytes). The path
            # a reader follows is the one every later action takes.
            await one_action("ap-path-0")
            with modules_on_the_path() as seen:
                await one_action("ap-path-1")
            # Judged from HubSpot's side: each completed, once.
            assert [c.callback_id for c in sim.sim.completions] == ["ap-path-0", "ap-path-1"]
    finally:
        await pool.close()
    print("\n".join(seen))
    assert seen == documented_path(), (
        "docs/architecture.md's path of one action is stale; the action passed through:\n"
        + "\n".join(f"{i}. `{m}`" for i, m in enumerate(seen, 1))
    )
