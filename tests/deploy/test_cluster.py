"""The chart against the real kube-apiserver fixture: server-side dry-run of everything it renders,
`helm install` creating every object, least-privilege RBAC per ServiceAccount, and the operator
running as the chart's ServiceAccount reconciling an example ThrottlePolicy.

The test API server has no controllers, so nothing runs a Job: while `helm install` waits for the
migration hook, the test plays the Job controller (reads back the hook's objects, then marks the
Job complete) so helm goes on exactly as in a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.fixtures.helm_chart import (
    CHART,
    REPO,
    THIRD_PARTY_CRDS,
    VALUES_ALL,
    VALUES_DEV,
    VALUES_REQUIRED,
    Helm,
    by_kind,
    one,
)
from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import OperatorThread
from tests.fixtures.services import RedisServer
from throttle.cli.main import main as cli
from throttle.settings import Settings

pytestmark = pytest.mark.kube

RELEASE = "rel"
TP = ("throttle.dev", "throttlepolicies")


# ---- helpers ------------------------------------------------------------------------------------


def create_namespace(kube: KubeEnv, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    kube.kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="module")
def third_party_crds(kube: KubeEnv) -> None:
    """Stand-ins for the Prometheus Operator's and KEDA's CRDs (the chart brings its own)."""
    kube.apply(THIRD_PARTY_CRDS)
    for path in THIRD_PARTY_CRDS.glob("*.yaml"):
        kube.wait_crd_established(yaml.safe_load(path.read_text())["metadata"]["name"])


def helm_for(kube: KubeEnv, helm: Helm) -> list[str]:
    return [helm.path, "--kubeconfig", str(kube.kubeconfig)]


@dataclass
class FakeJobController:
    """Completes the migration hook Job that helm waits for, after reading back its objects."""

    kube: KubeEnv
    namespace: str
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> FakeJobController:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread
        self._thread.join(30)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                jobs = self.kube.kubectl_json("get", "jobs", "-n", self.namespace)["items"]
                for job in jobs:
                    if not job.get("status", {}).get("conditions"):
                        self._complete(job)
                time.sleep(0.2)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _complete(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        self.seen[f"Job/{name}"] = job
        sa = job["spec"]["template"]["spec"]["serviceAccountName"]
        self.seen[f"ServiceAccount/{sa}"] = self.kube.kubectl_json(
            "get", "serviceaccount", sa, "-n", self.namespace
        )
        for env in job["spec"]["template"]["spec"]["containers"][0].get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                self.seen[f"Secret/{ref['name']}"] = self.kube.kubectl_json(
                    "get", "secret", ref["name"], "-n", self.namespace
                )
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "startTime": now,
            "completionTime": now,
            "succeeded": 1,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
                for t in ("SuccessCriteriaMet", "Complete")
            ],
        }
        self.kube.kubectl(
            "patch",
            "job",
            name,
            "-n",
            self.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )


@dataclass
class Install:
    namespace: str
    manifest: list[dict[str, Any]]
    hooks: dict[str, dict[str, Any]]
    notes: str


def helm_install(kube: KubeEnv, helm: Helm, namespace: str, *args: str | Path) -> Install:
    cmd = [
        *helm_for(kube, helm),
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        namespace,
        "--timeout",
        "90s",
        *map(str, args),
    ]
    with FakeJobController(kube, namespace) as jobs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=helm.env())
    assert jobs.error is None, jobs.error
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = subprocess.run(
        [*helm_for(kube, helm), "get", "manifest", RELEASE, "--namespace", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        env=helm.env(),
        check=True,
    ).stdout
    return Install(
        namespace=namespace,
        manifest=[d for d in yaml.safe_load_all(manifest) if d],
        hooks=jobs.seen,
        notes=proc.stdout,
    )


@pytest.fixture(scope="module")
def plain_install(kube: KubeEnv, helm: Helm, third_party_crds: None) -> Install:
    """`helm install` with the chart's defaults and the one value it requires (the public URL),
    as a newcomer would run it."""
    return helm_install(kube, helm, create_namespace(kube, "plain"), "-f", VALUES_REQUIRED)


@pytest.fixture(scope="module")
def full_install(kube: KubeEnv, helm: Helm, third_party_crds: None) -> Install:
    """Every feature on; the operator watches only the release namespace."""
    namespace = create_namespace(kube, "full")
    return helm_install(
        kube,
        helm,
        namespace,
        "-f",
        VALUES_ALL,
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
    )


def rules_of(kube: KubeEnv, namespace: str, user: str) -> set[tuple[str, str, str, str]]:
    """What `user` may do in `namespace` (cluster-wide rules included), as
    (apiGroup, resource, verb, resourceName or "*") facts, from a SelfSubjectRulesReview."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    out = kube.kubectl(
        "create",
        "--validate=false",
        "-f",
        "-",
        "-o",
        "json",
        as_user=user,
        input=json.dumps(review),
    ).stdout
    facts = set()
    for rule in json.loads(out)["status"]["resourceRules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        facts.add((group, resource, verb, name))
    return facts


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def facts(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        out.add((group, resource, verb, name))
    return out


def can(kube: KubeEnv, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i`; "kind.group/sub" asks about the subresource `sub`."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource]
    if subresource:
        args.append(f"--subresource={subresource}")
    if namespace:
        args += ["-n", namespace]
    proc = kube.kubectl(*args, as_user=user, check=False)
    return proc.stdout.strip() == "yes"


# ---- server-side dry-run ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "all-features", "dev"])
def test_every_rendered_object_passes_server_side_dry_run(
    kube: KubeEnv, helm: Helm, namespace: str, third_party_crds: None, which: str
) -> None:
    values = [{"all-features": VALUES_ALL, "dev": VALUES_DEV}.get(which, VALUES_REQUIRED)]
    objects = helm.template(values=values, namespace=namespace, extra=["--include-crds"])
    assert len(objects) > 15
    proc = kube.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(objects), proc.stdout


# ---- helm install -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "full"])
def test_helm_install_creates_every_object(
    kube: KubeEnv, request: pytest.FixtureRequest, which: str
) -> None:
    install: Install = request.getfixturevalue(f"{which}_install")
    assert len(install.manifest) > 15
    for obj in install.manifest:
        kind, name = obj["kind"], obj["metadata"]["name"]
        ns = obj["metadata"].get("namespace")
        args = ["get", kind, name] + (["-n", ns] if ns else [])
        live = kube.kubectl_json(*args)
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if kind == "Deployment":
            assert live["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # The migration hook ran before the release's objects, then went away with its helpers.
    hook_kinds = sorted(key.split("/")[0] for key in install.hooks)
    expected = ["Job", "ServiceAccount"] + (["Secret"] if which == "full" else [])
    assert hook_kinds == sorted(expected)
    for key in install.hooks:
        kind, name = key.split("/")
        gone = kube.kubectl("get", kind, name, "-n", install.namespace, check=False)
        assert gone.returncode != 0, f"hook {key} should be deleted after it succeeded"
    # The ThrottlePolicy CRD is installed (from the chart's crds/ or already there).
    kube.kubectl("get", "crd", "throttlepolicies.throttle.dev")


def test_upgrade_runs_the_migrations_again(
    kube: KubeEnv, helm: Helm, plain_install: Install
) -> None:
    ns = plain_install.namespace
    cmd = [
        *helm_for(kube, helm),
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        ns,
        "--reuse-values",
        "--set",
        "webhook.replicaCount=3",
        "--timeout",
        "90s",
    ]
    with FakeJobController(kube, ns) as jobs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=helm.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert jobs.error is None, jobs.error
    assert sorted(k.split("/")[0] for k in jobs.seen) == ["Job", "ServiceAccount"]
    webhook = kube.kubectl_json("get", "deployment", f"{RELEASE}-throttle-webhook", "-n", ns)
    assert webhook["spec"]["replicas"] == 3


def test_notes_tell_how_to_register_the_action(
    kube: KubeEnv, full_install: Install, plain_install: Install
) -> None:
    notes = full_install.notes
    assert "PUBLIC_URL=https://throttle.example.com" in notes
    assert "The action URL is https://throttle.example.com/api/hubspot/action" in notes
    assert "WARNING" not in notes
    # The command in the notes is one the CLI accepts.
    match = re.search(r"(throttle hubspot register-action [^\n]*)", notes)
    assert match, notes
    args = shlex.split(match.group(1))[1:]
    assert args == ["hubspot", "register-action", "--app-id", "1234567"]
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    # The example policy in the notes is one the API server accepts.
    policy = re.search(r"<<'YAML'\n(.*?)\n\s*YAML", notes, re.S)
    assert policy, notes
    kube.kubectl("apply", "--dry-run=server", "-f", "-", input=textwrap.dedent(policy.group(1)))
    # Defaults: no ingress, no secrets; the notes say what is missing instead of a broken promise.
    assert "PUBLIC_URL=https://hubspot-calls.example.net " in plain_install.notes
    assert "WARNING: no value for DATABASE_URL" in plain_install.notes


# ---- RBAC: each ServiceAccount can do exactly what its component needs --------------------------


def test_rbac_bindings_only_name_the_webhook_and_operator(full_install: Install) -> None:
    subjects = {
        s["name"]
        for kind in ("RoleBinding", "ClusterRoleBinding")
        for b in by_kind(full_install.manifest, kind)
        for s in b["subjects"]
    }
    assert subjects == {f"{RELEASE}-throttle-operator", f"{RELEASE}-throttle-webhook"}


def operator_expected(namespace: str) -> set[tuple[str, str, str, str]]:
    """deploy/rbac/operator-role.yaml's rules, with the chart's release-specific Lease name."""
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rbac" / "operator-role.yaml").read_text()))
    expected = set()
    for doc in docs:
        for fact in facts(doc["rules"]):
            group, resource, verb, name = fact
            if resource == "leases" and name != "*":
                name = f"{RELEASE}-throttle-operator"
            expected.add((group, resource, verb, name))
    return expected


def test_operator_rules_match_deploy_rbac(plain_install: Install) -> None:
    chart_rules = set()
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(plain_install.manifest, kind):
            if "-operator" in role["metadata"]["name"]:  # the webhook's Role: its own test
                chart_rules |= facts(role["rules"])
    assert chart_rules == operator_expected(plain_install.namespace)


def test_cluster_wide_install_permissions(kube: KubeEnv, plain_install: Install) -> None:
    ns = plain_install.namespace
    baseline = rules_of(kube, ns, sa_user(ns, "nobody-at-all"))
    operator = rules_of(kube, ns, sa_user(ns, f"{RELEASE}-throttle-operator"))
    assert operator - baseline == operator_expected(ns) - baseline
    # The dispatcher has no RBAC; the webhook (cluster mode by default) writes ThrottlePolicies
    # in the release namespace and nothing else.
    assert rules_of(kube, ns, sa_user(ns, f"{RELEASE}-throttle-dispatcher")) == baseline
    webhook = sa_user(ns, f"{RELEASE}-throttle-webhook")
    assert rules_of(kube, ns, webhook) - baseline == {
        ("throttle.dev", "throttlepolicies", verb, "*")
        for verb in ("get", "list", "create", "patch", "delete")
    }
    other = create_namespace(kube, "other")
    assert not can(kube, webhook, "create", "throttlepolicies.throttle.dev", other)
    op = sa_user(ns, f"{RELEASE}-throttle-operator")
    assert can(kube, op, "watch", "throttlepolicies.throttle.dev", other)
    assert can(kube, op, "patch", "throttlepolicies.throttle.dev/status", other)
    assert not can(kube, op, "update", "throttlepolicies.throttle.dev/status", other)
    for verb, resource in [
        ("create", "throttlepolicies.throttle.dev"),
        ("delete", "throttlepolicies.throttle.dev"),
        ("get", "secrets"),
        ("list", "pods"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert not can(kube, op, verb, resource, other), (verb, resource)
    assert not can(kube, op, "create", "leases.coordination.k8s.io", other)
    assert can(kube, op, "create", "leases.coordination.k8s.io", ns)


def test_namespaced_install_permissions(kube: KubeEnv, full_install: Install) -> None:
    ns = full_install.namespace
    other = create_namespace(kube, "other")
    op = sa_user(ns, f"{RELEASE}-throttle-operator")
    webhook = sa_user(ns, f"{RELEASE}-throttle-webhook")
    dispatcher = sa_user(ns, f"{RELEASE}-throttle-dispatcher")
    baseline = rules_of(kube, ns, sa_user(ns, "nobody-at-all"))

    # Operator: its namespace only (plus the cluster-scoped reads kopf needs).
    assert rules_of(kube, ns, op) - baseline == operator_expected(ns) - baseline
    assert can(kube, op, "watch", "throttlepolicies.throttle.dev", ns)
    assert not can(kube, op, "watch", "throttlepolicies.throttle.dev", other)
    assert can(kube, op, "list", "namespaces", None)

    # Webhook in cluster mode: writes ThrottlePolicies in its namespace, nothing else.
    assert rules_of(kube, ns, webhook) - baseline == {
        ("throttle.dev", "throttlepolicies", verb, "*")
        for verb in ("get", "list", "create", "patch", "delete")
    }
    assert not can(kube, webhook, "create", "throttlepolicies.throttle.dev", other)
    assert not can(kube, webhook, "patch", "throttlepolicies.throttle.dev/status", ns)
    assert not can(kube, webhook, "get", "secrets", ns)

    # Dispatcher: nothing at all.
    assert rules_of(kube, ns, dispatcher) == baseline
    assert not can(kube, dispatcher, "get", "throttlepolicies.throttle.dev", ns)


# ---- the operator, as the chart's ServiceAccount, reconciles an example policy ------------------


def operator_settings_from_chart(install: Install, redis_url: str) -> Settings:
    """The settings the chart gives the operator pod (ConfigMap + env), Redis from the fixture."""
    env: dict[str, str] = dict(one(install.manifest, "ConfigMap", "config")["data"])
    deployment = one(install.manifest, "Deployment", "operator")
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    env.update(REDIS_URL=redis_url, METRICS_PORT="0")
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})  # type: ignore[call-arg]
    return settings.model_copy(update={"operator_lease_seconds": 3, "operator_status_interval": 1})


def sa_token_kubeconfig(kube: KubeEnv, namespace: str, sa: str) -> Path:
    """A kubeconfig holding a real token of the ServiceAccount (kopf has no impersonation)."""
    token = kube.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = sa
    path = kube.workdir / "kubeconfigs" / f"chart-{namespace}-{sa}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_operator_as_the_charts_service_account_reconciles_an_example(
    kube: KubeEnv, full_install: Install, redis_server: RedisServer
) -> None:
    ns = full_install.namespace
    deployment = one(full_install.manifest, "Deployment", "operator")
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args == ["operator", f"--namespace={ns}"]
    settings = operator_settings_from_chart(full_install, redis_server.url)
    kubeconfig = sa_token_kubeconfig(kube, ns, pod["serviceAccountName"])

    operator = OperatorThread(settings, kubeconfig, [ns], identity="chart-test").start()
    try:
        operator.wait_ready(60)
        kube.apply(REPO / "deploy" / "examples" / "01-basic-rate.yaml", namespace=ns)
        deadline = time.monotonic() + 30
        tp: dict[str, Any] = {}
        while time.monotonic() < deadline:
            tp = kube.kubectl_json("get", "tp", "basic-rate", "-n", ns)
            ready = [
                c for c in (tp.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"
            ]
            if ready and ready[0]["status"] == "True":
                break
            time.sleep(0.3)
        else:
            pytest.fail(
                f"ThrottlePolicy not Ready in 30 s: {tp.get('status')} ({operator.error!r})"
            )
        assert tp["status"]["observedGeneration"] == 1
        assert "throttle.dev/finalizer" in tp["metadata"]["finalizers"]
        # The Lease the chart's RBAC names is the one the operator holds.
        lease = kube.kubectl_json("get", "lease", f"{RELEASE}-throttle-operator", "-n", ns)
        assert lease["spec"]["holderIdentity"] == "chart-test"
        # Deleting goes through the finalizer, which the ServiceAccount may remove.
        kube.kubectl("delete", "tp", "basic-rate", "-n", ns, "--timeout=30s")
    finally:
        operator.stop()
    assert operator.error is None, operator.error


async def test_config_api_cluster_mode_as_the_charts_webhook_service_account(
    kube: KubeEnv, full_install: Install
) -> None:
    """The config API's cluster store, with a token of the chart's webhook ServiceAccount and the
    namespace the chart configures, can create, change, list and delete ThrottlePolicies there,
    and nowhere else."""
    from kubernetes import config as k8s_config
    from kubernetes.client.exceptions import ApiException

    from throttle.engine.policy import Policy
    from throttle.webhook_service.config_store import ClusterConfigStore, ConfigStoreUnavailable

    ns = full_install.namespace
    deployment = one(full_install.manifest, "Deployment", "webhook")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CONFIG_BACKEND"] == "cluster"
    assert env["CONFIG_NAMESPACE"] == ns
    assert pod["automountServiceAccountToken"] is True
    kubeconfig = sa_token_kubeconfig(kube, ns, pod["serviceAccountName"])
    client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    try:
        store = ClusterConfigStore(client, env["CONFIG_NAMESPACE"])
        policy = Policy(name="newsletter", portal_id=4242, rate={"limit": 10, "period": "1m"})
        assert (await store.put(policy)).created
        changed = policy.model_copy(update={"paused": True})
        assert not (await store.put(changed)).created
        assert [p.paused for p in await store.list(4242)] == [True]
        assert await store.delete(4242, "newsletter")
        assert await store.list(4242) == []

        elsewhere = ClusterConfigStore(client, create_namespace(kube, "other"))
        with pytest.raises((ApiException, ConfigStoreUnavailable)) as denied:
            await elsewhere.put(policy)
        assert "403" in str(denied.value)
    finally:
        client.close()


def test_operator_pod_as_a_process_answers_its_probe_and_reconciles(
    kube: KubeEnv, full_install: Install, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`throttle <args>` exactly as the chart's operator container runs it, with the chart's
    environment, a token of its ServiceAccount (KUBECONFIG) and the probe the chart sets."""
    import socket
    import urllib.request

    ns = full_install.namespace
    deployment = one(full_install.manifest, "Deployment", "operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(one(full_install.manifest, "ConfigMap", "config")["data"])
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update(
        PATH=os.environ.get("PATH", ""),
        HOME=str(tmp_path),
        REDIS_URL=redis_server.url,
        METRICS_PORT=str(port),
        KUBECONFIG=str(sa_token_kubeconfig(kube, ns, sa)),
        OPERATOR_LEASE_SECONDS="3",
    )
    probe = container["livenessProbe"]["httpGet"]
    assert probe["port"] == "metrics"
    throttle = str(Path(sys.executable).parent / "throttle")
    log_path = tmp_path / "operator.log"
    log = log_path.open("w")  # a file, not a pipe: a full pipe would stall the operator
    proc = subprocess.Popen(
        [throttle, *container["args"]],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def output() -> str:
        return log_path.read_text()[-4000:]

    try:
        deadline = time.monotonic() + 60
        health: dict[str, Any] = {}
        while time.monotonic() < deadline and health.get("role") != "leader":
            assert proc.poll() is None, output()
            try:
                url = f"http://127.0.0.1:{port}{probe['path']}"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    health = json.loads(resp.read())
            except OSError:
                pass
            time.sleep(0.3)
        assert health.get("role") == "leader", health
        kube.apply(REPO / "deploy" / "examples" / "02-burst.yaml", namespace=ns)
        name = yaml.safe_load((REPO / "deploy" / "examples" / "02-burst.yaml").read_text())[
            "metadata"
        ]["name"]
        deadline = time.monotonic() + 30
        ready = ""
        while time.monotonic() < deadline and ready != "True":
            assert proc.poll() is None, output()
            tp = kube.kubectl_json("get", "tp", name, "-n", ns)
            conditions = (tp.get("status") or {}).get("conditions") or []
            ready = next((c["status"] for c in conditions if c["type"] == "Ready"), "")
            time.sleep(0.3)
        assert ready == "True", tp.get("status")
        deleted = kube.kubectl("delete", "tp", name, "-n", ns, "--timeout=30s", check=False)
        if deleted.returncode != 0:
            proc.terminate()
            pytest.fail(f"delete: {deleted.stderr}\noperator:\n{output()}")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
