"""The image, built and run: every component starts from it the way the chart runs it (uid 10001,
read-only root filesystem, no capabilities, no privilege escalation, a tmpfs on /tmp only) against
the real Redis and PostgreSQL of the session.

The image is built with podman from a Debian base made from Debian's packages
(`scripts/image.sh` with IMAGE_BASE=debian: no image registry needed). The base's root
filesystem is cached under ~/.cache/throttle/image/ and podman keeps the layers, so a warm run
rebuilds only the layer holding the package. podman, mmdebstrap and runc are Debian packages
`make deps` installs: without them this test fails, it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.fixtures.live_webhook import dumps, execution
from tests.fixtures.podman import RESTRICTED as CONTAINER_RESTRICTED
from tests.fixtures.podman import podman, require_podman
from throttle.hubspot.signatures import sign_v3
from throttle_dev.localenv import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/throttle:test"
SECRET = "image-test-client-secret"
POLICY = """apiVersion: throttle.dev/v1beta1
kind: ThrottlePolicy
metadata:
  name: from-the-image
spec:
  portalId: 4242
  rate: {limit: 5, period: 1m}
"""

RESTRICTED = ["--network=host", *CONTAINER_RESTRICTED]
"""The chart's securityContext, as podman flags (host network: Redis and PostgreSQL are on
loopback)."""


@pytest.fixture(scope="module")
def image() -> str:
    require_podman()
    proc = subprocess.run(
        ["bash", "scripts/image.sh"],
        cwd=REPO,
        env={**os.environ, "IMAGE": IMAGE, "IMAGE_BASE": "debian", "ENGINE": "podman"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return IMAGE


@pytest.fixture
def env_file(redis_server: RedisServer, postgres_server: PostgresServer, tmp_path: Path) -> Path:
    """Settings for every component, as the chart's ConfigMap and Secret give them."""
    redis_server.sync_client().flushall()
    database = postgres_server.create_database(f"img_{uuid.uuid4().hex[:12]}")
    path = tmp_path / "env"
    values = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": database,
        "HUBSPOT_CLIENT_ID": "image-test",
        "HUBSPOT_CLIENT_SECRET": SECRET,
        "ENCRYPTION_KEY": "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=",
        "SECRET_KEY_BASE": "s" * 48,
        "THROTTLE_API_TOKEN": "t" * 32,
        "REQUIRE_INSTALLED_PORTAL": "false",
        # Never the real HubSpot from a test: a closed local port.
        "HUBSPOT_API_BASE": f"http://127.0.0.1:{free_port()}",
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def run(image: str, env_file: Path, *args: str, extra: tuple[str, ...] = ()) -> str:
    proc = podman("run", "--rm", *RESTRICTED, f"--env-file={env_file}", *extra, image, *args)
    assert proc.returncode == 0, f"throttle {' '.join(args)}: {proc.stdout}{proc.stderr}"[-4000:]
    return proc.stdout


def start(
    image: str, env_file: Path, names: list[str], *args: str, extra: tuple[str, ...] = ()
) -> str:
    name = f"throttle-test-{args[0]}-{uuid.uuid4().hex[:8]}"
    proc = podman(
        "run", "--detach", f"--name={name}", *RESTRICTED, f"--env-file={env_file}", *extra,
        image, *args,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names.append(name)
    return name


def wait_ok(url: str, name: str, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = requests.get(url, timeout=2)
            if answer.status_code == 200:
                return answer
            last = f"{answer.status_code} {answer.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            logs = podman("logs", name)
            pytest.fail(f"{name} is {state}: {logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer 200 within {timeout:.0f}s (last: {last})")


def test_the_image_runs_as_uid_10001_with_nothing_to_write_but_tmp(image: str) -> None:
    config = json.loads(podman("inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["throttle"]
    assert config["Cmd"] == ["webhook"]
    probe = (
        "import os; print(os.getuid(), os.getgid());"
        "open('/tmp/ok', 'w').write('x');"
        "print(all(not os.access(p, os.W_OK) for p in ('/', '/app', '/opt/throttle')))"
    )
    proc = podman("run", "--rm", *RESTRICTED, "--entrypoint=python", image, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "10001", "True"]


def test_every_component_runs_from_the_image(
    image: str, env_file: Path, containers: list[str], tmp_path: Path
) -> None:
    # migrate: the chart's hook Job, run twice as every upgrade does.
    for _ in range(2):
        run(image, env_file, "migrate")

    # operator in local mode (no cluster in the container's network): the policy from a
    # read-only mount reaches Redis.
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(POLICY)
    policies.chmod(0o755)
    (policies / "policy.yaml").chmod(0o644)
    operator_port, dispatcher_port, webhook_port = free_port(), free_port(), free_port()
    operator = start(
        image, env_file, containers, "operator", "--local", "/policies",
        extra=(f"--volume={policies}:/policies:ro", f"--env=METRICS_PORT={operator_port}"),
    )  # fmt: skip
    wait_ok(f"http://127.0.0.1:{operator_port}/healthz", operator)

    dispatcher = start(
        image, env_file, containers, "dispatcher", extra=(f"--env=METRICS_PORT={dispatcher_port}",)
    )
    wait_ok(f"http://127.0.0.1:{dispatcher_port}/healthz", dispatcher)
    assert "throttle_" in wait_ok(f"http://127.0.0.1:{dispatcher_port}/metrics", dispatcher).text

    public = f"http://127.0.0.1:{webhook_port}"
    webhook = start(
        image, env_file, containers, "webhook",
        extra=(f"--env=PORT={webhook_port}", f"--env=PUBLIC_URL={public}"),
    )  # fmt: skip
    wait_ok(f"{public}/readyz", webhook)

    # HubSpot's signed action is held by the policy the operator applied: Lua scripts, package
    # data and settings all work from the image.
    body = dumps(
        execution(
            portal=4242,
            origin={"portalId": 4242, "actionDefinitionId": 1, "actionDefinitionVersion": 1},
            inputFields={"policy": "from-the-image"},
        )
    )
    url = f"{public}/api/hubspot/action"
    deadline = time.monotonic() + 30
    while True:
        now_ms = int(time.time() * 1000)
        headers = {
            "X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", url, body, now_ms),
            "X-HubSpot-Request-Timestamp": str(now_ms),
            "Content-Type": "application/json",
        }
        answer = requests.post(url, data=body, headers=headers, timeout=10)
        state = answer.json().get("outputFields", {}).get("hs_execution_state")
        if state == "BLOCK" or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the operator may not have applied the policy yet
    assert answer.status_code == 200, answer.text
    assert state == "BLOCK", answer.text
    for name in (operator, dispatcher, webhook):
        status = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert status == "running", podman("logs", name).stderr[-3000:]
