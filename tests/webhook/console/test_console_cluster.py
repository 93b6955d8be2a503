"""Pause and resume from the console in a cluster: a merge patch of the ThrottlePolicy's
`spec.paused` (nothing else of the resource changes), put in force by the real operator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.console import PORTAL_A, StartConsole, parse_html
from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import OperatorThread
from throttle.engine.queue_status import StatusReader

pytestmark = pytest.mark.kube

CRD = Path(__file__).resolve().parents[3] / "deploy" / "crds" / "throttlepolicies.yaml"


@pytest.fixture(scope="session")
def policy_crd(kube: KubeEnv) -> None:
    kube.apply(CRD)
    kube.wait_crd_established("throttlepolicies.throttle.dev")


def _spec(kube: KubeEnv, namespace: str) -> dict[str, Any]:
    obj = kube.kubectl_json("get", "throttlepolicy", "enrichment", "-n", namespace)
    spec: dict[str, Any] = obj["spec"]
    return spec


async def _paused(redis: Any) -> bool:
    [policy] = await StatusReader(redis).policies(PORTAL_A)
    return policy.paused


async def test_pause_patches_spec_paused_only(
    start_console: StartConsole,
    kube: KubeEnv,
    namespace: str,
    policy_crd: None,
    start_operator: Callable[..., OperatorThread],
    redis: Any,
) -> None:
    start_operator()
    stack = await start_console(
        config_backend="cluster", config_namespace=namespace, kubeconfig=str(kube.kubeconfig)
    )
    kube.apply(
        {
            "apiVersion": "throttle.dev/v1beta1",
            "kind": "ThrottlePolicy",
            "metadata": {"name": "enrichment"},
            "spec": {
                "portalId": PORTAL_A,
                "rate": {"limit": 5, "period": "1m"},
                "dailyCap": {"limit": 100},
                "onDelete": "Succeed",
            },
        },
        namespace=namespace,
    )
    before = _spec(kube, namespace)
    reader = StatusReader(redis)
    for _ in range(100):  # the operator reconciles it
        if await reader.policies(PORTAL_A):
            break
        await asyncio.sleep(0.1)
    operator = await stack.enter(PORTAL_A, "operator", name="ops")
    path = f"/console/portals/{PORTAL_A}/queues/enrichment"
    csrf = await stack.csrf(operator, path)
    async with operator.post(path + "/pause", data={"csrf_token": csrf}) as r:
        assert r.status == 200, await r.text()
        assert parse_html(await r.text()).has_id("resume-form")
    assert _spec(kube, namespace) == {**before, "paused": True}
    assert await _paused(redis)
    async with operator.post(path + "/resume", data={"csrf_token": csrf}) as r:
        assert r.status == 200, await r.text()
    assert _spec(kube, namespace) == {**before, "paused": False}
    assert not await _paused(redis)
