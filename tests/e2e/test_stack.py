"""The local stack the demo, the end-to-end benchmark and the fault tests stand on."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from throttle_dev.stack import Stack, StackConfig, http_ok

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's numbered temp root (other sessions' runs prune it)."""
    path = Path(tempfile.mkdtemp(prefix="throttle-stack-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_starts_kills_restarts_and_cleans_up(workdir: Path) -> None:
    manifests = workdir / "manifests"
    manifests.mkdir()
    (manifests / "p.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "throttle.dev/v1beta1",
                "kind": "ThrottlePolicy",
                "metadata": {"name": "p"},
                "spec": {"portalId": 7, "rate": {"limit": 5, "period": "1s"}},
            }
        )
    )
    root = workdir / "stack"
    stack = Stack(StackConfig(root=root, dispatchers=2, manifests=manifests))
    with stack:
        names = set(stack.components)
        assert names == {"simulator", "webhook", "dispatcher-1", "dispatcher-2", "reconciler"}
        pids = {name: c.pid for name, c in stack.components.items()}
        assert all(c.running for c in stack.components.values())
        assert http_ok(f"{stack.webhook_url}/readyz")
        # every component gets the same settings, as environment variables
        env = stack.components["dispatcher-1"].env
        assert env["REDIS_URL"] == stack.redis_url
        assert env["HUBSPOT_API_BASE"] == stack.simulator_url
        assert (
            stack.components["webhook"].env["HUBSPOT_CLIENT_SECRET"] == env["HUBSPOT_CLIENT_SECRET"]
        )

        stack.kill("dispatcher-1")
        assert not alive(pids["dispatcher-1"] or 0)
        assert stack.check_alive() == ["dispatcher-1"]
        restarted = stack.restart("dispatcher-1")
        assert restarted.running
        assert restarted.pid != pids["dispatcher-1"]
        assert restarted.restarts == 1
        assert stack.check_alive() == []
        assert "start" in restarted.log_tail()

        assert stack.terminate("dispatcher-2") == 0, stack.components["dispatcher-2"].log_tail()
        stack.start_component("dispatcher-2")
        assert stack.components["dispatcher-2"].running
        pids = {name: c.pid for name, c in stack.components.items()}
    for name, pid in pids.items():
        assert pid is not None
        assert not alive(pid), f"{name} still running after stop"
    assert not root.exists()
