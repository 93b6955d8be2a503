"""The install-and-check script's in-cluster probe (throttle_dev.cluster_check), on the local
stack set up as the dev profile sets up a cluster: PUBLIC_URL is an address the probe does not
call (a port-forward's http://localhost:PORT), HubSpot's app base is reached at another address,
and the probe still installs the app through the OAuth flow, gets BLOCK for its signed action
and sees the simulator record the completion the dispatcher sent."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from throttle_dev import cluster_check
from throttle_dev.stack import Stack, StackConfig

pytestmark = pytest.mark.slow

PORTAL = 20240001


@pytest.fixture
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="throttle-cluster-check-"))
    manifests = workdir / "manifests"
    manifests.mkdir()
    policy = yaml.safe_load((cluster_check.DEMO_POLICIES / "01-enrichment.yaml").read_text())
    assert policy["spec"]["portalId"] == cluster_check.DEMO_PORTAL == PORTAL
    (manifests / "enrichment.yaml").write_text(yaml.safe_dump(policy))
    stack = Stack(StackConfig(root=workdir / "stack", dispatchers=1, manifests=manifests))
    # What HubSpot knows (and signatures cover) is not where the probe reaches the webhook, as
    # inside a cluster: the redirects name `localhost`, the probe calls 127.0.0.1.
    stack.config.settings["public_url"] = f"http://localhost:{stack.webhook_port}"
    stack.config.settings["hubspot_app_base"] = f"http://localhost:{stack.simulator_port}"
    with stack:
        yield stack
    shutil.rmtree(workdir, ignore_errors=True)


def test_the_probe_installs_sends_one_signed_action_and_sees_it_completed(stack: Stack) -> None:
    result = asyncio.run(
        cluster_check.probe(
            stack.webhook_url,
            f"http://localhost:{stack.webhook_port}",
            PORTAL,
            stack.simulator_url,
            app_base=f"http://localhost:{stack.simulator_port}",
            traffic=20,
        )
    )
    assert result["answer"] == "BLOCK", result
    assert result["traffic"] == {"BLOCK": 20}, result
    assert len(result["completed"]) == 1, result
    # HubSpot's side: the simulator recorded exactly that completion, once.
    report = stack.simulator_url + f"/_sim/completions?portalId={PORTAL}"
    import requests

    completions = requests.get(report, timeout=5).json()["completions"]
    assert [c["callbackId"] for c in completions][:1] == result["completed"]


def test_a_public_url_that_is_not_the_webhooks_fails_at_the_install_naming_the_step(
    stack: Stack,
) -> None:
    """Given a PUBLIC_URL other than the webhook's, the redirect back from HubSpot's consent page
    is not rewritten to the webhook the probe talks to: the install fails, and says where."""
    outcome = CliRunner().invoke(
        cluster_check.main,
        [
            "probe",
            "--webhook", stack.webhook_url,
            "--public-url", f"http://127.0.0.2:{stack.webhook_port}",
            "--simulator", stack.simulator_url,
            "--app-base", f"http://localhost:{stack.simulator_port}",
        ],
    )  # fmt: skip
    assert outcome.exit_code != 0
    assert "callback" in str(outcome.exception), outcome.exception
