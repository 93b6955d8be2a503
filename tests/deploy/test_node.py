"""The real node (tests/fixtures/kube_node.py) does what the chart's pods will rely on: the
scheduler places a Deployment's pods, the controller-manager runs Deployments and Jobs, the kubelet
brings containers to Ready through their probes, CoreDNS answers Service names and kube-proxy routes
a Service's address to its pods, all inside the run's own network namespace.

The workload is ``localhost/netcheck:1`` (scripts/node-build.sh): ``serve`` answers each TCP
connection with the serving pod's name; ``connect`` resolves a name, connects and fails unless it
read that answer.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube_control_plane import find_binaries
from tests.fixtures.kube_node import K8S_VERSION, KubeNode, NodeAssets, NodeError, start_node

pytestmark = [pytest.mark.node, pytest.mark.slow]

NETCHECK = "localhost/netcheck:1"
PORT = 8080


@pytest.fixture(scope="module")
def netcheck(kube_node: KubeNode) -> str:
    assert kube_node.import_image(kube_node.assets.netcheck_archive) == [NETCHECK]
    return NETCHECK


def _server(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    probe = {"tcpSocket": {"port": PORT}, "periodSeconds": 1}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "serve",
                                "image": NETCHECK,
                                "imagePullPolicy": "Never",
                                "args": ["serve", f":{PORT}"],
                                "ports": [{"containerPort": PORT}],
                                "readinessProbe": probe,
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": PORT}]},
        },
    ]


def _connect_job(namespace: str, name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 120,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "connect",
                            "image": NETCHECK,
                            "imagePullPolicy": "Never",
                            "args": ["connect", target],
                        }
                    ],
                }
            },
        },
    }


def _finished(kube_node: KubeNode, namespace: str, job: str, timeout: float = 150) -> str:
    """Wait for the Job to end; returns "Complete" or "Failed" (the controller-manager's
    verdict; interim conditions such as SuccessCriteriaMet are passed over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kube_node.kube.kubectl_json("-n", namespace, "get", f"job/{job}")["status"]
        for condition in status.get("conditions", []):
            if condition["type"] in {"Complete", "Failed"} and condition["status"] == "True":
                return str(condition["type"])
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish in {timeout:.0f}s: {status}")


def _logs(kube_node: KubeNode, namespace: str, job: str) -> str:
    pods = kube_node.kube.kubectl_json("-n", namespace, "get", "pods", "-l", f"job-name={job}")
    name = pods["items"][0]["metadata"]["name"]
    # The kubelet keeps the container's output in the run folder (podLogsDir).
    files = sorted((kube_node.run_dir / "pod-logs").glob(f"{namespace}_{name}_*/connect/*.log"))
    return "".join(f.read_text() for f in files)


def test_deployment_ready_and_service_routes_by_name(
    kube_node: KubeNode, node_namespace: str, netcheck: str
) -> None:
    kube = kube_node.kube
    kube.apply(_server(node_namespace))
    kube.kubectl(
        "-n", node_namespace, "rollout", "status", "deployment/web", "--timeout=150s", timeout=180
    )
    pods = kube.kubectl_json("-n", node_namespace, "get", "pods", "-l", "app=web")["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [kube_node.name] * 2
    assert all(p["status"]["podIP"].startswith("10.244.") for p in pods)

    kube.apply(
        _connect_job(
            node_namespace, "by-name", f"web.{node_namespace}.svc.{kube_node.cluster_domain}:80"
        )
    )
    assert _finished(kube_node, node_namespace, "by-name") == "Complete", _logs(
        kube_node, node_namespace, "by-name"
    )
    served_by = _logs(kube_node, node_namespace, "by-name")
    assert any(f"served by {p['metadata']['name']}" in served_by for p in pods), served_by

    # The same Job against a Service with no ready pods fails: the check above could not
    # succeed without routing.
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": node_namespace},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80, "targetPort": PORT}]},
        }
    )
    kube.apply(_connect_job(node_namespace, "to-nobody", f"nobody.{node_namespace}.svc:80"))
    assert _finished(kube_node, node_namespace, "to-nobody") == "Failed"


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    kube_node: KubeNode, node_namespace: str, netcheck: str
) -> None:
    kube_node.kube.apply(_connect_job(node_namespace, "api", "kubernetes.default.svc:443"))
    # netcheck reads a line; the API server speaks TLS and says nothing first: a read timeout
    # after a connect is what reaching it looks like, so look at what the Job said instead.
    _finished(kube_node, node_namespace, "api")
    said = _logs(kube_node, node_namespace, "api")
    assert "i/o timeout" in said, said
    assert "dial" not in said, said


def _host_address() -> str:
    route = subprocess.run(
        ["ip", "-j", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True
    )
    routes = json.loads(route.stdout or "[]")
    return str(routes[0]["prefsrc"]) if routes and "prefsrc" in routes[0] else "203.0.113.1"


def test_pods_reach_nothing_outside_the_run(
    kube_node: KubeNode, node_namespace: str, netcheck: str
) -> None:
    # The host's own address (not the veth's): a pod has no route there, so the connection is
    # refused by routing, not by a closed port.
    kube_node.kube.apply(_connect_job(node_namespace, "outside", f"{_host_address()}:22"))
    assert _finished(kube_node, node_namespace, "outside") == "Failed"
    said = _logs(kube_node, node_namespace, "outside")
    assert "unreachable" in said or "no route to host" in said, said


def test_the_network_stays_in_the_run_namespace(kube_node: KubeNode) -> None:
    host_links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    names = {link["ifname"] for link in json.loads(host_links.stdout)}
    assert "thr0" not in names  # the pods' bridge is not on the host
    inside = subprocess.run(
        kube_node.in_netns("ip", "-j", "link"), capture_output=True, text=True, check=True
    )
    assert "thr0" in {link["ifname"] for link in json.loads(inside.stdout)}
    routes = subprocess.run(
        kube_node.in_netns("ip", "-j", "route"), capture_output=True, text=True, check=True
    )
    assert not [r for r in json.loads(routes.stdout) if r["dst"] == "default"]


def _leftovers(suffix: str, workdir: Path) -> list[str]:
    """Whatever a node named ``suffix`` in ``workdir`` could leave behind on the host."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line}" for line in netns.splitlines() if f"thr-{suffix}" in line]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    found += [f"link {link['ifname']}" for link in links if suffix in link["ifname"]]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {line}" for line in mounts if str(workdir) in line]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(workdir) in cmdline or f"thr-{suffix}" in cmdline:
                found.append(f"process {entry.name}: {cmdline[:200]}")
    return found


def test_a_node_that_fails_to_start_leaves_nothing_behind(
    kube_node: KubeNode, tmp_path: Path
) -> None:
    # The node's own binaries and images, but a kubelet that exits at once: the start fails
    # after the namespace, the veth pair, the control plane and containerd (with its mounts) are
    # up.
    assets = tmp_path / "assets"
    binaries = assets / f"k8s-{K8S_VERSION}"
    binaries.mkdir(parents=True)
    for name in ("kube-controller-manager", "kube-scheduler", "kube-proxy"):
        (binaries / name).symlink_to(kube_node.assets.binary(name))
    (binaries / "kubelet").write_text("#!/bin/sh\necho this kubelet is broken >&2\nexit 3\n")
    os.chmod(binaries / "kubelet", 0o700)
    (assets / "images").symlink_to(kube_node.assets.folder / "images")
    suffix, workdir = secrets.token_hex(3), tmp_path / "work"
    workdir.mkdir()

    with pytest.raises(NodeError, match="kubelet exited"):
        start_node(workdir, find_binaries(), NodeAssets(assets), suffix=suffix)

    assert _leftovers(suffix, workdir) == []
    assert (workdir / "node" / "kubelet.log").read_text().endswith("this kubelet is broken\n")
