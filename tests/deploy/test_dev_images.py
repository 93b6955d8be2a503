"""The development profile's images, built and run with podman (scripts/images.sh, from Debian's
packages: no registry): each is an OCI archive a node's containerd imports under the name the
chart's dev profile uses, and each runs the way that profile runs it (uid 10001, read-only root
filesystem, no capabilities) and answers: Redis keeps its append-only file across a restart,
PostgreSQL makes the user and database of DATABASE_URL and Throttle migrates it, the simulator
serves HubSpot's API and stops on SIGTERM. The runtime image holds no devtools."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import requests
import yaml

from tests.fixtures.helm_chart import CHART
from tests.fixtures.podman import REPO, RESTRICTED, podman
from throttle_dev.localenv import free_port

pytestmark = pytest.mark.slow

REFS = {
    "throttle": "localhost/throttle:dev",
    "simulator": "localhost/throttle-simulator:dev",
    "redis": "localhost/throttle-redis:dev",
    "postgres": "localhost/throttle-postgres:dev",
}


def start(names: list[str], *args: str) -> str:
    name = f"throttle-devimage-{uuid.uuid4().hex[:8]}"
    proc = podman("run", "--detach", f"--name={name}", "--network=host", *RESTRICTED, *args)
    assert proc.returncode == 0, proc.stderr
    names.append(name)
    return name


def volume(tmp_path: Path, name: str) -> Path:
    """A folder uid 10001 may write, as an emptyDir with the chart's fsGroup is."""
    path = tmp_path / name
    path.mkdir()
    path.chmod(0o777)
    return path


def until(check: object, what: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert callable(check)
        if check():
            return
        time.sleep(0.3)
    logs = podman("logs", name)
    pytest.fail(f"{what} within {timeout:.0f}s; logs: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")


def test_archives_are_oci_archives_under_the_names_the_dev_profile_uses(
    dev_image_archives: dict[str, Path],
) -> None:
    assert set(dev_image_archives) == set(REFS)
    # Kept in the build cache outside the clone, so the next CI run (a new clone) finds them.
    cache = Path(os.environ.get("THROTTLE_CACHE") or Path.home() / ".cache" / "throttle")
    for name, archive in dev_image_archives.items():
        assert archive.is_relative_to(cache), archive
        assert not archive.is_relative_to(REPO), archive
        with tarfile.open(archive) as tar:
            members = set(tar.getnames())
            assert "oci-layout" in members, name
            index_file = tar.extractfile("index.json")
            assert index_file is not None
            index = json.load(index_file)
        [manifest] = index["manifests"]
        assert manifest["annotations"]["org.opencontainers.image.ref.name"] == REFS[name]
    dev = yaml.safe_load((CHART / "values-dev.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())["devStack"]
    assert f"{dev['image']['repository']}:{dev['image']['tag']}" == REFS["throttle"]
    assert values["redisImage"] == REFS["redis"]
    assert values["postgresImage"] == REFS["postgres"]
    assert values["simulatorImage"] == REFS["simulator"]


def test_an_unchanged_image_is_not_rebuilt(dev_image_archives: dict[str, Path]) -> None:
    proc = subprocess.run(
        ["bash", "scripts/images.sh", "redis"],
        cwd=REPO,
        env={**os.environ, "ENGINE": "podman"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"redis={dev_image_archives['redis']}"
    assert "cached" in proc.stderr


def test_redis_keeps_its_append_only_file_across_a_restart(
    dev_image_archives: dict[str, Path], containers: list[str], tmp_path: Path
) -> None:
    data = volume(tmp_path, "data")
    port = free_port()
    # The image's own arguments (the AOF on), plus a free port.
    cmd = json.loads(podman("inspect", "--format", "{{json .Config.Cmd}}", REFS["redis"]).stdout)
    name = start(containers, f"--volume={data}:/data", REFS["redis"], *cmd, "--port", str(port))

    def cli(*args: str) -> str:
        return podman("exec", name, "redis-cli", "-p", str(port), *args).stdout.strip()

    until(lambda: cli("ping") == "PONG", "redis answers", name)
    assert cli("config", "get", "appendonly").split() == ["appendonly", "yes"]
    assert cli("set", "throttle:k", "kept") == "OK"
    time.sleep(1.5)  # appendfsync everysec
    assert podman("restart", "--time", "5", name).returncode == 0
    until(lambda: cli("ping") == "PONG", "redis answers after its restart", name)
    assert cli("get", "throttle:k") == "kept"
    assert list((data / "appendonlydir").glob("*.aof"))


def test_postgres_makes_the_database_of_its_url_and_throttle_migrates_it(
    dev_image_archives: dict[str, Path], containers: list[str], tmp_path: Path
) -> None:
    data = volume(tmp_path, "pgdata")
    port = free_port()
    name = start(
        containers, f"--volume={data}:/var/lib/postgresql/data",
        "--env=POSTGRES_USER=throttle", "--env=POSTGRES_PASSWORD=dev-pw", "--env=POSTGRES_DB=tdb",
        REFS["postgres"], "-p", str(port),
    )  # fmt: skip

    def ready() -> bool:
        proc = podman("exec", name, "pg_isready", "--host=127.0.0.1", f"--port={port}")
        return proc.returncode == 0

    until(ready, "postgres accepts connections", name)
    url = f"postgresql://throttle:dev-pw@127.0.0.1:{port}/tdb"
    proc = subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", "migrate"],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "applied" in proc.stdout

    async def refused() -> str:
        try:
            await asyncpg.connect(url.replace("dev-pw", "wrong"))
        except asyncpg.InvalidPasswordError as exc:
            return type(exc).__name__
        return "accepted"

    assert asyncio.run(refused()) == "InvalidPasswordError"


def test_the_simulator_serves_hubspot_and_stops_on_sigterm(
    dev_image_archives: dict[str, Path], containers: list[str]
) -> None:
    port = free_port()
    name = start(
        containers, "--env=HUBSPOT_CLIENT_SECRET=sim-secret", REFS["simulator"],
        "--host", "127.0.0.1", "--port", str(port),
    )  # fmt: skip

    def answers() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/_sim/faults", timeout=2).ok
        except requests.RequestException:
            return False

    until(answers, "the simulator answers", name)
    token = requests.post(
        f"http://127.0.0.1:{port}/_sim/portals", json={"portalId": 777}, timeout=5
    )
    assert token.status_code == 201, token.text
    assert token.json()["hub_id"] == 777
    # As a container's PID 1 the simulator once ignored SIGTERM: every pod delete waited out the
    # grace period (here podman's --time) before SIGKILL.
    started = time.monotonic()
    assert podman("stop", "--time", "20", name).returncode == 0
    assert time.monotonic() - started < 10


def test_the_runtime_image_holds_no_devtools_and_the_simulator_image_does(
    dev_image_archives: dict[str, Path],
) -> None:
    probe = "import importlib.util as u; print(u.find_spec('throttle_dev') is not None)"
    for ref, expected in ((REFS["throttle"], "False"), (REFS["simulator"], "True")):
        proc = podman("run", "--rm", *RESTRICTED, "--entrypoint=python", ref, "-c", probe)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected, ref
