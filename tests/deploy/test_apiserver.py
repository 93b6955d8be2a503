"""The real kube-apiserver test environment does what the operator and chart tests rely on:
CRDs and watches, RBAC for service accounts, helm and kubectl of the built versions."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from tests.fixtures.kube_control_plane import KubeEnv

pytestmark = pytest.mark.kube

GROUP = "testenv.throttle.io"


@pytest.fixture
def widget_crd(kube: KubeEnv) -> Iterator[str]:
    """A namespaced CRD with a random plural (CRDs are cluster-wide; the session is shared)."""
    suffix = secrets.token_hex(3)
    plural = f"widgets{suffix}"
    name = f"{plural}.{GROUP}"
    kube.apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {
                    "plural": plural,
                    "singular": f"widget{suffix}",
                    "kind": f"Widget{suffix}",
                    "listKind": f"Widget{suffix}List",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {
                                            "rate": {"type": "integer", "minimum": 1, "default": 10}
                                        },
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    kube.wait_crd_established(name)
    try:
        yield plural
    finally:
        kube.kubectl("delete", "crd", name, "--wait=false", check=False)


def test_crd_object_create_watch_delete(kube: KubeEnv, namespace: str, widget_crd: str) -> None:
    crd = kube.kubectl_json("get", "crd", f"{widget_crd}.{GROUP}")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"

    api: Any = k8s.CustomObjectsApi(kube.api_client())
    # Watch from the list's resourceVersion: every change after it is delivered, however late
    # the watch connects.
    listed = api.list_namespaced_custom_object(GROUP, "v1", namespace, widget_crd)
    assert listed["items"] == []
    events: list[tuple[str, str]] = []
    w: Any = watch.Watch()  # type: ignore[no-untyped-call]

    def watcher() -> None:
        for event in w.stream(
            api.list_namespaced_custom_object,
            GROUP,
            "v1",
            namespace,
            widget_crd,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=30,
            _request_timeout=40,
        ):
            events.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()

    kind = crd["spec"]["names"]["kind"]
    created = api.create_namespaced_custom_object(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": kind,
            "metadata": {"name": "first"},
            "spec": {},
        },
    )
    assert created["spec"] == {"rate": 10}, "the structural schema's default was applied"
    api.delete_namespaced_custom_object(GROUP, "v1", namespace, widget_crd, "first")
    thread.join(30)
    assert not thread.is_alive(), f"watch did not see DELETED; events so far: {events}"
    assert events[0] == ("ADDED", "first")
    assert events[-1] == ("DELETED", "first")

    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(
            GROUP,
            "v1",
            namespace,
            widget_crd,
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": kind,
                "metadata": {"name": "bad"},
                "spec": {"rate": 0},
            },
        )
    assert err.value.status == 422, "schema validation (minimum: 1) is enforced"


def test_service_account_needs_rbac(kube: KubeEnv, namespace: str) -> None:
    kube.kubectl("create", "serviceaccount", "worker", "-n", namespace)
    worker = kube.impersonate(namespace, "worker")

    whoami = json.loads(worker.kubectl("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:worker"
    assert sorted(whoami["status"]["userInfo"]["groups"]) == sorted(worker.groups)

    core = k8s.CoreV1Api(worker.api_client())
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(namespace)
    assert err.value.status == 403
    denied = worker.kubectl("get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    kube.kubectl(
        "create",
        "role",
        "read-configmaps",
        "-n",
        namespace,
        "--verb=get,list,watch",
        "--resource=configmaps",
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "worker-reads-configmaps",
        "-n",
        namespace,
        "--role=read-configmaps",
        f"--serviceaccount={namespace}:worker",
    )

    # The RBAC authorizer reads roles from an informer cache: allow it a moment to catch up.
    _eventually(lambda: core.list_namespaced_config_map(namespace))
    worker.kubectl("get", "configmaps", "-n", namespace)
    # ...and only what the Role grants: no writes, nothing outside the namespace.
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="nope"))
        )
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map("default")
    assert err.value.status == 403


def _eventually(call: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as e:
            if e.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _server_version(kube: KubeEnv) -> dict[str, Any]:
    version: dict[str, Any] = json.loads(kube.kubectl("get", "--raw", "/version").stdout)
    return version


def test_kubectl_and_helm_run(kube: KubeEnv, namespace: str) -> None:
    version = _server_version(kube)
    assert re.fullmatch(r"v1\.\d+\.\d+.*", version["gitVersion"]), version
    if not kube.existing_cluster:
        # Built with -X ...gitVersion: a real version, not v0.0.0-master.
        assert version["major"] == "1"
        assert version["minor"] == version["gitVersion"].split(".")[1]
        client = json.loads(kube.kubectl("version", "--client", "-o", "json").stdout)
        assert client["clientVersion"]["gitVersion"] == version["gitVersion"]

    assert kube.helm, "scripts/testenv.sh builds helm beside the control plane"
    out = kube.run_helm("version", "--short").stdout.strip()
    assert re.match(r"v[34]\.\d+\.\d+", out), out
    # helm reaches the API server with the same kubeconfig (a fresh namespace has no releases;
    # other tests install charts elsewhere in the same control plane).
    assert kube.run_helm("list", "-n", namespace, "-o", "json").stdout.strip() == "[]"
