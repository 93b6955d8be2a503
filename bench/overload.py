"""Goodput under overload: the webhook offered twice what it sustains, by a compiled open-loop
generator (vegeta), judged on what it accepts.

    .venv/bin/python bench/overload.py [--overload 30] [--factor 2] [--recover 10]

What runs (real processes, set up as bench/ingest.py does): Redis (AOF), PostgreSQL (the
portals installed), one `throttle webhook` with production defaults pinned alone to the last CPU,
and the generator: vegeta (built from the Go module proxy into ~/.cache/throttle/tools, keyed by
version) fed requests signed v3 ahead of the run, sharing the other CPUs with Redis.
1. sustainable: the closed-loop peak on 32 keep-alive connections (bench/ingest.py's loop);
2. overload: vegeta, open loop at `--factor` x that rate for `--overload` s;
3. recovery: straight after, half the sustainable rate for `--recover` s.
`/healthz` is polled every 100 ms throughout. Printed: offered and accepted (200 BLOCK) per
second against the sustainable rate, 429s, 5xx, timeouts, p50/p99 of the accepted requests,
health failures, the seconds until every request is accepted again, and each process's CPU
share during the overload (the webhook's CPU per accepted request there against the sustainable
run's, which is its own figure when the cores are what bounds the run).
Targets (the performance issue): accepted ≥ 80% of sustainable, p99 ≤ 50 ms, no 5xx, /healthz
never failing, full acceptance within 5 s of the load dropping. Never passes or fails: a table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

from ingest import (
    Signer,
    base_settings,
    can_pin,
    closed_loop,
    free_port,
    pin,
    prepare,
    process_cpu,
    redis_pid,
    settings_env,
    wait_http,
)
from rich.console import Console
from rich.table import Table

VEGETA_VERSION = "v12.13.0"
VEGETA = Path.home() / ".cache" / "throttle" / "tools" / f"vegeta-{VEGETA_VERSION}"


def build_vegeta() -> Path:
    if VEGETA.exists():
        return VEGETA
    print(f"building vegeta {VEGETA_VERSION} from the Go module proxy …", flush=True)
    with tempfile.TemporaryDirectory() as gobin:
        env = {**os.environ, "GOBIN": gobin, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        subprocess.run(
            ["go", "install", f"github.com/tsenart/vegeta/v12@{VEGETA_VERSION}"],
            env=env,
            check=True,
        )
        VEGETA.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(gobin) / "vegeta", VEGETA)
    return VEGETA


def vegeta_targets(sign: Signer, port: int, count: int, path: Path) -> None:
    """`count` signed requests as vegeta's JSON targets (one per line)."""
    with path.open("w") as out:
        for _ in range(count):
            head, body = sign().split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")[1:]
            header = {k: [v] for k, v in (line.split(": ", 1) for line in lines)}
            header.pop("Content-Length", None)
            header.pop("Host", None)
            target = {
                "method": "POST",
                "url": f"http://127.0.0.1:{port}/api/hubspot/action",
                "body": base64.b64encode(body).decode(),
                "header": header,
            }
            out.write(json.dumps(target) + "\n")


def attack(targets: Path, rate: float, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(VEGETA),
            "attack",
            "-format=json",
            f"-targets={targets}",
            f"-rate={round(rate)}/s",
            f"-duration={seconds}s",
            "-timeout=10s",
            "-keepalive=true",
            "-max-connections=2000",
            f"-output={out}",
        ]
    )


def results(path: Path) -> list[dict]:
    decoded = subprocess.run(
        [str(VEGETA), "encode", "-to=json", str(path)], capture_output=True, check=True
    )
    return [json.loads(line) for line in decoded.stdout.splitlines() if line.strip()]


class HealthPoller(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.failures, self.polls = url, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.polls += 1
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:  # noqa: S310  # nosec B310
                    ok = r.status == 200
            except OSError:
                ok = False
            self.failures += not ok


def listen_drops() -> int:
    """The kernel's count of connections dropped because a listen queue was full (this network
    namespace, every listener: a connection the webhook did not accept in time waits for the
    client's SYN retry, 1 s, then 3 s, which vegeta counts as latency)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenDrops", 0))
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overload", type=float, default=30.0, help="seconds at the high rate")
    parser.add_argument("--factor", type=float, default=2.0, help="x the sustainable rate")
    parser.add_argument("--recover", type=float, default=10.0, help="seconds at half the rate")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a webhook setting other than its default (e.g. webhook_early_shed=false); repeatable",
    )
    args = parser.parse_args()
    console = Console(width=120)
    build_vegeta()

    from throttle.webhook_service.app import new_event_loop
    from throttle_dev.localenv import PostgresServer, RedisServer

    root = Path(tempfile.mkdtemp(prefix="throttle-bench-overload-"))
    redis = RedisServer(root / "redis", appendonly=True).start()
    postgres = PostgresServer(root / "postgres").start()
    postgres.create_database("throttle")
    proc: subprocess.Popen[bytes] | None = None
    try:
        secret = str(uuid.uuid4())
        database_url = postgres.url_for("throttle")
        asyncio.run(prepare(redis.url, database_url))
        port = free_port()
        public_url = "http://127.0.0.1:8080"
        env = settings_env(
            {
                **base_settings(redis.url, database_url, secret),
                "public_url": public_url,
                "port": str(port),
                **dict(item.split("=", 1) for item in args.set),
            }
        )
        with (root / "webhook.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "throttle.cli.main", "webhook"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        if can_pin():
            server_cpu = {max(os.sched_getaffinity(0))}
            others = os.sched_getaffinity(0) - server_cpu
            pin(proc.pid, server_cpu)
            pin(os.getpid(), others)
            pin(redis_pid(redis.url), others)
        time.sleep(6)  # the installed-portals refresh reads PostgreSQL once
        sign = Signer(secret, public_url, "127.0.0.1:8080")

        console.print("1. sustainable: closed loop, 32 connections, 8 s …")
        cpu0 = process_cpu(proc.pid)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            peak = runner.run(closed_loop(port, sign, 32, 8.0))
        sustainable = peak.rate
        cpu_per_request_peak = (process_cpu(proc.pid) - cpu0) / max(1, peak.requests)

        offered = sustainable * args.factor
        count = int(offered * args.overload * 1.05 + sustainable * args.recover) + 100
        console.print(f"   {sustainable:,.0f}/s; signing {count:,} requests for vegeta …")
        targets = root / "targets.json"
        vegeta_targets(sign, port, count, targets)

        console.print(f"2. overload: {offered:,.0f}/s for {args.overload:g} s, then recovery …")
        health = HealthPoller(f"http://127.0.0.1:{port}/healthz")
        health.start()
        pids = {"webhook": proc.pid, "redis": redis_pid(redis.url)}
        before = {name: process_cpu(pid) for name, pid in pids.items()}
        drops = listen_drops()
        high = attack(targets, offered, args.overload, root / "high.bin")
        pids["vegeta"] = high.pid
        if can_pin():
            pin(high.pid, os.sched_getaffinity(0) - {max(os.sched_getaffinity(0))})
        vegeta_cpu = 0.0
        started = time.monotonic()
        while high.poll() is None:
            try:
                vegeta_cpu = process_cpu(high.pid)
            except OSError:
                break
            time.sleep(0.2)
        wall = time.monotonic() - started
        drops = listen_drops() - drops
        cpu = {
            name: process_cpu(pid) - before[name] for name, pid in pids.items() if name != "vegeta"
        }
        cpu["vegeta"] = vegeta_cpu
        # vegeta's own targets file is read as a stream: the recovery phase gets fresh ones.
        recovery_targets = root / "recovery.json"
        vegeta_targets(sign, port, int(sustainable * 0.5 * args.recover) + 50, recovery_targets)
        low = attack(recovery_targets, sustainable * 0.5, args.recover, root / "low.bin")
        low.wait()
        health.stop.set()
        health.join()

        high_results, low_results = results(root / "high.bin"), results(root / "low.bin")
        codes = Counter(r["code"] for r in high_results)
        accepted = [r for r in high_results if r["code"] == 200]
        latencies = [r["latency"] / 1e6 for r in accepted]
        by_second: dict[int, list[int]] = {}
        t0 = None
        for r in sorted(low_results, key=lambda r: r["timestamp"]):
            t = _seconds(r["timestamp"])
            t0 = t if t0 is None else t0
            by_second.setdefault(int(t - t0), []).append(r["code"])
        full_after = next(
            (
                s
                for s in sorted(by_second)
                if all(all(c == 200 for c in by_second[k]) for k in by_second if k >= s)
            ),
            None,
        )
        accepted_rate = len(accepted) / args.overload
        cpu_per_accepted = cpu["webhook"] / max(1, len(accepted))
        table = Table(title=f"Goodput under {args.factor:g}x overload")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("target", justify="right")
        rows = [
            ("sustainable (closed loop, 32 conns)", f"{sustainable:,.0f}/s", ""),
            ("offered (open loop, vegeta)", f"{len(high_results) / args.overload:,.0f}/s", ""),
            ("accepted (200 BLOCK)", f"{accepted_rate:,.0f}/s", ""),
            ("accepted / sustainable", f"{accepted_rate / sustainable:.0%}", "≥ 80%"),
            ("429 (shed)", f"{codes.get(429, 0):,}", ""),
            ("5xx", f"{sum(v for k, v in codes.items() if k >= 500):,}", "0"),
            ("no answer (timeout, reset)", f"{codes.get(0, 0):,}", ""),
            ("SYNs dropped, listen queue full (machine-wide)", f"{drops:,}", ""),
            ("accepted p50", f"{percentile(latencies, 0.5):.1f} ms", ""),
            ("accepted p99", f"{percentile(latencies, 0.99):.1f} ms", "≤ 50 ms"),
            ("/healthz failures", f"{health.failures} of {health.polls}", "0"),
            (
                "full acceptance after the drop",
                "never" if full_after is None else f"{full_after} s",
                "≤ 5 s",
            ),
            ("CPU share: webhook", f"{cpu['webhook'] / wall:.0%}", ""),
            ("CPU share: vegeta", f"{cpu['vegeta'] / wall:.0%}", ""),
            ("CPU share: redis", f"{cpu['redis'] / wall:.0%}", ""),
            (
                "webhook CPU per accepted: overload vs sustainable",
                f"{cpu_per_accepted * 1e6:.0f} µs vs {cpu_per_request_peak * 1e6:.0f} µs",
                "",
            ),
        ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def _seconds(stamp: str) -> float:
    """vegeta's RFC 3339 timestamp (nanoseconds) as epoch seconds."""
    from datetime import datetime

    head, _, frac = stamp.partition(".")
    digits = "".join(ch for ch in frac if ch.isdigit())
    zone = frac[len(digits) :] or "Z"
    base = datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    return base.timestamp() + float("0." + (digits or "0"))


if __name__ == "__main__":
    main()
