"""Plays HubSpot's workflow engine: sends signed executions to an action URL and judges answers.

Each execution is registered with the simulator before it is sent, so the simulator knows which
callbacks exist; the answer decides what HubSpot would do next: BLOCK (with a valid
`hs_expiration_duration`) keeps the callback open until completed or expired, a final state ends
it, 4xx fails it, and 429/5xx/timeouts are retried with the same callbackId (as HubSpot does).
A share of executions is delivered twice on purpose (`duplicate_ratio`), like HubSpot's retries.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp

from throttle.hubspot import signatures
from throttle_dev.simulator.state import Simulator

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_expiration(text: Any) -> float | None:
    """Seconds in a `PnD` / `PTnHnMnS` duration (the forms the contract allows), else None."""
    if not isinstance(text, str) or text in ("P", "PT") or text.endswith("T"):
        return None
    match = _DURATION.match(text)
    if match is None or not any(match.groups()):
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)


@dataclass
class TrafficPlan:
    """The shape of one run: how many executions, for which portals, how fast, how ugly."""

    executions: int = 100
    portals: list[int] = field(default_factory=lambda: [1001])
    rate_per_s: float = 0.0
    """Executions started per second; 0 means as fast as `concurrency` allows."""
    burst: int = 1
    """Executions started together at each tick of the rate."""
    duplicate_ratio: float = 0.0
    """Share of executions delivered a second time after their first answer."""
    concurrency: int = 32
    action_definition_id: int = 1
    policy: str | None = None
    object_type: str = "CONTACT"
    workflow_ids: list[int] = field(default_factory=lambda: [192814114])
    signature_version: Literal["v3", "v2"] = "v3"
    max_attempts: int = 5
    retry_backoff_s: float = 0.2
    timeout_s: float = 10.0
    extra_input_fields: dict[str, str] = field(default_factory=dict)
    priorities: list[str] = field(default_factory=list)
    """Values of the records' `hs_priority` property, in turn, sent as the action's `priority`
    field resolved from that property (a workflow mapping it); empty = no priority field."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrafficPlan:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown plan fields: {', '.join(sorted(unknown))}")
        plan = cls(**data)
        if plan.signature_version not in ("v3", "v2"):
            raise ValueError("signature_version must be v3 or v2")
        if plan.executions < 0 or plan.concurrency < 1 or not plan.portals:
            raise ValueError("executions >= 0, concurrency >= 1 and at least one portal")
        return plan


@dataclass
class DriveResult:
    sent: int = 0
    deliveries: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    gave_up: int = 0
    duplicates_sent: int = 0
    duplicate_answers: dict[str, int] = field(default_factory=dict)
    bad_answers: int = 0
    problems: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    elapsed_s: float = 0.0

    def problem(self, text: str) -> None:
        self.bad_answers += 1
        if len(self.problems) < 20:
            self.problems.append(text)

    def latency(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data["latency_ms"] = {
            "p50": self.latency(0.5),
            "p95": self.latency(0.95),
            "p99": self.latency(0.99),
            "max": round(max(self.latencies_ms, default=0.0), 2),
        }
        return data


class Driver:
    """Sends executions for the simulator's app; use as `async with Driver(sim, url) as d:`."""

    def __init__(
        self,
        sim: Simulator,
        action_url: str,
        session: aiohttp.ClientSession | None = None,
        client_secret: str | None = None,
        sign_url: str | None = None,
    ) -> None:
        self.sim = sim
        self.action_url = action_url
        self.sign_url = sign_url or action_url
        """The URL signatures cover: the action URL HubSpot knows (the webhook's PUBLIC_URL),
        when requests go elsewhere, e.g. straight to the webhook's Service inside a cluster."""
        self._client_secret = client_secret
        self._session = session
        self._owns_session = session is None
        self._sequence = 0

    @property
    def client_secret(self) -> str:
        """The secret requests are signed with: the one given, else the app's current one in
        HubSpot (a rotation there changes it mid-run)."""
        return self._client_secret or self.sim.config.client_secret

    @client_secret.setter
    def client_secret(self, secret: str | None) -> None:
        """Sign with `secret` from now on (None: follow the app's secret in HubSpot again)."""
        self._client_secret = secret

    async def __aenter__(self) -> Driver:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def payload(self, plan: TrafficPlan, portal_id: int, index: int) -> dict[str, Any]:
        """An execution request exactly as the contract shows it (non-ASCII included)."""
        self._sequence += 1
        workflow_id = plan.workflow_ids[index % len(plan.workflow_ids)]
        input_fields = dict(plan.extra_input_fields)
        if plan.policy is not None:
            input_fields["policy"] = plan.policy
        object_id = 900 + index
        properties = {"email": f"contact{object_id}@example.com", "firstname": "Zoë"}
        if plan.priorities:
            properties["hs_priority"] = plan.priorities[index % len(plan.priorities)]
            input_fields["priority"] = properties["hs_priority"]
        return {
            "callbackId": f"ap-{portal_id}-{uuid.uuid4().int % 10**11}-{self._sequence}-0",
            "origin": {
                "portalId": portal_id,
                "actionDefinitionId": plan.action_definition_id,
                "actionDefinitionVersion": 1,
            },
            "context": {"source": "WORKFLOWS", "workflowId": workflow_id},
            "object": {
                "objectId": object_id,
                "objectType": plan.object_type,
                "properties": properties,
            },
            "inputFields": input_fields,
        }

    def sign(self, body: bytes, version: str, url: str | None = None) -> dict[str, str]:
        """HubSpot's signature headers for a POST of `body` to `url` (the action URL)."""
        url = url or self.sign_url
        if version == "v2":
            return {
                "X-HubSpot-Signature": signatures.sign_v2(self.client_secret, "POST", url, body),
                "X-HubSpot-Signature-Version": "v2",
            }
        timestamp = int(time.time() * 1000)
        return {
            "X-HubSpot-Signature-v3": signatures.sign_v3(
                self.client_secret, "POST", url, body, timestamp
            ),
            "X-HubSpot-Request-Timestamp": str(timestamp),
        }

    async def deliver(
        self, plan: TrafficPlan, payload: dict[str, Any], result: DriveResult, duplicate: bool
    ) -> str | None:
        """Send one execution until HubSpot would stop retrying; returns the final answer."""
        assert self._session is not None, "use the driver as an async context manager"
        callback_id = payload["callbackId"]
        # HubSpot escapes non-ASCII in the JSON it sends; the signature covers these exact bytes.
        body = json.dumps(payload, ensure_ascii=True).encode()
        timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
        for attempt in range(plan.max_attempts):
            self.sim.register_callback(
                callback_id, payload["origin"]["portalId"], plan.action_definition_id
            )
            result.deliveries += 1
            headers = {
                "Content-Type": "application/json",
                **self.sign(body, plan.signature_version),
            }
            started = time.monotonic()
            try:
                async with self._session.post(
                    self.action_url, data=body, headers=headers, timeout=timeout
                ) as response:
                    status = response.status
                    text = await response.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, text = 0, type(exc).__name__
            result.latencies_ms.append((time.monotonic() - started) * 1000)
            if status == 429 or status >= 500 or status == 0:
                result.retries += 1
                await asyncio.sleep(plan.retry_backoff_s * (2**attempt))
                continue
            answer = self._judge(callback_id, status, text, result)
            bucket = result.duplicate_answers if duplicate else result.answers
            bucket[answer] = bucket.get(answer, 0) + 1
            return answer
        result.gave_up += 1
        return None

    def _judge(self, callback_id: str, status: int, text: str, result: DriveResult) -> str:
        """Record what HubSpot would make of this answer; return its state name."""
        if 400 <= status < 500:
            self.sim.record_answer(callback_id, "FAILED")
            return f"HTTP {status}"
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = None
        outputs = data.get("outputFields") if isinstance(data, dict) else None
        state = outputs.get("hs_execution_state") if isinstance(outputs, dict) else None
        if state is None:
            # A bare 2xx counts as success: the enrollment moves on unthrottled.
            result.problem(f"{callback_id}: HTTP {status} without hs_execution_state")
            self.sim.record_answer(callback_id, "SUCCESS")
            return "SUCCESS (no state)"
        if state not in ("BLOCK", "ASYNC", "SUCCESS", "FAIL_CONTINUE"):
            result.problem(f"{callback_id}: unknown hs_execution_state {state!r}")
            self.sim.record_answer(callback_id, "FAILED")
            return "INVALID"
        expiration = None
        if state == "BLOCK":
            raw = outputs.get("hs_expiration_duration") if isinstance(outputs, dict) else None
            if raw is not None:
                expiration = parse_expiration(raw)
                if expiration is None:
                    result.problem(f"{callback_id}: bad hs_expiration_duration {raw!r}")
        self.sim.record_answer(callback_id, state, expiration)
        return str(state)

    async def fetch_options(
        self,
        options_url: str,
        portal_id: int,
        action_definition_id: int = 1,
        query: str | None = None,
        after: str | None = None,
        signature_version: str = "v3",
    ) -> tuple[int, Any]:
        """POST what HubSpot sends to an input field's `optionsUrl`; (status, parsed answer)."""
        assert self._session is not None, "use the driver as an async context manager"
        payload = {
            "origin": {
                "portalId": portal_id,
                "actionDefinitionId": action_definition_id,
                "actionDefinitionVersion": 1,
            },
            "inputFieldName": "policy",
            "inputFields": {},
            "fetchOptions": {"q": query, "after": after},
        }
        body = json.dumps(payload, ensure_ascii=True).encode()
        headers = {"Content-Type": "application/json"}
        headers.update(self.sign(body, signature_version, options_url))
        async with self._session.post(options_url, data=body, headers=headers) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text

    async def run(self, plan: TrafficPlan) -> DriveResult:
        """Send `plan.executions` executions spread over the portals, at the plan's pace."""
        result = DriveResult()
        started = time.monotonic()
        gate = asyncio.Semaphore(plan.concurrency)
        tasks: list[asyncio.Task[None]] = []

        async def one(index: int) -> None:
            async with gate:
                portal_id = plan.portals[index % len(plan.portals)]
                payload = self.payload(plan, portal_id, index)
                result.sent += 1
                answer = await self.deliver(plan, payload, result, duplicate=False)
                if answer is not None and self.sim.random.random() < plan.duplicate_ratio:
                    result.duplicates_sent += 1
                    await self.deliver(plan, payload, result, duplicate=True)

        interval = plan.burst / plan.rate_per_s if plan.rate_per_s > 0 else 0.0
        for start in range(0, plan.executions, max(plan.burst, 1)):
            for index in range(start, min(start + max(plan.burst, 1), plan.executions)):
                tasks.append(asyncio.create_task(one(index)))
            if interval:
                next_tick = started + interval * (start // max(plan.burst, 1) + 1)
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            else:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        result.elapsed_s = round(time.monotonic() - started, 3)
        return result


async def send_uninstall(
    sim: Simulator,
    webhook_url: str,
    portal_id: int,
    session: aiohttp.ClientSession | None = None,
    occurred_at_ms: int | None = None,
) -> int:
    """POST the app-uninstall event for a portal to `webhook_url`, signed v3 like HubSpot webhooks.

    HubSpot documents no uninstall payload; Throttle's endpoint takes the webhook event shape:
    a JSON array of `{eventId, subscriptionType: "app.uninstall", portalId, appId, occurredAt}`.
    `occurred_at_ms` in the past is a late retry of an earlier uninstall (HubSpot retries
    webhook deliveries for hours), signed now as a retry would be.
    """
    now_ms = int(time.time() * 1000)
    events = [
        {
            "eventId": uuid.uuid4().int % 10**9,
            "subscriptionId": 0,
            "subscriptionType": "app.uninstall",
            "portalId": portal_id,
            "appId": sim.config.app_id,
            "occurredAt": now_ms if occurred_at_ms is None else occurred_at_ms,
            "attemptNumber": 0 if occurred_at_ms is None else 1,
        }
    ]
    body = json.dumps(events).encode()
    signature = signatures.sign_v3(sim.config.client_secret, "POST", webhook_url, body, now_ms)
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": str(now_ms),
    }
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.post(webhook_url, data=body, headers=headers) as response:
            return response.status
    finally:
        if own:
            await client.close()
