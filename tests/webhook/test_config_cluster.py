"""The config API's cluster mode against a real kube-apiserver: ThrottlePolicy resources, put
in force by the real operator (run as its ServiceAccount, as in tests/operator/) before the
config API answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import OperatorThread, wait_for
from tests.fixtures.webhook import PORTAL, StartWebhook, Webhook, execution
from throttle.webhook_service import config_api
from throttle.webhook_service.appkeys import POLICY_INDEX
from throttle.webhook_service.config_store import resource_name

pytestmark = pytest.mark.kube

CRD = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "throttlepolicies.yaml"


@pytest.fixture(scope="session")
def crd(kube: KubeEnv) -> None:
    kube.apply(CRD)
    kube.wait_crd_established("throttlepolicies.throttle.dev")


@pytest.fixture
async def api(
    start_webhook: StartWebhook,
    kube: KubeEnv,
    namespace: str,
    crd: None,
    start_operator: Callable[..., OperatorThread],
) -> Webhook:
    start_operator()
    return await start_webhook(
        config_backend="cluster", config_namespace=namespace, kubeconfig=str(kube.kubeconfig)
    )


def auth(webhook: Webhook) -> dict[str, str]:
    assert webhook.settings.throttle_api_token is not None
    return {"Authorization": f"Bearer {webhook.settings.throttle_api_token.get_secret_value()}"}


def resources(kube: KubeEnv, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.kubectl_json("get", "throttlepolicies", "-n", namespace)[
        "items"
    ]
    return items


SPEC = {"portalId": PORTAL, "actionId": 42, "rate": {"limit": 100, "period": "1m"}}


async def test_create_patch_get_list_delete_resources(
    api: Webhook, kube: KubeEnv, namespace: str
) -> None:
    headers = auth(api)
    created = await api.client.post("/api/config", json=SPEC, headers=headers)
    assert created.status == 201, await created.text()
    [obj] = resources(kube, namespace)
    assert obj["metadata"]["name"] == resource_name(PORTAL, "action-42")
    assert obj["spec"]["name"] == "action-42"
    assert obj["spec"]["rate"]["limit"] == 100

    patched = await api.client.post(
        "/api/config", json={**SPEC, "rate": {"limit": 7, "period": "10s"}}, headers=headers
    )
    assert patched.status == 200
    [obj] = resources(kube, namespace)
    # written whole, with the burst in force (1: releases 1.4 s apart)
    assert obj["spec"]["rate"] == {"limit": 7, "period": "PT10S", "burst": 1}
    assert obj["metadata"]["generation"] == 2

    got = await api.client.get(f"/api/config/{PORTAL}/42", headers=headers)
    assert (await got.json())["rate"]["limit"] == 7
    default = await api.client.put(
        f"/api/config/{PORTAL}/default", json={"rate": {"limit": 3}}, headers=headers
    )
    assert default.status == 201
    listed = await api.client.get(f"/api/config?portalId={PORTAL}", headers=headers)
    assert [p["name"] for p in (await listed.json())["policies"]] == ["action-42", "default"]

    conflict = await api.client.post("/api/config", json={**SPEC, "name": "other"}, headers=headers)
    assert conflict.status == 409

    deleted = await api.client.delete(f"/api/config/{PORTAL}/42", headers=headers)
    assert deleted.status == 204
    assert api.app[POLICY_INDEX].get(PORTAL, "action-42") is None
    wait_for(lambda: [o["spec"]["name"] for o in resources(kube, namespace)] == ["default"])


async def test_resources_made_with_kubectl_are_found(
    api: Webhook, kube: KubeEnv, namespace: str
) -> None:
    kube.apply(
        {
            "apiVersion": "throttle.dev/v1beta1",
            "kind": "ThrottlePolicy",
            "metadata": {"name": "enrichment"},
            "spec": {"portalId": PORTAL, "rate": {"limit": 5, "period": "1m"}},
        },
        namespace=namespace,
    )
    headers = auth(api)
    got = await api.client.get(f"/api/config/{PORTAL}/policies/enrichment", headers=headers)
    assert got.status == 200
    assert (await got.json())["rate"]["limit"] == 5
    replaced = await api.client.put(
        f"/api/config/{PORTAL}/policies/enrichment",
        json={"rate": {"limit": 9, "period": "1m"}},
        headers=headers,
    )
    assert replaced.status == 200
    [obj] = resources(kube, namespace)
    assert obj["metadata"]["name"] == "enrichment"  # patched in place, not duplicated
    assert obj["spec"]["rate"]["limit"] == 9
    gone = await api.client.delete(f"/api/config/{PORTAL}/policies/enrichment", headers=headers)
    assert gone.status == 204
    wait_for(lambda: resources(kube, namespace) == [])  # the operator's finalizer lets it go


async def test_invalid_or_unauthorised_changes_nothing(
    api: Webhook, kube: KubeEnv, namespace: str
) -> None:
    bad = await api.client.post(
        "/api/config", json={**SPEC, "rate": {"limit": 5, "burst": 50}}, headers=auth(api)
    )
    assert bad.status == 400
    assert (await bad.json())["field"] == "rate.burst"
    anonymous = await api.client.post("/api/config", json=SPEC)
    assert anonymous.status == 401
    assert resources(kube, namespace) == []


async def test_answered_once_in_force_so_another_pod_holds_the_next_execution(
    api: Webhook, start_webhook: StartWebhook
) -> None:
    other = await start_webhook()  # another pod, which loaded the registry before the change
    await other.app[POLICY_INDEX].refresh()
    created = await api.client.post(
        "/api/config",
        json={"name": "fresh", "portalId": PORTAL, "rate": {"limit": 5, "period": "1s"}},
        headers=auth(api),
    )
    assert created.status == 201, await created.text()
    assert api.app[POLICY_INDEX].get(PORTAL, "fresh") is not None
    for pod in (other, api):
        _, body = await pod.post_action(execution(f"cb-{id(pod)}", inputFields={"policy": "fresh"}))
        assert body["outputFields"]["hs_execution_state"] == "BLOCK", body


async def test_without_the_operator_the_answer_says_not_in_force_yet(
    start_webhook: StartWebhook,
    kube: KubeEnv,
    namespace: str,
    crd: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_api, "IN_FORCE_TIMEOUT_S", 1.0)
    api = await start_webhook(
        config_backend="cluster", config_namespace=namespace, kubeconfig=str(kube.kubeconfig)
    )
    created = await api.client.post("/api/config", json=SPEC, headers=auth(api))
    assert created.status == 202  # stored as a resource; nobody put it in force
    assert (await created.json())["name"] == "action-42"
    assert [o["spec"]["name"] for o in resources(kube, namespace)] == ["action-42"]
