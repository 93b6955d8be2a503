"""The operator against a real kube-apiserver and a real Redis, running as its ServiceAccount.

Each test starts the operator (`throttle.operator.operator_process.run`, in a thread) with a token
of the ServiceAccount bound to deploy/rbac/operator-role.yaml, watching the test's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import (
    OPERATOR_NS,
    REPO,
    OperatorThread,
    eventually,
    policy_manifest,
)
from throttle.engine import keys
from throttle.engine.manifests import load_folder, policy_from_resource
from throttle.engine.policy import Policy
from throttle.engine.queue import Queue, QueueItem
from throttle_dev.localenv import RedisServer, free_port

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("throttle_crd")]


def get_tp(kube: KubeEnv, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.kubectl_json("get", "tp", name, "-n", namespace))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def events(kube: KubeEnv, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return [(e["type"], e["reason"], e.get("message", "")) for e in items]


def reasons(kube: KubeEnv, namespace: str, name: str) -> list[str]:
    return [r for _, r, _ in events(kube, namespace, name)]


def patch_spec(kube: KubeEnv, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl(
        "patch", "tp", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        return dict(json.loads(resp.read()))


def item(callback_id: str, portal_id: int = 1234) -> QueueItem:
    return QueueItem(
        callback_id=callback_id,
        portal_id=portal_id,
        action_definition_id=1,
        workflow_id=7,
        object_type="CONTACT",
        object_id="1",
        received_at=time.time(),
    )


async def test_apply_edit_status_and_columns(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    op = start_operator()
    kube.apply(policy_manifest("orders", rate={"limit": 10, "period": "1m"}), namespace=namespace)
    applied_at = time.monotonic()
    params_key = keys.params("1234:orders")

    # Apply: parameters in Redis within 2 s.
    await eventually(lambda: redis.exists(params_key), timeout=2)
    assert time.monotonic() - applied_at < 2
    assert await redis.hget(params_key, "lim") == b"10"
    ready = await eventually(
        lambda: condition(get_tp(kube, namespace, "orders"), "Ready").get("status") == "True"
    )
    assert ready
    tp = get_tp(kube, namespace, "orders")
    assert tp["status"]["observedGeneration"] == 1
    assert tp["status"]["policy"] == "1234:orders"
    assert tp["status"]["queueDepth"] == 0
    assert condition(tp, "Degraded")["status"] == "False"
    assert "throttle.dev/finalizer" in tp["metadata"]["finalizers"]

    # Edit: the next take uses the new spec; observedGeneration follows.
    queue = Queue(redis)
    policy = policy_from_resource(tp)
    patch_spec(kube, namespace, "orders", {"paused": True, "rate": {"limit": 20}})
    await eventually(lambda: redis.hget(params_key, "paused"), timeout=2)
    await eventually(lambda: get_tp(kube, namespace, "orders")["status"]["observedGeneration"] == 2)
    assert await redis.hget(params_key, "lim") == b"20"
    for n in range(3):
        await queue.enqueue(item(f"cb-{n}"), policy.model_copy(update={"paused": True}))
    assert (await queue.take()).released == []  # paused: nothing goes
    patch_spec(kube, namespace, "orders", {"paused": False})
    await eventually(lambda: _is(redis.hget(params_key, "paused"), b"0"), timeout=2)
    released = (await queue.take()).released
    assert [r.callback_id for r in released][:1] == ["cb-0"]  # resumed: the next take releases
    await queue.ack(released)

    # Status follows the queue, and `kubectl get tp` shows it in the printer columns.
    await eventually(
        lambda: get_tp(kube, namespace, "orders")["status"]["queueDepth"] == 3 - len(released)
    )
    table = kube.kubectl("get", "tp", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PORTAL",
        "ACTION",
        "RATE",
        "QUEUED",
        "IN",
        "FLIGHT",
        "READY",
        "AGE",
    ]
    row = table[1].split()
    assert row[:2] == ["orders", "1234"]
    assert "20/1m+1" in row  # the burst in force: 1, releases are 3 s apart
    assert "True" in row
    assert (kube.kubectl("get", "throttle", "-n", namespace).stdout.split("\n")[1]).startswith(
        "orders"
    )

    # Events for what changed; routine status refreshes post nothing.
    names = reasons(kube, namespace, "orders")
    assert names.count("Applied") == 3  # create, edit, resume
    assert "Paused" in names
    assert "Resumed" in names
    assert op.reconciles("written") == 3


async def test_a_v1alpha1_resource_is_reconciled(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    """The operator watches the storage version (v1beta1); a resource applied as the
    deprecated v1alpha1 is the same object, reconciled and given a status."""
    start_operator()
    manifest = policy_manifest("legacy", rate={"limit": 7, "period": "1m"})
    manifest["apiVersion"] = "throttle.dev/v1alpha1"
    kube.apply(manifest, namespace=namespace)
    await eventually(lambda: redis.exists(keys.params("1234:legacy")), timeout=5)
    assert await redis.hget(keys.params("1234:legacy"), "lim") == b"7"
    assert await eventually(
        lambda: condition(get_tp(kube, namespace, "legacy"), "Ready").get("status") == "True"
    )


async def _is(awaitable: Any, expected: Any) -> bool:
    return bool(await awaitable == expected)


async def test_invalid_time_zone_is_reported_and_changes_nothing(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    start_operator()
    manifest = policy_manifest("tz", dailyCap={"limit": 100, "timeZone": "Mars/Olympus_Mons"})
    kube.apply(manifest, namespace=namespace)
    tp = await eventually(
        lambda: (
            (t := get_tp(kube, namespace, "tz"))
            and condition(t, "Degraded").get("status") == "True"
            and t
        )
    )
    degraded = condition(tp, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.dailyCap.timeZone" in degraded["message"]
    assert condition(tp, "Ready")["status"] == "False"
    warnings = await eventually(
        lambda: [e for e in events(kube, namespace, "tz") if e[1] == "InvalidSpec"]
    )
    assert warnings[0][0] == "Warning"
    assert "spec.dailyCap.timeZone" in warnings[0][2]
    assert "IANA" in warnings[0][2]
    assert not await redis.exists(keys.params("1234:tz"))

    patch_spec(kube, namespace, "tz", {"dailyCap": {"limit": 100, "timeZone": "Europe/Paris"}})
    await eventually(lambda: redis.exists(keys.params("1234:tz")), timeout=3)
    tp = await eventually(
        lambda: (
            (t := get_tp(kube, namespace, "tz"))
            and condition(t, "Ready").get("status") == "True"
            and t
        )
    )
    assert condition(tp, "Degraded")["status"] == "False"
    assert tp["status"]["observedGeneration"] == 2


@pytest.mark.parametrize(("mode", "state"), [("Succeed", "SUCCESS"), ("Fail", "FAIL_CONTINUE")])
async def test_delete_completes_queued_executions_then_lets_go(
    kube: KubeEnv,
    namespace: str,
    redis: Any,
    start_operator: Callable[..., OperatorThread],
    mode: str,
    state: str,
) -> None:
    start_operator()
    kube.apply(
        policy_manifest("gone", onDelete=mode, rate={"limit": 1, "period": "1h"}),
        namespace=namespace,
    )
    await eventually(lambda: redis.exists(keys.params("1234:gone")), timeout=2)
    queue = Queue(redis)
    policy = Policy.model_validate(
        {"name": "gone", "portalId": 1234, "rate": {"limit": 1, "period": "1h"}}
    )
    for n in range(5):
        await queue.enqueue(item(f"g-{n}"), policy)
    first = (await queue.take()).released  # the rate lets one out; it is in flight
    assert len(first) == 1

    kube.kubectl("delete", "tp", "gone", "-n", namespace, "--wait=false")
    # The finalizer holds the resource while anything is queued or in flight.
    tp = await eventually(
        lambda: (
            (t := get_tp(kube, namespace, "gone"))
            and condition(t, "Ready").get("reason") == "Draining"
            and t
        )
    )
    assert tp["metadata"].get("deletionTimestamp")
    # Everything still queued is handed to the dispatcher at once, with the chosen state.
    rest = await eventually(lambda: queue.take())
    assert sorted(r.callback_id for r in rest.released) == [f"g-{n}" for n in range(1, 5)]
    assert {r.execution_state for r in rest.released} == {state}
    await asyncio.sleep(1.5)
    assert kube.kubectl("get", "tp", "gone", "-n", namespace, check=False).returncode == 0
    await queue.ack(first + rest.released)
    # Nothing left: the finalizer lets go and no key of the policy remains.
    await eventually(
        lambda: kube.kubectl("get", "tp", "gone", "-n", namespace, check=False).returncode != 0
    )
    leftover = [k async for k in redis.scan_iter(match="throttle:*1234:gone*")]
    assert leftover == []
    names = reasons(kube, namespace, "gone")
    assert "Retiring" in names
    assert "Retired" in names


async def test_delete_drains_at_the_old_rate(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    start_operator()
    kube.apply(policy_manifest("drain", rate={"limit": 2, "period": "1s"}), namespace=namespace)
    await eventually(lambda: redis.exists(keys.params("1234:drain")), timeout=2)
    queue = Queue(redis)
    policy = Policy.model_validate(
        {"name": "drain", "portalId": 1234, "rate": {"limit": 2, "period": "1s"}}
    )
    for n in range(6):
        await queue.enqueue(item(f"d-{n}"), policy)
    kube.kubectl("delete", "tp", "drain", "-n", namespace, "--wait=false")
    await eventually(
        lambda: condition(get_tp(kube, namespace, "drain"), "Ready").get("reason") == "Draining"
    )
    released: list[Any] = []
    started = time.monotonic()
    while len(released) < 6 and time.monotonic() - started < 10:
        batch = (await queue.take()).released
        assert {r.execution_state for r in batch} <= {"SUCCESS"}  # completed as usual
        released += batch
        await queue.ack(batch)
        await asyncio.sleep(0.2)
    assert [r.callback_id for r in released] == [f"d-{n}" for n in range(6)]
    assert time.monotonic() - started >= 1.5  # at the policy's rate, not at once
    await eventually(
        lambda: kube.kubectl("get", "tp", "drain", "-n", namespace, check=False).returncode != 0
    )


async def test_redis_flush_restores_parameters(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    op = start_operator()
    kube.apply(policy_manifest("keep", rate={"limit": 7}), namespace=namespace)
    await eventually(lambda: redis.exists(keys.params("1234:keep")), timeout=2)
    await redis.flushall()
    lost_at = time.monotonic()
    await eventually(lambda: redis.exists(keys.params("1234:keep")), timeout=5)
    assert time.monotonic() - lost_at < 3
    assert await redis.hget(keys.params("1234:keep"), "lim") == b"7"
    assert await redis.hexists(keys.REGISTRY, "1234:keep")
    await eventually(lambda: "ParametersRestored" in reasons(kube, namespace, "keep"))
    assert op.gauge("throttle_operator_restores_total") == 1


async def test_restart_does_no_duplicate_work(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    first = start_operator("op-first")
    kube.apply(policy_manifest("steady"), namespace=namespace)
    await eventually(
        lambda: condition(get_tp(kube, namespace, "steady"), "Ready").get("status") == "True"
    )
    params_before = await redis.hgetall(keys.params("1234:steady"))
    rev_before = await redis.get(keys.REGISTRY_REV)
    first.stop()

    second = start_operator("op-second")
    await eventually(lambda: second.reconciles("unchanged") >= 1)  # resumed, found all in place
    await asyncio.sleep(1.5)  # a status refresh or two
    assert second.reconciles("written") == 0
    assert await redis.hgetall(keys.params("1234:steady")) == params_before
    assert await redis.get(keys.REGISTRY_REV) == rev_before
    assert reasons(kube, namespace, "steady").count("Applied") == 1
    # Nothing changes, so status refreshes (every second here) send no patches at all.
    patches = second.gauge("throttle_operator_status_patches_total")
    await asyncio.sleep(2.5)
    assert second.gauge("throttle_operator_status_patches_total") == patches


async def test_two_replicas_exactly_one_acts(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    port_a, port_b = free_port(), free_port()
    a = start_operator("op-a", metrics_port=port_a, host="127.0.0.1")
    b = start_operator("op-b", ready=False, metrics_port=port_b, host="127.0.0.1")
    await asyncio.sleep(1.5)
    assert a.leader
    assert not b.leader
    assert not b.ready.is_set()
    assert health(port_a)["role"] == "leader"
    assert health(port_b)["role"] == "standby"  # alive and serving while it waits
    kube.apply(policy_manifest("one", rate={"limit": 5}), namespace=namespace)
    await eventually(lambda: redis.exists(keys.params("1234:one")), timeout=2)
    await eventually(lambda: a.reconciles("written") == 1)
    assert b.reconciles("written") + b.reconciles("unchanged") == 0

    a.stop()  # a graceful stop hands the Lease over at once
    b.wait_ready(timeout=10)
    assert b.leader
    assert not a.leader
    assert health(port_b)["role"] == "leader"
    patch_spec(kube, namespace, "one", {"rate": {"limit": 6}})
    await eventually(lambda: _is(redis.hget(keys.params("1234:one"), "lim"), b"6"), timeout=3)
    # the counter moves just after the write Redis already shows
    await eventually(lambda: b.reconciles("written") == 1)
    assert a.reconciles("written") == 1


async def test_same_policy_from_two_resources_is_a_conflict(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    start_operator()
    kube.apply(policy_manifest("first", name="shared", rate={"limit": 3}), namespace=namespace)
    await eventually(lambda: redis.exists(keys.params("1234:shared")), timeout=2)
    await eventually(
        lambda: condition(get_tp(kube, namespace, "first"), "Ready").get("status") == "True"
    )
    kube.apply(policy_manifest("second", name="shared", rate={"limit": 99}), namespace=namespace)
    second = await eventually(
        lambda: (
            (t := get_tp(kube, namespace, "second"))
            and condition(t, "Degraded").get("reason") == "Conflict"
            and t
        )
    )
    assert "first" in condition(second, "Degraded")["message"]
    assert await redis.hget(keys.params("1234:shared"), "lim") == b"3"  # the older one holds
    assert "Conflict" in reasons(kube, namespace, "second")

    # The first goes away: the second takes over on its next status refresh.
    kube.kubectl("delete", "tp", "first", "-n", namespace)
    await eventually(lambda: _is(redis.hget(keys.params("1234:shared"), "lim"), b"99"), timeout=5)
    await eventually(
        lambda: condition(get_tp(kube, namespace, "second"), "Ready").get("status") == "True"
    )


async def test_redis_down_then_back(
    kube: KubeEnv,
    namespace: str,
    redis: Any,
    redis_server: RedisServer,
    start_operator: Callable[..., OperatorThread],
) -> None:
    start_operator()
    redis_server.stop()
    try:
        kube.apply(policy_manifest("later"), namespace=namespace)
        tp = await eventually(
            lambda: (
                (t := get_tp(kube, namespace, "later"))
                and condition(t, "Degraded").get("reason") == "RedisUnavailable"
                and t
            )
        )
        assert condition(tp, "Ready")["status"] == "False"
    finally:
        redis_server.start()
    await eventually(
        lambda: condition(get_tp(kube, namespace, "later"), "Ready").get("status") == "True",
        timeout=15,
    )
    fresh = redis_server.client()  # the test's own connection died with the server
    try:
        assert await fresh.exists(keys.params("1234:later"))
    finally:
        await fresh.aclose()
    assert "RedisUnavailable" in reasons(kube, namespace, "later")


async def test_every_example_becomes_ready(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    start_operator()
    kube.apply(REPO / "deploy" / "examples", namespace=namespace)
    expected = {m.key for m in load_folder(REPO / "deploy" / "examples")}

    def ready() -> bool:
        items = kube.kubectl_json("get", "tp", "-n", namespace)["items"]
        return len(items) == len(expected) and all(
            condition(t, "Ready").get("status") == "True" for t in items
        )

    await eventually(ready, timeout=15)
    assert set(map(bytes.decode, await redis.hkeys(keys.REGISTRY))) == expected
    paused = get_tp(kube, namespace, "campaign-on-hold")
    assert condition(paused, "Ready")["reason"] == "Paused"


def test_throttle_operator_command_runs_and_stops_cleanly(
    kube: KubeEnv,
    namespace: str,
    redis_server: RedisServer,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """`throttle operator -n NS` as a pod runs it: leads, applies, SIGTERM → exit 0, Lease freed."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(operator_kubeconfig),
        "REDIS_URL": redis_server.url,
        "METRICS_PORT": str(port),
        "HOST": "127.0.0.1",
        "OPERATOR_LEASE_NAMESPACE": OPERATOR_NS,
        "OPERATOR_IDENTITY": "pod-1",
        "LOG_FORMAT": "text",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "throttle.cli.main", "operator", "-n", namespace],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sync = SyncRedis.from_url(redis_server.url)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if health(port)["role"] == "leader":
                    break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "never became the leader"
            time.sleep(0.2)
        kube.apply(policy_manifest("from-cli"), namespace=namespace)
        deadline = time.monotonic() + 5
        while not sync.exists(keys.params("1234:from-cli")):
            assert time.monotonic() < deadline, "not applied"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        sync.close()
    assert proc.returncode == 0, out
    lease = kube.kubectl_json("get", "lease", "throttle-operator", "-n", OPERATOR_NS)
    assert lease["spec"].get("holderIdentity") is None


def status_writes(kube: KubeEnv) -> int:
    """Status patches of ThrottlePolicies the API server has served so far (its own count)."""
    return kube.write_requests()["PATCH throttlepolicies/status"]


async def test_status_writes_only_on_change_within_the_budget(
    kube: KubeEnv, namespace: str, redis: Any, start_operator: Callable[..., OperatorThread]
) -> None:
    """Counted from the API server's side: idle policies cost no status writes at all, and
    busy ones (figures that move every second) no more than OPERATOR_STATUS_WRITES_PER_SECOND,
    however many there are; a timer per resource patched each of them every interval."""
    start_operator(operator_status_writes_per_second=2)  # a status round every second
    names = [f"busy-{n}" for n in range(20)]
    kube.apply([policy_manifest(n, rate={"limit": 1, "period": "1h"}) for n in names], namespace)

    def all_ready() -> bool:
        items = kube.kubectl_json("get", "tp", "-n", namespace)["items"]
        return len(items) == len(names) and all(
            condition(t, "Ready").get("status") == "True" for t in items
        )

    await eventually(all_ready, timeout=30)
    await asyncio.sleep(1)  # the last handler's patch lands
    before = status_writes(kube)
    await asyncio.sleep(4)
    assert status_writes(kube) == before  # idle: four rounds, nothing written

    # One queued execution each: its age ticks every second, so every round finds all changed.
    queue = Queue(redis)
    for n in names:
        tp = get_tp(kube, namespace, n)
        await queue.enqueue(item(f"cb-{n}"), policy_from_resource(tp))
    before, started = status_writes(kube), time.monotonic()
    await asyncio.sleep(5)
    written = status_writes(kube) - before
    elapsed = time.monotonic() - started
    assert 0 < written <= 2 * elapsed + 2, written  # 20 moving policies, 2 writes a second
    # The stalest go first, so within the budget every resource gets its turn.
    await eventually(
        lambda: all(get_tp(kube, namespace, n)["status"]["queueDepth"] == 1 for n in names),
        timeout=20,
    )
