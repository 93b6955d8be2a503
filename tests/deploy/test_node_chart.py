"""The chart's pods on the real node (tests/fixtures/kube_node.py): the development profile
installed by the install-and-check script `make kind` runs (throttle_dev.cluster_check), with the
node's kubeconfig and containerd as the image loader, then judged from outside: the API server's
objects, the pods, and the simulator's record of what HubSpot saw.

One install serves every test of the module (a module-scoped fixture); the tests run in order
and later ones rely on the traffic of earlier ones only through the simulator's cumulative
figures, which they read before and after.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube_node import KubeNode
from tests.fixtures.operator_thread import wait_for
from throttle.history.migrations import migration_files
from throttle_dev import cluster_check

pytestmark = [pytest.mark.node, pytest.mark.slow]

PORTAL = cluster_check.DEMO_PORTAL
POLICY = cluster_check.DEMO_POLICY
DISPATCHER_LEASE_S = 20
"""Shorter than the default minute, so a killed dispatcher's executions come back sooner."""
STATUS_INTERVAL_S = 2
"""The operator's status refresh (10 s by default), so `kubectl get tp` follows a draining queue."""
TRAFFIC = 200
"""Executions install_and_check sends after its one action (`make kind`'s default)."""


@dataclass
class Installed:
    """The installed release and the ways the tests look at it from outside its pods."""

    node: KubeNode
    cluster: cluster_check.Cluster
    result: dict[str, Any]
    fullname: str

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return self.cluster.kubectl(*args, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args)

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = self.json("get", "pods", "--selector", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def simulator(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        """The simulator's admin API, called from the host through the node's network namespace
        at the simulator's Service address: HubSpot's side, read from outside the pods."""
        ip = self.kubectl(
            "get",
            "service",
            f"{self.fullname}-hubspot-simulator",
            "--output=jsonpath={.spec.clusterIP}",
        )
        script = (
            "import sys, urllib.request\n"
            "data = sys.argv[2].encode() if sys.argv[2] else None\n"
            "req = urllib.request.Request(sys.argv[1], data=data, "
            "headers={'Content-Type': 'application/json'})\n"
            f"print(urllib.request.urlopen(req, timeout={timeout}).read().decode())\n"
        )
        argv = [
            "python3",
            "-c",
            script,
            f"http://{ip}:8090{path}",
            json.dumps(body) if body else "",
        ]
        proc = subprocess.run(
            self.node.in_netns(*argv), capture_output=True, text=True, timeout=timeout + 10
        )
        assert proc.returncode == 0, f"simulator {path}: {proc.stderr[-2000:]}"
        return json.loads(proc.stdout)

    def report(self, portal: int = PORTAL) -> dict[str, Any]:
        """The simulator's figures for one portal (blocked, completed, duplicates, ...)."""
        rows = self.simulator("/_sim/report")["portals"]
        found: dict[str, Any] = next((r for r in rows if r["portal_id"] == portal), {})
        return found

    def completed_ids(self, portal: int = PORTAL) -> list[str]:
        rows = self.simulator(f"/_sim/completions?portalId={portal}")["completions"]
        return [str(r["callbackId"]) for r in rows]

    def drive(self, executions: int, policy: str = POLICY) -> dict[str, Any]:
        """Signed executions from the simulator's pod to the webhook's Service, as HubSpot."""
        settings = cluster_check.dev_profile()["settings"]
        plan = {
            "actionUrl": f"http://{self.fullname}-webhook.{self.cluster.namespace}.svc:80"
            "/api/hubspot/action",
            "signUrl": f"{settings['publicUrl']}/api/hubspot/action",
            "executions": executions,
            "portals": [PORTAL],
            "policy": policy,
        }
        result: dict[str, Any] = self.simulator("/_sim/drive", plan, timeout=180)
        assert result["answers"] == {"BLOCK": executions}, result
        return result

    def policy_status(self, name: str = POLICY) -> dict[str, Any]:
        status: dict[str, Any] = self.json("get", "throttlepolicy", name).get("status", {})
        return status

    def get_tp_queued(self, name: str = POLICY) -> int:
        """The Queued column of `kubectl get tp` (the CRD's printer columns)."""
        out = self.kubectl("get", "tp", name, "--output=custom-columns=Q:.status.queueDepth")
        value = out.split()[-1]
        return int(value) if value.isdigit() else -1

    def throttle_status_queued(self, name: str = POLICY) -> int:
        """What `throttle status --json` run in the webhook's pod says is queued."""
        out = self.kubectl(
            "exec", f"deploy/{self.fullname}-webhook", "--",
            "throttle", "status", "--json", "--portal", str(PORTAL),
        )  # fmt: skip
        for row in json.loads(out)["queues"]:
            if row["name"] == name:
                return int(row["queued"])
        raise AssertionError(f"no row for {name} in `throttle status --json`:\n{out}")

    def ready_reason(self, name: str = POLICY) -> str | None:
        conditions = self.policy_status(name).get("conditions", [])
        return next((c.get("reason") for c in conditions if c["type"] == "Ready"), None)

    def set_paused(self, paused: bool, name: str = POLICY) -> None:
        patch = json.dumps({"spec": {"paused": paused}})
        self.kubectl("patch", "throttlepolicy", name, "--type=merge", f"--patch={patch}")


def _counts(report: dict[str, Any], *names: str) -> dict[str, Any]:
    """Some of the simulator's figures for a portal, to compare in one assertion."""
    return {name: report.get(name) for name in names}


@pytest.fixture(scope="module")
def installed(kube_node: KubeNode) -> Iterator[Installed]:
    """The dev profile installed by cluster_check.install_and_check (steps 1-6, what `make kind`
    runs), images loaded into the node's containerd."""
    kube = kube_node.kube
    assert kube.helm, "helm is needed (make testenv)"
    cluster = cluster_check.Cluster(
        kube.kubeconfig, namespace="throttle", kubectl_bin=kube.kubectl_bin, helm_bin=kube.helm
    )

    def load(name: str, archive: Path) -> None:
        kube_node.import_image(archive)

    result = cluster_check.install_and_check(
        cluster,
        load,
        # `--set` keeps "20.0" a string (only integers become numbers), as extraEnv wants.
        set_values=[
            f"settings.extraEnv.DISPATCHER_LEASE_SECONDS={DISPATCHER_LEASE_S:.1f}",
            f"settings.extraEnv.OPERATOR_STATUS_INTERVAL={STATUS_INTERVAL_S:.1f}",
        ],
        traffic=TRAFFIC,
    )
    fullname = cluster_check.dev_profile()["fullnameOverride"]
    installed = Installed(kube_node, cluster, result, fullname)
    # The script's own traffic drains first, so each test starts from a quiet portal.
    wait_for(
        lambda: (r := installed.report())["completed"] == r["blocked"],
        "the install-and-check traffic completed at the simulator",
        240,
        every=2,
    )
    yield installed
    cluster.kubectl("delete", "namespace", cluster.namespace, "--wait=false", check=False)


def test_every_pod_is_ready_through_its_probes_and_the_migration_hook_ran(
    installed: Installed,
) -> None:
    pods = installed.json("get", "pods")["items"]
    running = [
        p
        for p in pods
        if "Job" not in {o["kind"] for o in p["metadata"].get("ownerReferences", [])}
    ]
    components = sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in running)
    assert components == [
        "dispatcher", "hubspot-simulator", "operator", "operator", "postgres", "redis", "webhook",
    ], components  # fmt: skip
    for pod in running:
        name = pod["metadata"]["name"]
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready.get("Ready") == "True", (name, pod["status"])
        for container in pod["spec"]["containers"]:
            # Ready through a real probe: the kubelet ran it, not a pod without one.
            assert "readinessProbe" in container, (name, container["name"])
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"], (name, status)
            assert "running" in status["state"], (name, status)
            assert status["restartCount"] == 0, (name, status)

    hooks = installed.result["hooks"]
    assert hooks[f"Job/{installed.fullname}-migrations"] == "Succeeded", hooks
    # The hook's record in PostgreSQL: every migration of this tree applied.
    versions = installed.kubectl(
        "exec", f"deploy/{installed.fullname}-postgres", "--",
        "psql", "--host=/tmp", "--username=throttle", "--dbname=throttle", "--tuples-only",
        "--no-align", "--command=SELECT version FROM schema_migrations ORDER BY version",
    ).split()  # fmt: skip
    assert [int(v) for v in versions] == [v for v, _name, _sql in migration_files()]


def test_one_signed_action_is_blocked_then_completed_at_the_simulator(installed: Installed) -> None:
    probe = installed.result["probe"]  # cluster_check step 5: sent from the simulator's pod
    assert probe["answer"] == "BLOCK", probe
    assert len(probe["completed"]) == 1, probe
    assert probe["traffic"] == {"BLOCK": TRAFFIC}, probe  # the traffic that followed it
    # HubSpot's side, read from outside the pods: completed once.
    assert installed.completed_ids().count(probe["completed"][0]) == 1
    report = installed.report()
    assert _counts(report, "duplicates", "sent_twice") == {"duplicates": 0, "sent_twice": 0}


def test_kubectl_get_tp_shows_live_queue_figures_and_throttle_status_agrees(
    installed: Installed,
) -> None:
    executions = 120
    before = installed.report()
    installed.set_paused(True)
    try:
        wait_for(
            lambda: installed.ready_reason() == "Paused",
            "the operator applied the pause",
            60,
            every=1.0,
        )
        installed.drive(executions)
        # Held: the queue is exactly what was sent, on both sides.
        wait_for(
            lambda: installed.get_tp_queued() == executions,
            "kubectl get tp shows the held queue",
            60,
            every=1.0,
        )
        assert installed.throttle_status_queued() == executions
    finally:
        installed.set_paused(False)  # the next tests need the policy releasing
    seen: list[tuple[int, int]] = []

    def drained() -> bool:
        seen.append((installed.get_tp_queued(), installed.throttle_status_queued()))
        return seen[-1] == (0, 0)

    wait_for(drained, "the queue drained", 180, every=0.5)
    # Live while it flowed: `kubectl get tp` showed the queue part-way down, and so did
    # `throttle status` (read from Redis just after, so never above the operator's figure).
    tp_between = [tp for tp, _ in seen if 0 < tp < executions]
    assert tp_between, seen
    status_between = [st for _, st in seen if 0 < st < executions]
    assert status_between, seen
    for tp, st in seen:
        assert st <= tp or tp == -1, seen  # the operator's figure lags Redis, never leads it
    after = wait_for(
        lambda: (r := installed.report())["completed"] - before["completed"] == executions and r,
        "every held execution completed at the simulator",
        120,
        every=1.0,
    )
    assert _counts(after, "duplicates", "never_completed") == {
        "duplicates": 0,
        "never_completed": 0,
    }


def _lease(installed: Installed) -> dict[str, Any]:
    spec: dict[str, Any] = installed.json("get", "lease", f"{installed.fullname}-operator")["spec"]
    return spec


def test_killing_the_active_operator_hands_the_lease_to_the_other_replica(
    installed: Installed,
) -> None:
    operators = [p["metadata"]["name"] for p in installed.pods("operator")]
    assert len(operators) == 2, operators
    holder = _lease(installed)["holderIdentity"]
    active = [name for name in operators if name in holder]
    assert len(active) == 1, (holder, operators)
    (standby,) = set(operators) - set(active)
    duration = float(_lease(installed).get("leaseDurationSeconds") or 15)

    killed_at = time.monotonic()
    installed.kubectl("delete", "pod", active[0], "--grace-period=0", "--force", "--wait=false")
    new_holder = wait_for(
        lambda: standby in (h := str(_lease(installed).get("holderIdentity"))) and h,
        "the standby operator holds the Lease",
        duration + 30,
        every=1.0,
    )
    took = time.monotonic() - killed_at
    # Taken once the dead holder's record went stale: within one lease duration of its last
    # renewal, which was at most a renewal interval before the kill (plus the standby's retry).
    assert took <= duration + 5 + 2, f"{new_holder} took the Lease {took:.1f}s after the kill"

    # The new holder reconciles: a policy applied now becomes Ready.
    installed.node.kube.apply(
        {
            "apiVersion": "throttle.dev/v1beta1",
            "kind": "ThrottlePolicy",
            "metadata": {"name": "after-failover", "namespace": installed.cluster.namespace},
            "spec": {"portalId": 20249999, "rate": {"limit": 5, "period": "10s"}},
        }
    )
    cluster_check.wait_policies_ready(installed.cluster, ["after-failover"], timeout=90)


def test_a_dispatcher_killed_mid_batch_loses_and_repeats_nothing(installed: Installed) -> None:
    executions = 150
    before = installed.report()
    # Slow HubSpot: every API answer 1.5 s late, so completion requests are in flight most of
    # the time while the backlog is released.
    installed.simulator("/_sim/faults", {"latency_ms": 1500})
    try:
        (dispatcher,) = [p["metadata"]["name"] for p in installed.pods("dispatcher")]
        installed.drive(executions)
        started = wait_for(
            lambda: (n := installed.report()["completed"] - before["completed"]) >= 10 and n,
            "the backlog is being released",
            120,
            every=0.3,
        )
        installed.kubectl(
            "delete", "pod", dispatcher, "--grace-period=0", "--force", "--wait=false"
        )
        at_kill = installed.report()["completed"] - before["completed"]
        assert at_kill < executions, f"released all {at_kill} before the kill (started {started})"

        wait_for(
            lambda: [
                p
                for p in installed.pods("dispatcher")
                if p["metadata"]["name"] != dispatcher
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
            ],
            "a replacement dispatcher Ready",
            120,
            every=1.0,
        )
        report = wait_for(
            lambda: (r := installed.report())["completed"] == r["blocked"] and r,
            "every BLOCKed execution completed after the replacement drained",
            DISPATCHER_LEASE_S + 240,
            every=1.0,
        )
    finally:
        installed.simulator("/_sim/faults", {"latency_ms": 0})
    assert report["blocked"] - before["blocked"] == executions, report
    assert _counts(report, "never_completed", "expired") == {"never_completed": 0, "expired": 0}
    # Exactly once at HubSpot: no attempt on an already-completed callback, none sent twice.
    assert _counts(report, "duplicates", "sent_twice") == {"duplicates": 0, "sent_twice": 0}
    ids = installed.completed_ids()
    assert len(ids) == len(set(ids)) == report["blocked"], (len(ids), len(set(ids)), report)
