"""The OpenAPI document: complete, and true of the real server (schemathesis).

The webhook runs as a real `throttle webhook` process (the CLI's `serve`, signals, access log)
against real Redis and PostgreSQL; schemathesis generates requests from /api/openapi.json and
fails on any 5xx, any status the document does not list, or a body that does not match it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.webhook import Webhook, settings_env
from throttle import __version__
from throttle.history.migrations import migrate
from throttle.settings import Settings
from throttle.webhook_service.errors import no_route
from throttle.webhook_service.openapi import document

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = Path(__file__).with_name("openapi_document.json")


def test_document_is_the_recorded_one() -> None:
    """The document as it was when it was one literal: restructuring it must not change a byte.

    After a deliberate change to the API, write the new document to the fixture (with
    `"version": "VERSION"`) and review its diff.
    """
    doc = json.loads(json.dumps(document()))  # a copy: document() is cached
    doc["info"]["version"] = "VERSION" if doc["info"]["version"] == __version__ else "?"
    assert json.dumps(doc, indent=2) + "\n" == DOCUMENT.read_text()


async def test_every_route_is_documented(webhook: Webhook) -> None:
    doc = document()
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = set()
    for route in webhook.app.router.routes():
        if route.method == "HEAD" or route.handler is no_route:
            continue  # no_route answers the 404/405 of every path nothing else serves
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        path = path.replace("{portal_id}", "{portalId}").replace("{action_id}", "{actionId}")
        served.add((route.method, path))
    assert served == documented
    response = await webhook.client.get("/api/openapi.json")
    assert response.status == 200
    assert (await response.json())["openapi"].startswith("3.1")


@pytest.fixture
def webhook_process(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(require_installed_portal=False, host="127.0.0.1")
    assert settings.database_url is not None
    asyncio.run(migrate(settings.database_url))
    log = (tmp_path / "webhook.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "throttle.cli.main", "webhook"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{settings.port}/readyz"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "webhook.log").read_text()
        assert time.monotonic() < deadline, "webhook did not become ready"
        time.sleep(0.2)
    try:
        yield settings
    finally:
        proc.terminate()
        rc = proc.wait(timeout=20)
        log.close()
        # Graceful shutdown: SIGTERM ends the process cleanly, not by a traceback.
        assert rc == 0, (tmp_path / "webhook.log").read_text()[-3000:]


def test_schemathesis_finds_no_server_error_or_undocumented_status(
    webhook_process: Settings, tmp_path: Path
) -> None:
    settings = webhook_process
    assert settings.throttle_api_token is not None
    base = f"http://127.0.0.1:{settings.port}"
    token = settings.throttle_api_token.get_secret_value()
    # A global default policy, so signed generated actions reach the enqueue script.
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{base}/api/config",
        data=json.dumps({"portalId": 0, "name": "default", "rate": {"limit": 5}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 201
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.webhook.schemathesis_hooks",
        "PYTHONPATH": str(REPO),
        "THROTTLE_TEST_CLIENT_SECRET": settings.client_secrets[0],
        "THROTTLE_TEST_PUBLIC_URL": base,
    }
    started = time.monotonic()
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{base}/api/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            "12",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-redirects",
            "0",
            "--workers",
            "1",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "-H",
            f"Authorization: Bearer {token}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    print(f"schemathesis: {elapsed:.1f}s\n{result.stdout[-2500:]}")
