"""Shared pieces of the operator tests: the installed CRDs and ThrottlePolicy manifests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.kube import KubeEnv
from throttle.metrics import Metrics
from throttle.operator.main import run
from throttle.settings import Settings
from throttle_dev.localenv import RedisServer

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crds" / "throttlepolicies.yaml"
CRD_NAME = "throttlepolicies.throttle.dev"
API_VERSION = "throttle.dev/v1alpha1"


@pytest.fixture(scope="session")
def throttle_crd(kube: KubeEnv) -> str:
    """The ThrottlePolicy CRD, installed once per session from the shipped file."""
    kube.apply(CRD_FILE)
    kube.wait_crd_established(CRD_NAME)
    return CRD_NAME


def policy_manifest(name: str | None = None, /, **spec: Any) -> dict[str, Any]:
    """A minimal valid ThrottlePolicy; keyword arguments replace top-level spec fields."""
    body: dict[str, Any] = {"portalId": 1234, "rate": {"limit": 10, "period": "1m"}}
    body.update(copy.deepcopy(spec))
    body = {k: v for k, v in body.items() if v is not None}
    return {
        "apiVersion": API_VERSION,
        "kind": "ThrottlePolicy",
        "metadata": {"name": name or f"tp-{secrets.token_hex(3)}"},
        "spec": body,
    }


# --------------------------------------------------------------------------------------------
# The operator, run in a thread as a real ServiceAccount with only deploy/rbac's permissions
# --------------------------------------------------------------------------------------------

RBAC_FILE = REPO / "deploy" / "rbac" / "operator-role.yaml"
OPERATOR_NS = "throttle-system"
OPERATOR_SA = "throttle-operator"


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: KubeEnv, throttle_crd: str) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount, bound to deploy/rbac."""
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS},
            },
        ]
    )
    kube.apply(RBAC_FILE, namespace=OPERATOR_NS)
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    kube.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "throttle-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "throttle-operator",
                },
                "subjects": subject,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "throttle-operator-lease", "namespace": OPERATOR_NS},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "throttle-operator-lease",
                },
                "subjects": subject,
            },
        ]
    )
    token = kube.kubectl(
        "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=2h"
    ).stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = "operator"
    path = kube.workdir / "kubeconfigs" / "throttle-operator.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorThread:
    """`throttle.operator.main.run` in a thread with its own event loop (as a pod would run it)."""

    def __init__(self, settings: Settings, kubeconfig: Path, namespaces: list[str], identity: str):
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.identity = identity
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"operator-{identity}", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await run(
                self.settings,
                self.namespaces,
                kubeconfig=self.kubeconfig,
                identity=self.identity,
                stop=self._stop,
                ready=self.ready,
                metrics=self.metrics,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc

    def start(self) -> OperatorThread:
        self._thread.start()
        assert self._started.wait(10), "operator thread did not start"
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.ready.wait(timeout), f"operator {self.identity} not ready: {self.error!r}"

    @property
    def leader(self) -> bool:
        return self.gauge("throttle_operator_leader") == 1

    def gauge(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def reconciles(self, result: str) -> float:
        return self.gauge("throttle_operator_reconciles_total", result=result)

    def stop(self, timeout: float = 30) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"operator {self.identity} did not stop"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


@pytest.fixture
def operator_settings(redis_server: RedisServer) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url,
        metrics_port=0,
        operator_lease_namespace=OPERATOR_NS,
        operator_lease_seconds=3,
        operator_status_interval=1,
        operator_check_interval=0.5,
        operator_retire_poll_interval=0.5,
    )


@pytest.fixture
def start_operator(
    operator_kubeconfig: Path, operator_settings: Settings, namespace: str
) -> Iterator[Callable[..., OperatorThread]]:
    """Start operators watching the test's namespace; all are stopped at the end of the test."""
    started: list[OperatorThread] = []

    def start(identity: str = "op-a", ready: bool = True, **overrides: Any) -> OperatorThread:
        settings = operator_settings.model_copy(update=overrides)
        op = OperatorThread(settings, operator_kubeconfig, [namespace], identity).start()
        started.append(op)
        if ready:
            op.wait_ready()
        return op

    yield start
    for op in started:
        op.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; returns its value or fails with the last one."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
