"""N ThrottlePolicies in a real API server: what the operator costs at scale, from outside.

Starts etcd + kube-apiserver (the test fixtures' `start_control_plane`), redis-server, and the
operator as a pod runs it (`throttle operator -n NS`, a child process); creates N policies at once
(four `kubectl create` processes in parallel) and prints, with progress lines while it works:

- the time from the first create until every policy shows Ready=True;
- the operator's peak RSS (VmHWM from /proc);
- the API server's own count of write requests (`apiserver_request_total` from its /metrics,
  by verb / resource / subresource) per second while the policies sit idle, sampled twice
  after a settling pause: nothing else writes to this API server, so what is counted is the
  operator's (its Lease renewals included);
- a restarted operator: the time until it has re-synced every policy (its own
  `throttle_operator_reconciles_total`), and what it wrote meanwhile to Redis (the keyspace
  `dirty` counter, and whether the registry revision moved) and to the API server.

Compare with `bench/operator.py` (the same engine calls without Kubernetes). Prints; never
pass/fail.

    PYTHONPATH=$PWD:$PWD/devtools .venv/bin/python bench/operator_scale.py [--policies 10000 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from tests.fixtures.kube_control_plane import (
    KubeEnv,
    find_binaries,
    start_control_plane,
    stop_control_plane,
)
from throttle.engine import keys
from throttle_dev.localenv import RedisServer, free_port
from throttle_dev.stack import Component, throttle_argv

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "deploy" / "crds" / "throttlepolicies.yaml"
NAMESPACE = "bench"
CREATORS = 4
console = Console(width=200)


def say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)


def manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "throttle.dev/v1beta1",
        "kind": "ThrottlePolicy",
        "metadata": {"name": f"p{i}", "namespace": NAMESPACE},
        "spec": {
            "portalId": 1000 + i % 50,
            "rate": {"limit": 10 + i % 90, "period": "1m", "burst": i % 5},
            **({"dailyCap": {"limit": 5000, "timeZone": "America/New_York"}} if i % 3 == 0 else {}),
        },
    }


def create_all(kube: KubeEnv, n: int, folder: Path) -> None:
    """`kubectl create` in CREATORS parallel processes (one sequential kubectl is the bottleneck
    otherwise, not the operator)."""
    procs = []
    for c in range(CREATORS):
        path = folder / f"policies-{c}.yaml"
        path.write_text(yaml.safe_dump_all([manifest(i) for i in range(c, n, CREATORS)]))
        procs.append(
            subprocess.Popen(
                [kube.kubectl_bin, "--kubeconfig", str(kube.kubeconfig), "create", "-f", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl create failed: {err[-2000:]}")


def raw(kube: KubeEnv, path: str) -> str:
    return kube.kubectl("get", "--raw", path, timeout=300).stdout


def ready_count(kube: KubeEnv) -> tuple[int, int] | None:
    """(policies listed, of which Ready=True), from the API server's watch cache (not etcd);
    None when the API server did not answer in time (it is busy: we ask again later)."""
    path = f"/apis/throttle.dev/v1beta1/namespaces/{NAMESPACE}/throttlepolicies?resourceVersion=0"
    try:
        items = json.loads(kube.kubectl("get", "--raw", path, timeout=120).stdout)["items"]
    except (subprocess.SubprocessError, ValueError):
        return None
    ready = sum(
        1
        for t in items
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (t.get("status") or {}).get("conditions") or []
        )
    )
    return len(items), ready


def per_second(before: Counter[str], after: Counter[str], seconds: float) -> dict[str, float]:
    return {k: (after[k] - before[k]) / seconds for k in after if after[k] != before[k]}


def describe(rates: dict[str, float], unit: str = "/s") -> str:
    ordered = sorted(rates.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.2f}{unit}" if unit else f"{k} {v:.0f}" for k, v in ordered)


@dataclass
class PeakRss:
    """Samples a process's RSS high-water mark (VmHWM) and its current RSS."""

    pid: int

    def read(self, field: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far."""
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0


def operator_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def wait_until(
    what: str, check: Callable[[], tuple[bool, str]], timeout: float, every: float = 3.0
) -> float:
    """Seconds until `check` says done; a progress line every `every` seconds."""
    start = time.monotonic()
    while True:
        done, note = check()
        elapsed = time.monotonic() - start
        if done:
            say(f"{what}: done after {elapsed:.1f} s ({note})")
            return elapsed
        if elapsed > timeout:
            say(f"{what}: NOT done after {elapsed:.0f} s ({note})")
            return float("nan")
        say(f"{what}: {elapsed:5.0f} s, {note}")
        time.sleep(every)


@contextlib.contextmanager
def operator_process(
    kube: KubeEnv, redis_url: str, folder: Path, name: str
) -> Iterator[tuple[Component, int]]:
    port = free_port()
    env = kube.env(
        REDIS_URL=redis_url,
        METRICS_PORT=str(port),
        HOST="127.0.0.1",
        OPERATOR_LEASE_NAMESPACE="default",
        OPERATOR_IDENTITY=name,
        LOG_FORMAT="text",
        LOG_LEVEL="WARNING",
    )
    component = Component(
        name=name,
        argv=throttle_argv("operator", "-n", NAMESPACE),
        env=env,
        log_path=folder / f"{name}.log",
        cwd=folder,
        ready_url=f"http://127.0.0.1:{port}/healthz",
    )
    component.start()
    try:
        component.wait_ready()
        yield component, port
    finally:
        component.stop(timeout=60)


@dataclass
class Row:
    policies: int
    create_s: float = 0.0
    ready_s: float = float("nan")
    rss_peak_mb: float = 0.0
    rss_idle_mb: float = 0.0
    idle_writes: float = 0.0
    idle_detail: str = ""
    ready_cpu_s: float = 0.0
    idle_cpu: float = 0.0
    ready_writes: int = 0
    resync_s: float = float("nan")
    resync_redis_writes: int = 0
    resync_rev_moved: bool = False
    resync_api_writes: int = 0
    resync_detail: str = ""


def run_one(n: int, args: argparse.Namespace, binaries: dict[str, str | None]) -> Row:
    row = Row(n)
    folder = Path(tempfile.mkdtemp(prefix=f"throttle-opscale-{n}-"))
    kube = start_control_plane(folder / "kube", binaries)
    server = RedisServer(folder / "redis").start()
    sync = server.sync_client()
    try:
        kube.apply(CRD_FILE)
        kube.wait_crd_established("throttlepolicies.throttle.dev")
        kube.kubectl("create", "namespace", NAMESPACE)
        say(f"[bold]{n} policies[/bold]: control plane and Redis up; starting the operator")
        with operator_process(kube, server.url, folder, "op-1") as (op, port):
            assert op.pid is not None
            rss = PeakRss(op.pid)
            say(f"operator RSS before any policy: {rss.read('VmRSS') / 2**20:.0f} MB")
            started, writes_at_start = time.monotonic(), kube.write_requests()
            creator = threading.Thread(target=create_all, args=(kube, n, folder))
            creator.start()

            def all_ready() -> tuple[bool, str]:
                counted = ready_count(kube)
                if counted is None:
                    return False, "the API server did not answer the list in time"
                listed, ready = counted
                mb = rss.read("VmRSS") / 2**20
                return ready >= n, f"{listed} created, {ready} Ready, operator RSS {mb:.0f} MB"

            every = max(3.0, n / 1000)  # listing them all is work for the API server too
            row.ready_s = wait_until("all Ready", all_ready, args.timeout, every=every)
            row.ready_cpu_s = rss.cpu_seconds()
            creator.join()
            row.create_s = time.monotonic() - started  # upper bound when Ready came first
            row.ready_writes = sum(kube.write_requests().values()) - sum(writes_at_start.values())
            say(
                f"until all Ready: operator CPU {row.ready_cpu_s:.0f} s, "
                f"{row.ready_writes} API writes (the {n} creates included)"
            )
            say(f"settling {args.settle:.0f} s before sampling idle writes")
            time.sleep(args.settle)
            before, t0, cpu0 = kube.write_requests(), time.monotonic(), rss.cpu_seconds()
            time.sleep(args.window)
            after, t1 = kube.write_requests(), time.monotonic()
            row.idle_cpu = (rss.cpu_seconds() - cpu0) / (t1 - t0)
            rates = per_second(before, after, t1 - t0)
            row.idle_writes = sum(rates.values())
            row.idle_detail = describe(rates)
            say(
                f"idle writes: {row.idle_writes:.2f}/s ({row.idle_detail or 'none'}); "
                f"operator CPU {row.idle_cpu:.1%} of a core"
            )
            row.rss_peak_mb = rss.read("VmHWM") / 2**20
            row.rss_idle_mb = rss.read("VmRSS") / 2**20
        say("operator stopped; restarting it")
        dirty_before = int(sync.info("persistence")["rdb_changes_since_last_save"])
        rev_before = sync.get(keys.REGISTRY_REV)
        api_before = kube.write_requests()
        with operator_process(kube, server.url, folder, "op-2") as (op, port):

            def resynced() -> tuple[bool, str]:
                done = operator_metric(port, "throttle_operator_reconciles_total")
                return done >= n, f"{done:.0f} of {n} reconciled"

            row.resync_s = wait_until("re-sync", resynced, args.timeout, every=1.0)
            time.sleep(2)  # what the re-sync's last patches still send
            api_after = kube.write_requests()
            row.resync_redis_writes = (
                int(sync.info("persistence")["rdb_changes_since_last_save"]) - dirty_before
            )
            row.resync_rev_moved = sync.get(keys.REGISTRY_REV) != rev_before
            row.resync_api_writes = sum(api_after.values()) - sum(api_before.values())
            row.resync_detail = describe(per_second(api_before, api_after, 1.0), unit="")
            say(
                f"re-sync: {row.resync_s:.1f} s; Redis writes {row.resync_redis_writes}; "
                f"API writes {row.resync_api_writes} ({row.resync_detail or 'none'})"
            )
    finally:
        sync.close()
        server.stop()
        stop_control_plane(kube)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            say(f"kept {folder}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, nargs="+", default=[10_000, 1_000])
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting after (s)")
    parser.add_argument("--settle", type=float, default=30, help="pause after all Ready (s)")
    parser.add_argument("--window", type=float, default=30, help="idle sampling window (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    binaries = find_binaries()
    rows = [run_one(n, args, binaries) for n in args.policies]
    table = Table(
        "policies", "all Ready s", "CPU s to Ready", "API writes to Ready", "RSS peak MB",
        "RSS idle MB", "idle writes/s", "idle CPU", "re-sync s", "re-sync Redis writes",
        "re-sync API writes",
        title=f"Operator at scale ({platform.python_version()}, {os.cpu_count()} cores)",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            str(r.policies),
            f"{r.ready_s:.1f}",
            f"{r.ready_cpu_s:.0f}",
            str(r.ready_writes),
            f"{r.rss_peak_mb:.0f}",
            f"{r.rss_idle_mb:.0f}",
            f"{r.idle_writes:.2f}",
            f"{r.idle_cpu:.1%}",
            f"{r.resync_s:.1f}",
            f"{r.resync_redis_writes}{' (registry rev moved)' if r.resync_rev_moved else ''}",
            str(r.resync_api_writes),
        )
    console.print(table)
    for r in rows:
        console.print(f"{r.policies}: idle writes by kind: {r.idle_detail or 'none'}")
        console.print(f"{r.policies}: re-sync API writes by kind: {r.resync_detail or 'none'}")


if __name__ == "__main__":
    main()
