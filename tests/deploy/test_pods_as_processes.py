"""The chart's pods run as local processes: each container's command and environment exactly as
the chart renders them (ConfigMap, Secret and env entries resolved), against the real Redis and
PostgreSQL fixtures. The migration Job's command migrates; the webhook's and the dispatcher's
probes answer 200 on the paths and ports the chart probes."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.helm_chart import VALUES_ALL, Helm, by_kind, one, pod_specs
from tests.fixtures.services import RedisServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_env(objects: list[dict[str, Any]], component: str) -> dict[str, str]:
    """What the chart puts in a component's environment, resolved like the kubelet does."""
    secrets = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in by_kind(objects, "Secret")
    }
    configmaps = {c["metadata"]["name"]: c["data"] for c in by_kind(objects, "ConfigMap")}
    container = pod_specs(objects)[component]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            if value is not None:
                env[entry["name"]] = value
    return env


def throttle_bin() -> str:
    found = shutil.which("throttle", path=str(Path(sys.executable).parent))
    assert found, "the throttle console script is not installed in this environment"
    return found


def run_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The container's environment only (plus PATH), from an empty working folder."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}


@pytest.fixture
def rendered(
    helm: Helm, redis_server: RedisServer, database_url: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    ports = {"webhook": free_port(), "dispatcher": free_port()}
    objects = helm.template(
        values=[VALUES_ALL],
        set_values=[
            f"secrets.redisUrl={redis_server.url}",
            f"secrets.databaseUrl={database_url}",
            f"webhook.port={ports['webhook']}",
            f"dispatcher.metricsPort={ports['dispatcher']}",
            # Cluster mode needs the pod's in-cluster credentials; test_cluster covers it.
            "webhook.configApi.clusterMode=false",
            # Never the real HubSpot from a test: a closed local port.
            f"settings.hubspotApiBase=http://127.0.0.1:{free_port()}",
        ],
    )
    return objects, ports


def wait_http(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"exited {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (local test URL)
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within {timeout}s (last: {last})")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start(
    objects: list[dict[str, Any]], component: str, tmp_path: Path, procs: list[Any]
) -> subprocess.Popen[str]:
    args = pod_specs(objects)[component]["containers"][0]["args"]
    log = (tmp_path / f"{component}.log").open("w")  # a file: a full pipe would stall it
    proc = subprocess.Popen(
        [throttle_bin(), *args],
        env=run_env(container_env(objects, component), tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()  # the child holds its own copy
    procs.append(proc)
    return proc


def probe_urls(objects: list[dict[str, Any]], component: str) -> list[str]:
    container = pod_specs(objects)[component]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    urls = []
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            urls.append(f"http://127.0.0.1:{ports[get['port']]}{get['path']}")
    return urls


def test_migration_job_command_migrates(
    rendered: tuple[list[dict[str, Any]], dict[str, int]], tmp_path: Path
) -> None:
    objects, _ = rendered
    job = one(objects, "Job", "migrations")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    env = run_env(container_env(objects, "migrations"), tmp_path)
    assert set(env) == {"PATH", "HOME", "LOG_LEVEL", "LOG_FORMAT", "DATABASE_URL"}
    for attempt in range(2):  # a re-run (the next upgrade's hook) is a no-op
        proc = subprocess.run(
            [throttle_bin(), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"attempt {attempt}: {proc.stderr[-3000:]}"


@pytest.mark.parametrize("component", ["webhook", "dispatcher"])
def test_probes_answer_on_the_ports_and_paths_the_chart_probes(
    rendered: tuple[list[dict[str, Any]], dict[str, int]],
    tmp_path: Path,
    started: list[subprocess.Popen[str]],
    component: str,
) -> None:
    objects, _ = rendered
    migrate = subprocess.run(
        [throttle_bin(), "migrate"],
        env=run_env(container_env(objects, "migrations"), tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = start(objects, component, tmp_path, started)
    urls = probe_urls(objects, component)
    assert urls
    for url in urls:
        assert wait_http(url, proc, tmp_path / f"{component}.log") == 200, url
    # Metrics are where the ServiceMonitor scrapes them: the webhook's HTTP port, else "metrics".
    monitor = one(objects, "ServiceMonitor", component)
    [endpoint] = monitor["spec"]["endpoints"]
    container = pod_specs(objects)[component]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_port = {"webhook": "http", "dispatcher": "metrics"}[component]
    assert endpoint["port"] == service_port
    url = f"http://127.0.0.1:{port[service_port]}{endpoint['path']}"
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (local test URL)
        body = resp.read().decode()
    assert "throttle_" in body
