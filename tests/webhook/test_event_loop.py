"""How `serve()` runs the app: on uvloop (`app.new_event_loop`), with the start-up heap frozen.

The test client runs on asyncio's own loop, so without these tests nothing would notice a
transport or protocol that only works on one of the two (the auto-pipeline's did not)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.webhook import ACTION_PATH, execution, policy
from throttle.engine.registry import reconcile
from throttle.hubspot.signatures import sign_v3
from throttle.settings import Settings
from throttle.webhook_service.app import create_app, freeze_heap, new_event_loop, run_webhook
from throttle.webhook_service.appkeys import POLICY_INDEX, QUEUE
from throttle_dev.localenv import free_port


async def test_the_start_up_heap_is_frozen_out_of_the_cyclic_gc() -> None:
    before = gc.get_freeze_count()
    try:
        await freeze_heap(web.Application())
        assert gc.get_freeze_count() > max(before, 10_000)
    finally:
        gc.unfreeze()  # the rest of the test session keeps its normal collector


async def test_a_start_that_fails_half_way_closes_what_it_opened(
    make_settings: Callable[..., Settings], redis: Any, tmp_path: Any
) -> None:
    """The cluster policy store cannot start without Kubernetes credentials; by then Redis is
    open and the policy index refreshes in the background: both must be closed."""
    settings = make_settings(
        config_backend="cluster", kubeconfig=str(tmp_path / "missing"), port=free_port()
    )
    clients_before = len(await redis.client_list())
    with pytest.raises(Exception, match="kube-config"):
        await run_webhook(settings, handle_signals=False)
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "policy index"]
    assert len(await redis.client_list()) == clients_before


def test_serve_uses_uvloop() -> None:
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_actions_are_queued_and_answered_on_uvloop(
    make_settings: Callable[..., Settings], redis_server: Any
) -> None:
    port = free_port()
    settings = make_settings(
        require_installed_portal=False, port=port, public_url=f"http://127.0.0.1:{port}"
    )
    secret = settings.client_secrets[0]

    async def scenario() -> tuple[list[int], list[Any], int]:
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            p = policy(expiration="P3D")
            await reconcile(app[QUEUE], p)
            await app[POLICY_INDEX].refresh()
            url = f"http://127.0.0.1:{port}{ACTION_PATH}"
            async with aiohttp.ClientSession() as session:

                async def post(i: int) -> tuple[int, Any]:
                    body = json.dumps(execution(f"cb-{i % 10}")).encode()
                    ts = int(time.time() * 1000)
                    headers = {
                        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
                        "X-HubSpot-Request-Timestamp": str(ts),
                        "Content-Type": "application/json",
                    }
                    async with session.post(url, data=body, headers=headers) as response:
                        return response.status, await response.json()

                answers = await asyncio.gather(*(post(i) for i in range(20)))
            depth = (await app[QUEUE].stats(p)).depth
        finally:
            await runner.cleanup()
        return [s for s, _ in answers], [b for _, b in answers], depth

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        # Bounded: a transport that breaks on uvloop leaves the Redis replies unanswered.
        statuses, bodies, depth = runner.run(asyncio.wait_for(scenario(), 30))
    assert statuses == [200] * 20
    assert all(
        b == {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P3D"}}
        for b in bodies
    )
    assert depth == 10, "ten distinct callback ids, each queued once (duplicates answered BLOCK)"
