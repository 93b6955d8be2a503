"""Install the chart's development profile on a cluster and check it works, step by step: what
`make kind` runs against a kind cluster and the node test against the test node, so what runs
here is what users run.

    python -m throttle_dev.cluster_check install-and-check --kubeconfig ~/.kube/config \\
        --load 'kind load image-archive {archive} --name throttle'

1. builds the images (scripts/images.sh) unless archives are given, and loads each into the
   cluster's nodes with the loader (`{archive}` and `{name}` are filled in; a Python caller passes
   a function instead);
2. `helm upgrade --install` with deploy/helm/throttle/values-dev.yaml (the migration hook runs,
   after the development PostgreSQL), then waits for every pod to be Ready through its probes;
3. checks the release's migration hook succeeded;
4. applies the demo's ThrottlePolicies (deploy/examples/demo) and waits for the operator to make
   them Ready;
5. from inside the cluster (`kubectl exec` in the simulator's pod, no port-forward): installs the
   app in a portal through the OAuth flow, sends one signed action to the webhook's Service, checks
   the answer is BLOCK and that the simulator, as HubSpot, then sees it completed; then sends more
   of the demo's traffic (`--traffic`) for the policy's queue to fill;
6. prints `kubectl get tp` and `throttle status` run in the webhook's pod while it drains.

`probe` is step 5's part inside the simulator's pod (its image holds throttle_dev).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from throttle_dev.demo.install import client_session, install_portal

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "throttle"
VALUES_DEV = CHART / "values-dev.yaml"
DEMO_POLICIES = REPO / "deploy" / "examples" / "demo"
DEMO_PORTAL = 20240001
DEMO_POLICY = "enrichment"
"""The probe's action names the demo's `enrichment` policy, of portal DEMO_PORTAL."""

ROLLED_ON_UPGRADE = ("webhook", "dispatcher", "operator", "hubspot-simulator")

Loader = Callable[[str, Path], None]
"""Loads one image archive (name, path) into every node of the cluster."""


class CheckFailed(RuntimeError):
    """A step did not do what it should; the message says which and what was seen."""


def say(text: str) -> None:
    click.echo(text, err=True)


@dataclass
class Cluster:
    """kubectl and helm against one cluster, in the dev profile's namespace."""

    kubeconfig: Path
    namespace: str = "throttle"
    release: str = "throttle"
    kubectl_bin: str = "kubectl"
    helm_bin: str = "helm"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 900, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # argv built here, never a shell
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, "KUBECONFIG": str(self.kubeconfig)},
            input=input or None,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CheckFailed(
                f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr[-3000:]}"
            )
        return proc

    def kubectl(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        argv = [self.kubectl_bin, "--namespace", self.namespace, *args]
        return self.run(argv, check=check, timeout=timeout).stdout

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "--output=json"))

    def helm(self, *args: str, timeout: float = 900) -> str:
        argv = [self.helm_bin, "--namespace", self.namespace, *args]
        return self.run(argv, timeout=timeout).stdout


def dev_profile() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES_DEV.read_text())
    return values


def build_images() -> dict[str, Path]:
    """scripts/images.sh: every image of the dev profile as an archive (cached)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "images.sh")],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CheckFailed(f"scripts/images.sh exited {proc.returncode} (its output is above)")
    pairs = (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in pairs}


def command_loader(template: str, cluster: Cluster) -> Loader:
    """A loader running a shell-free command per archive, e.g.
    `kind load image-archive {archive} --name throttle`."""

    def load(name: str, archive: Path) -> None:
        argv = [part.format(archive=archive, name=name) for part in shlex.split(template)]
        cluster.run(argv, timeout=900)

    return load


def container_state(status: dict[str, Any]) -> str:
    """`running`, `waiting (ErrImageNeverPull)`, ...: what `kubectl get pods` would show."""
    state: dict[str, dict[str, Any]] = status.get("state", {})
    for name, detail in state.items():
        reason = detail.get("reason")
        return f"{name} ({reason})" if reason else name
    return "?"


def wait_pods_ready(cluster: Cluster, timeout: float = 600) -> list[str]:
    """Every pod of the namespace Ready (not the migration Job's, nor those being deleted).
    Prints what it still waits for every 15 s; returns the pods' names."""
    deadline = time.monotonic() + timeout
    last_said = 0.0
    while True:
        pods = cluster.kubectl_json("get", "pods")["items"]
        waiting = []
        names = []
        for pod in pods:
            owners = {o["kind"] for o in pod["metadata"].get("ownerReferences", [])}
            if "Job" in owners or pod["metadata"].get("deletionTimestamp"):
                continue  # a Job's pod ends, never Ready; a pod being deleted is on its way out
            names.append(pod["metadata"]["name"])
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") != "True":
                states = [container_state(c) for c in pod["status"].get("containerStatuses", [])]
                detail = ", ".join(states) or pod["status"].get("phase", "?")
                waiting.append(f"{pod['metadata']['name']}: {detail}")
        if names and not waiting:
            return names
        if time.monotonic() > deadline:
            raise CheckFailed("pods not Ready in time:\n  " + "\n  ".join(waiting or ["no pods"]))
        if time.monotonic() - last_said > 15:
            say("   waiting for: " + "; ".join(waiting or ["the first pods"]))
            last_said = time.monotonic()
        time.sleep(2)


def migration_hook_phase(cluster: Cluster) -> dict[str, str]:
    """The release's hooks and the phase of their last run, from Helm's record of the release
    (the migration Job itself is deleted once it succeeded)."""
    release = json.loads(cluster.helm("status", cluster.release, "--output=json"))
    return {
        f"{h['kind']}/{h['name']}": h.get("last_run", {}).get("phase", "")
        for h in release.get("hooks", [])
    }


def wait_policies_ready(cluster: Cluster, names: Sequence[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        items = cluster.kubectl_json("get", "throttlepolicies")["items"]
        ready = {
            i["metadata"]["name"]
            for i in items
            for c in i.get("status", {}).get("conditions", [])
            if c.get("type") == "Ready" and c.get("status") == "True"
        }
        missing = sorted(set(names) - ready)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"ThrottlePolicies not Ready after {timeout:.0f}s: {missing}")
        time.sleep(2)


def wait_queue_shown(cluster: Cluster, policy: str, timeout: float = 45) -> None:
    """Until the operator's status of `policy` shows a queue (it refreshes the figures
    `kubectl get tp` shows every few seconds), so what is printed next is the live queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.kubectl_json("get", "throttlepolicy", policy).get("status", {})
        if int(status.get("queueDepth") or 0) > 1:
            return
        time.sleep(2)
    say(f"   (the status of {policy} showed no queue within {timeout:.0f}s)")


def install_and_check(
    cluster: Cluster,
    load: Loader,
    archives: dict[str, Path] | None = None,
    set_values: Sequence[str] = (),
    traffic: int = 200,
) -> dict[str, Any]:
    """Steps 1-6 (the module's docstring); raises CheckFailed naming the step that failed."""
    profile = dev_profile()
    fullname = profile["fullnameOverride"]

    say("==> 1. images: build (scripts/images.sh, cached) and load into the cluster's nodes")
    archives = archives or build_images()
    for name, archive in sorted(archives.items()):
        say(f"   loading {name}: {archive}")
        load(name, archive)

    say(
        f"==> 2. helm upgrade --install {cluster.release} with values-dev.yaml "
        f"(namespace {cluster.namespace}); then every pod Ready through its probes"
    )
    sets = [a for s in set_values for a in ("--set", s)]
    cluster.helm(
        "upgrade", "--install", cluster.release, str(CHART), "--create-namespace",
        "--values", str(VALUES_DEV), "--wait", "--timeout=10m", *sets,
    )  # fmt: skip
    release = json.loads(cluster.helm("status", cluster.release, "--output=json"))
    if release.get("version", 1) > 1:
        # The images keep their tag (`dev`) whatever they hold, so an upgrade changes no pod
        # template: restart the pods whose images may have been rebuilt. Not Redis and
        # PostgreSQL: their data is on emptyDir volumes, which a new pod does not get back.
        rolled = [f"deployment/{fullname}-{c}" for c in ROLLED_ON_UPGRADE]
        say(f"   an upgrade: restarting {', '.join(rolled)} for the images just loaded")
        cluster.kubectl("rollout", "restart", *rolled)
        for name in rolled:
            cluster.kubectl("rollout", "status", name, "--timeout=300s", timeout=330)
    pods = wait_pods_ready(cluster)
    say("   ready: " + ", ".join(sorted(pods)))

    say("==> 3. the migration hook ran (Helm's record of the release)")
    hooks = migration_hook_phase(cluster)
    job = f"Job/{fullname}-migrations"
    if hooks.get(job) != "Succeeded":
        raise CheckFailed(f"{job} did not succeed: hooks {hooks}")
    postgres = hooks.get(f"Deployment/{fullname}-postgres") or "run at the install, not again"
    say(f"   {job}: Succeeded (the dev PostgreSQL hook before it: {postgres})")

    say("==> 4. kubectl apply the demo's ThrottlePolicies (deploy/examples/demo)")
    cluster.kubectl("apply", "--filename", str(DEMO_POLICIES))
    policies = [
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in sorted(DEMO_POLICIES.glob("*.yaml"))
    ]
    wait_policies_ready(cluster, policies)
    say(f"   Ready: {', '.join(policies)}")

    say(
        "==> 5. inside the cluster (kubectl exec in the simulator's pod): install the app in "
        f"portal {DEMO_PORTAL}, send one signed action to the webhook's Service, BLOCK -> completed"
    )
    webhook = f"http://{fullname}-webhook.{cluster.namespace}.svc:80"
    out = cluster.kubectl(
        "exec", f"deploy/{fullname}-hubspot-simulator", "--",
        "python", "-m", "throttle_dev.cluster_check", "probe",
        "--webhook", webhook, "--public-url", profile["settings"]["publicUrl"],
        "--portal", str(DEMO_PORTAL), "--app-base", profile["settings"]["hubspotAppBase"],
        "--traffic", str(traffic),
        timeout=300,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    say(f"   {json.dumps(result)}")
    if result.get("answer") != "BLOCK" or not result.get("completed"):
        raise CheckFailed(f"the action was not held and then completed: {result}")

    say(f"==> 6. what the cluster shows, while the dispatcher releases {traffic} more executions")
    if traffic:
        wait_queue_shown(cluster, DEMO_POLICY)
    say("$ kubectl get tp")
    say(cluster.kubectl("get", "throttlepolicies").rstrip())
    say(f"$ kubectl exec deploy/{fullname}-webhook -- throttle status")
    status = [
        "exec",
        f"deploy/{fullname}-webhook",
        "--",
        "env",
        "COLUMNS=140",
        "throttle",
        "status",
    ]
    say(cluster.kubectl(*status).rstrip())
    return {"pods": pods, "hooks": hooks, "policies": policies, "probe": result}


# ---- step 5, inside the simulator's pod ---------------------------------------------------------


async def probe(
    webhook: str,
    public_url: str,
    portal: int,
    simulator: str,
    app_base: str | None = None,
    policy: str = DEMO_POLICY,
    wait_s: float = 90,
    traffic: int = 0,
) -> dict[str, Any]:
    """Install the app in `portal` through the webhook's OAuth flow, send one signed action to
    `webhook` (signed for `public_url`, the URL HubSpot knows) and wait until the simulator has
    seen it completed. Judged from HubSpot's side: the simulator's record of completions.
    `app_base` (HUBSPOT_APP_BASE, the simulator's Service) is reached at `simulator` instead:
    a pod calling itself through its own Service needs hairpin routing some networks lack.
    `traffic` more executions are sent afterwards, for the policy's queue to show live figures
    (`kubectl get tp`) while the dispatchers release them at its rate."""
    rewrite = {public_url: webhook, **({app_base: simulator} if app_base else {})}
    async with client_session() as session:
        await install_portal(session, webhook, portal, rewrite)
        completions = f"{simulator}/_sim/completions?portalId={portal}"
        async with session.get(completions) as response:
            before = len((await response.json())["completions"])
        plan = {
            "actionUrl": f"{webhook}/api/hubspot/action",
            "signUrl": f"{public_url}/api/hubspot/action",
            "executions": 1,
            "portals": [portal],
            "policy": policy,
        }
        # The webhook may not have read the policy yet (the operator just made it Ready): an
        # action it cannot place is answered FAIL_CONTINUE, ending that execution; send another.
        deadline = time.monotonic() + wait_s
        while True:
            async with session.post(f"{simulator}/_sim/drive", json=plan) as response:
                drive = await response.json()
            answers = drive.get("answers", {})
            answer = next(iter(answers), None) if len(answers) == 1 else None
            if answer == "BLOCK" or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        completed: list[dict[str, Any]] = []
        while answer == "BLOCK" and time.monotonic() < deadline:
            async with session.get(completions) as response:
                completed = (await response.json())["completions"][before:]
            if completed:
                break
            await asyncio.sleep(0.5)
        flow: dict[str, Any] = {}
        if traffic and completed:
            async with session.post(
                f"{simulator}/_sim/drive", json={**plan, "executions": traffic}
            ) as response:
                flow = (await response.json()).get("answers", {})
    return {
        "portal": portal,
        "policy": policy,
        "answer": answer,
        "drive": {k: drive.get(k) for k in ("sent", "answers", "problems")},
        "completed": [c["callbackId"] for c in completed],
        "traffic": flow,
    }


# ---- command line -------------------------------------------------------------------------------


@click.group()
def main() -> None:
    """Install the dev profile on a cluster and check it (make kind, the node test)."""


@main.command("install-and-check")
@click.option("--kubeconfig", type=click.Path(exists=True, path_type=Path), required=True)
@click.option(
    "--load",
    "load_template",
    required=True,
    help="Command loading one archive into the nodes; {archive} and {name} are filled in, e.g. "
    "'kind load image-archive {archive} --name throttle'.",
)
@click.option("--namespace", default="throttle", show_default=True)
@click.option("--release", default="throttle", show_default=True)
@click.option("--kubectl", "kubectl_bin", default="kubectl", show_default=True)
@click.option("--helm", "helm_bin", default="helm", show_default=True)
@click.option("--set", "set_values", multiple=True, help="Extra `helm --set` values.")
@click.option(
    "--traffic", type=int, default=200, show_default=True, help="Executions sent after the check."
)
def install_and_check_command(
    kubeconfig: Path,
    load_template: str,
    namespace: str,
    release: str,
    kubectl_bin: str,
    helm_bin: str,
    set_values: tuple[str, ...],
    traffic: int,
) -> None:
    """Steps 1-6 of the module's docstring, each printed as it runs."""
    cluster = Cluster(kubeconfig, namespace, release, kubectl_bin, helm_bin)
    loader = command_loader(load_template, cluster)
    try:
        install_and_check(cluster, loader, set_values=set_values, traffic=traffic)
    except CheckFailed as exc:
        raise click.ClickException(str(exc)) from None
    say("==> the dev profile works")


@main.command("probe")
@click.option("--webhook", required=True, help="The webhook's Service URL.")
@click.option("--public-url", required=True, help="PUBLIC_URL: what signatures cover.")
@click.option("--portal", type=int, default=DEMO_PORTAL, show_default=True)
@click.option("--simulator", default="http://127.0.0.1:8090", show_default=True)
@click.option("--app-base", default=None, help="HUBSPOT_APP_BASE, reached at --simulator.")
@click.option("--traffic", type=int, default=0, help="Executions sent after the check.")
def probe_command(
    webhook: str, public_url: str, portal: int, simulator: str, app_base: str | None, traffic: int
) -> None:
    """Step 5, run inside the simulator's pod; prints its result as one JSON line."""
    base = public_url.rstrip("/")
    result = asyncio.run(
        probe(webhook.rstrip("/"), base, portal, simulator, app_base, traffic=traffic)
    )
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
