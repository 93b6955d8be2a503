"""The simulator signs like HubSpot: HubSpot's own SDK accepts its v3 signatures, and the shared
helpers reproduce the contract's published v2 test vectors."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from hubspot.utils.signature import Signature

from throttle.hubspot.signatures import sign_v2, verify
from throttle_dev.simulator import Driver, Simulator, SimulatorConfig, TrafficPlan

V2_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"


def test_v2_published_vectors() -> None:
    assert (
        sign_v2(V2_SECRET, "GET", "https://www.example.com/webhook_uri", b"")
        == "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
    )
    assert (
        sign_v2(
            V2_SECRET,
            "POST",
            "https://www.example.com/webhook_uri",
            b'{"example_field":"example_value"}',
        )
        == "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
    )


async def _capture(aiohttp_server: Any, path: str) -> tuple[list[dict[str, Any]], str]:
    seen: list[dict[str, Any]] = []

    async def action(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "body": await request.read()})
        return web.json_response(
            {"outputFields": {"hs_execution_state": "BLOCK", "hs_expiration_duration": "P1D"}}
        )

    app = web.Application()
    app.router.add_post("/api/hubspot/action", action)
    server = await aiohttp_server(app)
    return seen, str(server.make_url(path))


async def test_simulator_v3_signatures_verify_with_hubspot_sdk(aiohttp_server: Any) -> None:
    # A query string with escapes HubSpot decodes for v3 (%3A, %2F) exercises the URL rule too.
    seen, url = await _capture(aiohttp_server, "/api/hubspot/action?next=a%3Ab%2Fc&x=1")
    sim = Simulator(SimulatorConfig(client_secret="s3cr3t-client"))
    async with Driver(sim, url) as driver:
        result = await driver.run(TrafficPlan(executions=5, portals=[7, 8]))
    assert result.answers == {"BLOCK": 5}
    assert len(seen) == 5
    decoded_url = url.replace("%3A", ":").replace("%2F", "/")
    for request in seen:
        headers, body = request["headers"], request["body"]
        assert "\\u00eb" in body.decode()  # non-ASCII arrives escaped, as HubSpot sends it
        assert Signature.is_valid(
            signature=headers["X-HubSpot-Signature-v3"],
            client_secret="s3cr3t-client",
            request_body=body.decode(),
            http_uri=decoded_url,
            http_method="POST",
            signature_version="v3",
            timestamp=headers["X-HubSpot-Request-Timestamp"],
        )
        check = verify(headers, "POST", url, body, ["s3cr3t-client"], int(time.time() * 1000))
        assert check.ok, check.reason
        assert not verify(headers, "POST", url, body, ["other"], int(time.time() * 1000)).ok
        payload = json.loads(body)
        assert payload["origin"]["portalId"] in (7, 8)
        assert payload["callbackId"] in sim.callbacks


async def test_simulator_v2_signatures_verify_with_hubspot_sdk(aiohttp_server: Any) -> None:
    seen, url = await _capture(aiohttp_server, "/api/hubspot/action")
    sim = Simulator(SimulatorConfig(client_secret="v2-secret"))
    async with Driver(sim, url) as driver:
        await driver.run(TrafficPlan(executions=2, signature_version="v2"))
    for request in seen:
        headers, body = request["headers"], request["body"]
        assert headers["X-HubSpot-Signature-Version"] == "v2"
        assert Signature.is_valid(
            signature=headers["X-HubSpot-Signature"],
            client_secret="v2-secret",
            request_body=body.decode(),
            http_uri=url,
            http_method="POST",
            signature_version="v2",
        )


async def test_driver_sends_a_record_priority_property_as_the_priority_field(
    aiohttp_server: Any,
) -> None:
    """A workflow mapping the record's `hs_priority` to the action's `priority` field: HubSpot
    sends the record's value in `inputFields`; without `priorities` no field is sent."""
    seen, url = await _capture(aiohttp_server, "/api/hubspot/action")
    sim = Simulator(SimulatorConfig(client_secret="s3cr3t-client"))
    async with Driver(sim, url) as driver:
        plan = TrafficPlan(executions=4, concurrency=1, priorities=["HIGH", "NONE"], policy="p")
        await driver.run(plan)
        await driver.run(TrafficPlan(executions=1))
    bodies = [json.loads(r["body"]) for r in seen]
    sent = sorted(b["inputFields"].get("priority", "-") for b in bodies)
    assert sent == ["-", "HIGH", "HIGH", "NONE", "NONE"]
    for body in bodies[:4]:
        assert body["inputFields"]["priority"] == body["object"]["properties"]["hs_priority"]
    assert "priority" not in bodies[4]["inputFields"]
