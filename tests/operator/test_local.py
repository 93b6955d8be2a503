"""Local mode: the same manifests and the same reconcile function, fed from a folder."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis as SyncRedis

from tests.fixtures.operator_thread import REPO, eventually
from throttle.engine import keys
from throttle.engine.manifests import load_folder
from throttle.engine.queue import Queue, QueueItem
from throttle.metrics import Metrics
from throttle.operator.local import run_local
from throttle.settings import Settings
from throttle_dev.localenv import RedisServer, free_port

EXAMPLES = REPO / "deploy" / "examples"


def _copy(folder: Path, *names: str) -> None:
    for name in names:
        shutil.copy(EXAMPLES / name, folder / name)


def _edit(path: Path, **spec: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(spec)
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture
async def local_operator(
    redis_server: RedisServer, redis: Any, tmp_path: Path
) -> AsyncIterator[tuple[Path, Metrics]]:
    folder = tmp_path / "policies"
    folder.mkdir()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url,
        metrics_port=0,
        operator_check_interval=0.5,
    )
    metrics = Metrics()
    stop = asyncio.Event()
    task = asyncio.create_task(run_local(settings, folder, stop=stop, metrics=metrics))
    yield folder, metrics
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_local_mode_follows_the_folder(
    local_operator: tuple[Path, Metrics], redis: Any
) -> None:
    folder, metrics = local_operator
    _copy(folder, "01-basic-rate.yaml", "03-daily-cap.yaml", "08-on-delete.yaml")
    basic, cap, on_delete = (
        keys.params(k) for k in ("1001:basic-rate", "1003:daily-cap", "1008:on-delete-succeed")
    )

    # New files: applied within 2 s.
    start = time.monotonic()
    for key in (basic, cap, on_delete):
        await eventually(lambda key=key: redis.exists(key), timeout=2)
    assert time.monotonic() - start < 2
    assert await redis.hget(basic, "lim") == b"100"

    # An edit is applied; an invalid edit is reported and the last valid version stays.
    _edit(folder / "01-basic-rate.yaml", rate={"limit": 250, "period": "1m"})
    _edit(folder / "03-daily-cap.yaml", dailyCap={"limit": 9000, "timeZone": "Mars/Base"})
    await eventually(lambda: _equals(redis.hget(basic, "lim"), b"250"), timeout=3)
    await eventually(lambda: metrics.registry.get_sample_value(
        "throttle_operator_reconciles_total", {"result": "invalid"}))  # fmt: skip
    assert await redis.hget(cap, "cap") == b"5000"

    # Redis loses everything: written back within seconds.
    await redis.flushall()
    await eventually(lambda: redis.exists(basic, cap, on_delete), timeout=3)
    assert await redis.hget(basic, "lim") == b"250"

    # A removed file retires its policy as its onDelete says (Succeed: completed now).
    queue = Queue(redis)
    [m] = [m for m in load_folder(folder) if m.key == "1008:on-delete-succeed"]
    assert m.policy is not None
    for n in range(3):
        await queue.enqueue(_item(f"x-{n}", 1008), m.policy)
    (folder / "08-on-delete.yaml").unlink()
    (folder / "01-basic-rate.yaml").unlink()
    await eventually(lambda: _not(redis.exists(basic)), timeout=3)
    # The two files may be seen in different polls: take only once the retirement is in Redis,
    # or the rate (20/min, burst 1) releases two of the three on its own.
    await eventually(lambda: redis.hexists(on_delete, "retiring"), timeout=3)
    taken = await eventually(lambda: _released(queue))
    assert sorted(r.callback_id for r in taken) == ["x-0", "x-1", "x-2"]
    await queue.ack(taken)
    await eventually(lambda: _not(redis.exists(on_delete)), timeout=3)
    assert await redis.exists(cap)  # the invalid file still holds its last valid version


async def _equals(awaitable: Any, expected: Any) -> bool:
    return bool(await awaitable == expected)


async def _not(awaitable: Any) -> bool:
    return not await awaitable


async def _released(queue: Queue) -> list[Any]:
    return (await queue.take()).released


def _item(callback_id: str, portal_id: int) -> QueueItem:
    return QueueItem(
        callback_id=callback_id,
        portal_id=portal_id,
        action_definition_id=1,
        workflow_id=1,
        object_type="CONTACT",
        object_id="1",
        received_at=time.time(),
    )


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (our own local server)
        return resp.status, resp.read().decode()


def test_cli_local_mode_serves_health_and_stops_cleanly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """`throttle operator --local deploy/examples`, as `make demo` runs it."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "METRICS_PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "text",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "throttle.cli.main", "operator", "--local", str(EXAMPLES)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "no /healthz"
                time.sleep(0.2)
        assert status == 200
        assert json.loads(body)["role"] == "local"
        registry = SyncRedis.from_url(redis_server.url)
        expected = len(load_folder(EXAMPLES))
        deadline = time.monotonic() + 10
        while registry.hlen(keys.REGISTRY) < expected:
            assert time.monotonic() < deadline, "examples not applied"
            time.sleep(0.2)
        registry.close()
        _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert 'throttle_operator_reconciles_total{result="written"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


def test_cli_without_cluster_credentials_says_what_to_do(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    env.update(HOME=str(tmp_path), REDIS_URL=redis_server.url, METRICS_PORT="0")
    proc = subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", "operator"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "no Kubernetes credentials" in proc.stderr
    assert "--local DIR" in proc.stderr
