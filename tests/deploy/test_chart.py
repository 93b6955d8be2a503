"""The Helm chart without a cluster: lint, render, schema, generated docs, CRD copies, security
context, secrets wiring, settings names, alerts (promtool) and the dashboard's metric names."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.fixtures.helm_chart import (
    CHART,
    REPO,
    VALUES_ALL,
    VALUES_DEV,
    VALUES_REQUIRED,
    Helm,
    by_kind,
    one,
    pod_specs,
)
from throttle.metrics import Metrics
from throttle.settings import Settings

ALERT_TESTS = Path(__file__).resolve().parent / "alerts-test.yaml"


def load_chart_docs() -> Any:
    """scripts/chart_docs.py, the generator of the chart's schema and README table."""
    if "chart_docs" not in sys.modules:
        path = REPO / "scripts" / "chart_docs.py"
        spec = importlib.util.spec_from_file_location("chart_docs", path)
        assert spec
        assert spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["chart_docs"] = module  # dataclasses look their module up while defining
        spec.loader.exec_module(module)
    return sys.modules["chart_docs"]


# ---- lint, render, schema -----------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize(
    "values", [VALUES_REQUIRED, VALUES_ALL, VALUES_DEV], ids=["default", "all-features", "dev"]
)
def test_helm_lint_is_clean(helm: Helm, strict: bool, values: Path) -> None:
    args: list[str | Path] = ["lint", CHART, "-f", values]
    if strict:
        args.append("--strict")
    proc = helm.run(*args)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout
    assert "[ERROR]" not in proc.stdout


def test_default_render(rendered_default: list[dict[str, Any]]) -> None:
    kinds = sorted({o["kind"] for o in rendered_default})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    # No secret value ships in the defaults: the chart's Secret is empty until you fill it.
    assert not one(rendered_default, "Secret", "rel-throttle").get("data")
    # Off by default: ingress, monitoring CRDs, KEDA, network policies.
    assert not by_kind(rendered_default, "Ingress")
    # On by default: the config API writes ThrottlePolicies (so `kubectl get tp` shows them).
    assert sorted(r["metadata"]["name"] for r in by_kind(rendered_default, "Role")) == [
        "rel-throttle-operator-leader-election",
        "rel-throttle-webhook",
    ]
    webhook = one(rendered_default, "Deployment", "webhook")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in webhook["containers"][0]["env"]}
    assert env["CONFIG_BACKEND"] == "cluster"
    assert env["CONFIG_NAMESPACE"] == "throttle"
    assert webhook["automountServiceAccountToken"] is True
    [binding] = [
        b for b in by_kind(rendered_default, "RoleBinding") if "webhook" in b["roleRef"]["name"]
    ]
    assert binding["subjects"][0]["name"] == webhook["serviceAccountName"]


def test_all_features_render(rendered_all: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in rendered_all}
    for kind in (
        "Ingress",
        "ScaledObject",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ):
        assert kind in kinds, kind
    # KEDA owns the dispatcher's autoscaler: no second HPA fighting it.
    hpas = [
        h["spec"]["scaleTargetRef"]["name"]
        for h in by_kind(rendered_all, "HorizontalPodAutoscaler")
    ]
    assert hpas == ["rel-throttle-webhook"]
    # The webhook scales on CPU and, with requestsPerSecond.target, on request rate per pod.
    metrics = one(rendered_all, "HorizontalPodAutoscaler", "webhook")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    assert metrics[1]["pods"] == {
        "metric": {"name": "throttle_webhook_requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "150"},
    }
    assert len(by_kind(rendered_all, "ServiceMonitor")) == 3
    ingress = one(rendered_all, "Ingress", "webhook")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "throttle-example-tls", "hosts": ["throttle.example.com"]}
    ]
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/api/hubspot", "/api/oauth"]
    for path in paths:
        assert path["backend"]["service"] == {
            "name": "rel-throttle-webhook",
            "port": {"number": 80},
        }
    config = one(rendered_all, "ConfigMap", "config")["data"]
    assert config["PUBLIC_URL"] == "https://throttle.example.com"


def _routed(paths: list[dict[str, Any]], url_path: str) -> bool:
    """Whether an Ingress with these paths sends `url_path` on (Kubernetes' matching: Exact, or
    Prefix element by element; ImplementationSpecific read as a prefix, as ingress-nginx does)."""
    for entry in paths:
        path, kind = entry["path"], entry.get("pathType", "Prefix")
        if kind == "Exact" and url_path == path:
            return True
        prefix = path.rstrip("/")
        if kind != "Exact" and (url_path == prefix or url_path.startswith(prefix + "/")):
            return True
    return False


@pytest.mark.parametrize("values", [None, VALUES_ALL], ids=["default", "all-features"])
def test_ingress_routes_hubspot_install_and_config_never_openapi_or_metrics(
    helm: Helm, values: Path | None, tmp_path: Path
) -> None:
    """SECURITY.md: /api/openapi.json, /metrics and the health endpoints are not exposed."""
    rendered = helm.template(
        values=[values] if values else [], set_values=["webhook.ingress.enabled=true"]
    )
    for rule in one(rendered, "Ingress", "webhook")["spec"]["rules"]:
        paths = rule["http"]["paths"]
        for public in ("/api/hubspot/action", "/api/hubspot/options", "/api/oauth/callback"):
            assert _routed(paths, public), (public, paths)
        for private in ("/api/openapi.json", "/metrics", "/healthz", "/readyz"):
            assert not _routed(paths, private), (private, paths)
    # A host listing no paths gets the same safe list.
    bare = tmp_path / "bare-host.yaml"
    bare.write_text("webhook: {ingress: {enabled: true, hosts: [{host: hooks.example.org}]}}\n")
    rendered = helm.template(values=[bare])
    [rule] = one(rendered, "Ingress", "webhook")["spec"]["rules"]
    assert not _routed(rule["http"]["paths"], "/api/openapi.json")
    assert _routed(rule["http"]["paths"], "/api/config")


@pytest.mark.parametrize("path", ["/", "/api", "/api/", "/api/openapi.json"])
def test_an_ingress_path_that_would_route_openapi_fails(
    helm: Helm, path: str, tmp_path: Path
) -> None:
    values = tmp_path / "wide-path.yaml"
    hosts = [{"host": "hooks.example.org", "paths": [{"path": "/api/oauth"}, {"path": path}]}]
    values.write_text(json.dumps({"webhook": {"ingress": {"enabled": True, "hosts": hosts}}}))
    proc = helm.run("template", "rel", CHART, "-f", values, check=False)
    assert proc.returncode != 0
    assert "ERROR: webhook.ingress.hosts path" in proc.stderr
    assert "/api/openapi.json" in proc.stderr


def test_network_policies(rendered_all: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(rendered_all, "NetworkPolicy")}
    ingress_ns = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    ]
    prometheus = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prometheus"}}}
    ]
    webhook = policies["rel-throttle-webhook"]
    # The console on its own port is reached from the ingress controller's namespace only.
    assert sorted(webhook["ingress"], key=str) == sorted(
        [
            {"ports": [{"port": 8080, "protocol": "TCP"}], "from": ingress_ns},
            {"ports": [{"port": 8081, "protocol": "TCP"}], "from": ingress_ns},
            {"ports": [{"port": 8080, "protocol": "TCP"}], "from": prometheus},
        ],
        key=str,
    )
    for component in ("dispatcher", "operator"):
        assert policies[f"rel-throttle-{component}"]["ingress"] == [
            {"ports": [{"port": 9090, "protocol": "TCP"}], "from": prometheus}
        ]
    assert policies["rel-throttle-migrations"]["ingress"] == []
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["egress"][0]["ports"] == [
            {"port": 53, "protocol": "UDP"},
            {"port": 53, "protocol": "TCP"},
        ]
        assert spec["egress"][1] == {"ports": [{"port": 443}, {"port": 5432}, {"port": 6379}]}


def test_an_empty_metrics_from_admits_nobody(helm: Helm) -> None:
    """A rule without `from` admits everyone: an empty `metricsFrom` once opened the metrics ports
    to every pod, and the webhook's port to all despite `webhookFrom`."""
    ingress_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    rendered = helm.template(
        values=[VALUES_REQUIRED],
        set_values=[
            "networkPolicy.enabled=true",
            "networkPolicy.webhookFrom[0].namespaceSelector.matchLabels"
            ".kubernetes\\.io/metadata\\.name=ingress",
        ],
    )
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(rendered, "NetworkPolicy")}
    assert policies["rel-throttle-webhook"]["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [ingress_ns]}
    ]
    for component in ("dispatcher", "operator", "migrations"):
        assert policies[f"rel-throttle-{component}"]["ingress"] == [], component
    # Only `webhookFrom` empty means anyone (HubSpot's calls come through an ingress anywhere).
    rendered = helm.template(values=[VALUES_REQUIRED], set_values=["networkPolicy.enabled=true"])
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(rendered, "NetworkPolicy")}
    assert policies["rel-throttle-webhook"]["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}]}
    ]
    assert policies["rel-throttle-dispatcher"]["ingress"] == []


def test_pdb_and_spread_for_webhook_and_dispatcher(rendered_default: list[dict[str, Any]]) -> None:
    pdbs = {
        p["metadata"]["name"]: p["spec"] for p in by_kind(rendered_default, "PodDisruptionBudget")
    }
    assert set(pdbs) == {"rel-throttle-webhook", "rel-throttle-dispatcher"}
    specs = pod_specs(rendered_default)
    for component in ("webhook", "dispatcher"):
        pdb = pdbs[f"rel-throttle-{component}"]
        assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        spread = specs[component]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for constraint in spread:
            assert (
                constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"]
                == component
            )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("webhook.replicas=3", "additional properties 'replicas' not allowed"),
        ("settings.logLevel=LOUD", "logLevel"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("webhook.port=70000", "port"),
        ("console.sessionKey=short", "sessionKey"),
        ("console.roles.12345.a@example\\.com=admin", "roles"),
        ("console.roles.main.a@example\\.com=viewer", "propertyName 'main'"),
    ],
)
def test_schema_refuses_bad_values(helm: Helm, setting: str, message: str) -> None:
    proc = helm.run("template", "rel", CHART, "-f", VALUES_REQUIRED, "--set", setting, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["webhook.ingress.enabled=true", "webhook.ingress.hosts=null"], "webhook.ingress.hosts"),
        (["dispatcher.keda.enabled=true"], "dispatcher.keda.prometheus.serverAddress"),
        (["settings.publicUrl=http://throttle.example.com"], "must be https://"),
        # Without a public URL the webhook refuses to start: say so before the install.
        (["settings.publicUrl="], "set settings.publicUrl"),
        (["console.enabled=true"], "console.enabled needs console.sessionKey"),
        (
            ["console.enabled=true", "console.existingSecret=mine", "console.port=8080"],
            "console.port must differ from webhook.port",
        ),
    ],
)
def test_bad_combinations_fail_with_a_clear_message(
    helm: Helm, settings: list[str], message: str
) -> None:
    args: list[str | Path] = ["template", "rel", CHART, "-f", VALUES_REQUIRED]
    for s in settings:
        args += ["--set", s]
    proc = helm.run(*args, check=False)
    assert proc.returncode != 0
    assert "ERROR:" in proc.stderr
    assert message in proc.stderr


# ---- the console --------------------------------------------------------------------------------

CONSOLE_KEY = "8c1f4e2a9b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c"


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_console_values_set_its_env_secret_port_and_own_ingress_path(helm: Helm) -> None:
    """The key reaches the webhook from a Secret of its own (never a ConfigMap); CONSOLE_PORT
    opens a container and Service port of its own, where the console's own Ingress sends
    /console, while the webhook's Ingress keeps HubSpot's paths."""
    objects = helm.template(
        values=[VALUES_ALL],
        set_values=[
            "console.enabled=true",
            f"console.sessionKey={CONSOLE_KEY}",
            "console.port=8081",
            "console.roles.12345.ops@example\\.com=operator",
            "console.roles.12345.analyst@example\\.com=viewer",
        ],
        extra=[
            "--set-string",
            "console.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/limit-rps=5",
        ],
    )
    webhook = pod_specs(objects)["webhook"]["containers"][0]
    env = env_of(webhook)
    assert env["CONSOLE_SESSION_KEY"] == {
        "secretKeyRef": {"name": "rel-throttle-console", "key": "CONSOLE_SESSION_KEY"}
    }
    assert env["CONSOLE_PORT"] == "8081"
    assert json.loads(env["CONSOLE_ROLES"]) == {
        "12345": {"ops@example.com": "operator", "analyst@example.com": "viewer"}
    }
    secret = one(objects, "Secret", "console")
    assert base64.b64decode(secret["data"]["CONSOLE_SESSION_KEY"]).decode() == CONSOLE_KEY
    for config in by_kind(objects, "ConfigMap"):
        assert CONSOLE_KEY not in json.dumps(config), config["metadata"]["name"]
    for component, spec in pod_specs(objects).items():
        if (
            component != "webhook"
        ):  # only the webhook serves (and `throttle console-link` runs there)
            assert not {n for n in env_of(spec["containers"][0]) if n.startswith("CONSOLE_")}
    assert {"name": "console", "containerPort": 8081, "protocol": "TCP"} in webhook["ports"]
    service = one(objects, "Service", "webhook")
    assert {"name": "console", "port": 8081, "targetPort": "console", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )
    console = one(objects, "Ingress", "console")
    assert console["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/limit-rps": "5"}
    assert console["spec"]["tls"] == one(objects, "Ingress", "webhook")["spec"]["tls"]
    [rule] = console["spec"]["rules"]
    assert rule["host"] == "throttle.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/console",
            "pathType": "Prefix",
            "backend": {"service": {"name": "rel-throttle-webhook", "port": {"number": 8081}}},
        }
    ]
    for rule in one(objects, "Ingress", "webhook")["spec"]["rules"]:
        assert not _routed(rule["http"]["paths"], "/console/portals/1")
        assert _routed(rule["http"]["paths"], "/api/hubspot/action")
    webhook_policy = one(objects, "NetworkPolicy", "webhook")["spec"]["ingress"]
    assert any(r["ports"] == [{"port": 8081, "protocol": "TCP"}] for r in webhook_policy)


def test_console_under_the_webhooks_port_and_from_an_existing_secret(helm: Helm) -> None:
    objects = helm.template(
        values=[VALUES_REQUIRED],
        set_values=[
            "console.enabled=true",
            "console.existingSecret=console-key",
            "webhook.ingress.enabled=true",
        ],
    )
    assert not [s for s in by_kind(objects, "Secret") if "console" in s["metadata"]["name"]]
    webhook = pod_specs(objects)["webhook"]["containers"][0]
    env = env_of(webhook)
    assert env["CONSOLE_SESSION_KEY"] == {
        "secretKeyRef": {"name": "console-key", "key": "CONSOLE_SESSION_KEY"}
    }
    assert "CONSOLE_PORT" not in env
    assert "CONSOLE_ROLES" not in env
    assert [p["name"] for p in webhook["ports"]] == ["http"]
    [rule] = one(objects, "Ingress", "console")["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/console"
    assert path["backend"]["service"]["port"] == {"number": 80}  # the webhook Service's port


def test_console_is_off_by_default(rendered_default: list[dict[str, Any]]) -> None:
    assert not [o for o in rendered_default if "console" in o["metadata"]["name"]]
    for spec in pod_specs(rendered_default).values():
        assert not {n for n in env_of(spec["containers"][0]) if n.startswith("CONSOLE_")}


def test_generated_schema_and_readme_are_current() -> None:
    docs = load_chart_docs()
    for path, text in docs.render(CHART).items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/chart_docs.py"


def test_every_value_is_documented_with_an_example_and_closed_in_the_schema() -> None:
    docs = load_chart_docs()
    values = docs.parse((CHART / "values.yaml").read_text())
    assert len(values) > 80
    for value in values:
        assert len(value.description) > 10, value.name
        assert value.example.startswith(value.path[-1] + ":"), value.name
    schema = json.loads((CHART / "values.schema.json").read_text())

    def closed(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in node["properties"].items():
                closed(child, f"{where}.{key}")

    closed(schema, "values")
    readme = (CHART / "README.md").read_text()
    for value in values:
        assert f"| `{value.name}` |" in readme, value.name


# Values that only matter together with another one (the example is tried with these set).
NEEDS = {
    "devStack.redisImage": ["devStack.enabled=true", "secrets.databaseUrl=postgresql://u:p@h/d"],
    "devStack.postgresImage": ["devStack.enabled=true", "secrets.databaseUrl=postgresql://u:p@h/d"],
    "devStack.simulatorImage": [
        "devStack.enabled=true",
        "secrets.databaseUrl=postgresql://u:p@h/d",
    ],
    "devStack.pullPolicy": ["devStack.enabled=true", "secrets.databaseUrl=postgresql://u:p@h/d"],
    "dispatcher.replicaCount": ["dispatcher.autoscaling.enabled=false"],
    "dispatcher.keda.prometheus.serverAddress": ["dispatcher.keda.enabled=true"],
    "console.sessionKey": ["console.enabled=true"],
    "console.existingSecret": ["console.enabled=true"],
    "console.port": ["console.enabled=true", f"console.sessionKey={CONSOLE_KEY}"],
    "console.roles": ["console.enabled=true", f"console.sessionKey={CONSOLE_KEY}"],
    "console.ingress.annotations": [
        "console.enabled=true",
        f"console.sessionKey={CONSOLE_KEY}",
        "webhook.ingress.enabled=true",
    ],
}


def test_every_example_is_accepted_and_changes_the_render(helm: Helm, tmp_path: Path) -> None:
    """Each value's example, set alone over the defaults (or, when that changes nothing, over the
    all-features values), renders and changes what is rendered: no example is broken, no value
    unused."""
    docs = load_chart_docs()
    bases: dict[str, list[str | Path]] = {
        "default": ["-f", VALUES_REQUIRED],
        "all": ["-f", VALUES_ALL],
    }
    rendered = {
        name: helm.run("template", "rel", CHART, *args).stdout for name, args in bases.items()
    }
    failures = []
    for value in docs.parse((CHART / "values.yaml").read_text()):
        node: dict[str, Any] = yaml.safe_load(value.example)
        for key in reversed(value.path[:-1]):
            node = {key: node}
        path = tmp_path / f"{value.name}.yaml"
        path.write_text(yaml.safe_dump(node))
        changed = False
        for name, args in bases.items():
            if changed:
                break  # accepted and used over the defaults: enough
            extra = [x for s in NEEDS.get(value.name, []) for x in ("--set", s)]
            proc = helm.run("template", "rel", CHART, *args, *extra, check=False)
            before = proc.stdout
            proc = helm.run("template", "rel", CHART, *args, *extra, "-f", path, check=False)
            if proc.returncode != 0 and "ERROR:" in proc.stderr:
                changed = True  # a combination the chart refuses, with a clear message
            elif proc.returncode != 0:
                failures.append(f"{value.name} over {name}: {proc.stderr.strip()[:300]}")
            changed = changed or proc.stdout != (before if extra else rendered[name])
        if not changed:
            failures.append(f"{value.name}: its example changes nothing (unused value?)")
    assert not failures, "\n".join(failures)


# ---- CRDs ---------------------------------------------------------------------------------------


def test_example_urls_name_no_service_the_chart_does_not_create(
    rendered_all: list[dict[str, Any]],
) -> None:
    """A bare host name in an example resolves in the release's namespace: it must be one of the
    chart's own Services (a `name.namespace.svc` host is the user's own, elsewhere)."""
    services = {s["metadata"]["name"] for s in by_kind(rendered_all, "Service")}
    values = (CHART / "values.yaml").read_text()
    hosts = re.findall(r"# @example \w+: \w+://(?:[^@\s/]*@)?([^:/\s]+)", values)
    assert "throttle.example.com" in hosts
    bare = {h for h in hosts if "." not in h}
    assert bare <= services, f"examples name Services the chart never creates: {bare - services}"


def test_chart_crds_are_byte_identical_copies_of_deploy_crds() -> None:
    sources = sorted((REPO / "deploy" / "crds").glob("*.yaml"))
    copies = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in sources], "run scripts/sync-crds.sh"
    for source, copy in zip(sources, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy} is stale: run scripts/sync-crds.sh"
        )


# ---- pods: security, probes, secrets, settings --------------------------------------------------


@pytest.mark.parametrize("which", ["default", "all", "dev"])
def test_pods_meet_the_restricted_pod_security_standard(
    which: str, request: pytest.FixtureRequest
) -> None:
    specs = pod_specs(request.getfixturevalue(f"rendered_{which}"))
    components = {"webhook", "dispatcher", "operator", "migrations"}
    if which == "dev":
        components |= {"redis", "postgres", "hubspot-simulator"}
    assert set(specs) == components
    for component, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, component
        assert pod["runAsUser"] == 10001
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]


def test_probes_and_tokens(rendered_all: list[dict[str, Any]]) -> None:
    specs = pod_specs(rendered_all)
    webhook = specs["webhook"]["containers"][0]
    assert webhook["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert webhook["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for component in ("dispatcher", "operator"):
        container = specs[component]["containers"][0]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Only pods that talk to the Kubernetes API get a token.
    assert specs["dispatcher"]["automountServiceAccountToken"] is False
    assert specs["migrations"]["automountServiceAccountToken"] is False
    assert specs["operator"]["automountServiceAccountToken"] is True
    assert specs["webhook"]["automountServiceAccountToken"] is True  # cluster mode is on here
    for sa in by_kind(rendered_all, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_each_component_reads_only_the_secrets_it_needs(rendered_all: list[dict[str, Any]]) -> None:
    specs = pod_specs(rendered_all)
    wanted = {
        "webhook": {
            "REDIS_URL",
            "DATABASE_URL",
            "HUBSPOT_CLIENT_SECRET",
            "HUBSPOT_CLIENT_SECRET_PREVIOUS",
            "ENCRYPTION_KEY",
            "SECRET_KEY_BASE",
            "THROTTLE_API_TOKEN",
        },
        "dispatcher": {"REDIS_URL", "DATABASE_URL", "HUBSPOT_CLIENT_SECRET", "ENCRYPTION_KEY"},
        "operator": {"REDIS_URL"},
        "migrations": {"DATABASE_URL"},
    }
    secret = one(rendered_all, "Secret", "rel-throttle")
    for component, names in wanted.items():
        refs = secret_refs(specs[component]["containers"][0])
        # The console's key, in a Secret of its own, is read by the webhook pods alone.
        console = refs.pop("CONSOLE_SESSION_KEY", None)
        assert (console is not None) == (component == "webhook"), component
        assert console is None or console == {
            "name": "rel-throttle-console",
            "key": "CONSOLE_SESSION_KEY",
        }
        assert set(refs) == names, component
        for name, ref in refs.items():
            assert ref["key"] == name
            if component != "migrations":
                assert ref["name"] == "rel-throttle"
                assert name in secret["data"]
    # The migration hook runs before the release's Secret exists: it gets its own hook Secret.
    hook_secret = one(rendered_all, "Secret", "migrations")
    assert set(hook_secret["data"]) == {"DATABASE_URL"}
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_existing_secret(helm: Helm) -> None:
    objects = helm.template(values=[VALUES_REQUIRED], set_values=["secrets.existingSecret=mine"])
    assert not by_kind(objects, "Secret")
    specs = pod_specs(objects)
    webhook = secret_refs(specs["webhook"]["containers"][0])
    assert {ref["name"] for ref in webhook.values()} == {"mine"}
    assert webhook["REDIS_URL"].get("optional") is None  # required: the pod waits for the key
    assert webhook["HUBSPOT_CLIENT_SECRET_PREVIOUS"]["optional"] is True
    assert secret_refs(specs["migrations"]["containers"][0]) == {
        "DATABASE_URL": {"name": "mine", "key": "DATABASE_URL"}
    }


def test_env_names_the_chart_sets_are_real_settings(
    rendered_all: list[dict[str, Any]], rendered_default: list[dict[str, Any]]
) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for objects in (rendered_default, rendered_all):
        config = one(objects, "ConfigMap", "config")["data"]
        assert set(config) <= settings, set(config) - settings
        for spec in pod_specs(objects).values():
            for container in spec["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                assert names <= settings, names - settings


def test_config_values_are_valid_settings(rendered_all: list[dict[str, Any]]) -> None:
    """The ConfigMap plus the Secret, read as the components read them, load without error."""
    env = dict(one(rendered_all, "ConfigMap", "config")["data"])
    import base64

    for key, value in one(rendered_all, "Secret", "rel-throttle")["data"].items():
        env[key] = base64.b64decode(value).decode()
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    assert settings.public_url == "https://throttle.example.com"
    assert settings.hubspot_app_id == 1234567
    assert settings.client_secrets == ["client-secret-current", "client-secret-previous"]
    # settings.extraEnv adds settings the chart has no value for, and wins over the ones it has.
    assert settings.dispatcher_batch == 250
    assert settings.log_level == "DEBUG"


# ---- monitoring: alerts and dashboard use only metrics the code exports -------------------------


def exported_metric_names() -> set[str]:
    """Every sample name Throttle can export, from the metrics built on a fresh registry."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        match family.type:
            case "counter":
                names.add(family.name + "_total")
            case "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            case "summary":
                names |= {family.name + s for s in ("_sum", "_count")}
            case _:
                names.add(family.name)
    return names


METRIC_NAME = re.compile(r"\b(throttle_[a-z0-9_]+)\b")


def throttle_metrics_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "throttle.json").read_text())


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard()["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


def test_dashboard_is_valid_and_covers_what_operators_watch() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"] == "Throttle"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    used = set().union(*(throttle_metrics_in(e) for e in dashboard_exprs()))
    # queue depth, releases vs limit per policy, HubSpot calls and errors, lag
    for needed in (
        "throttle_queue_depth",
        "throttle_released_total",
        "throttle_policy_limit_per_second",
        "throttle_hubspot_requests_total",
        "throttle_hubspot_rate_limited_total",
        "throttle_dispatcher_loop_lag_seconds_bucket",
    ):
        assert needed in used, needed


def test_dashboard_alerts_and_keda_use_only_exported_metrics(
    rendered_all: list[dict[str, Any]],
) -> None:
    exported = exported_metric_names()
    exprs = dashboard_exprs()
    rule = one(rendered_all, "PrometheusRule", "dispatcher")
    exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    scaled = one(rendered_all, "ScaledObject", "dispatcher")
    exprs += [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    unknown = set().union(*(throttle_metrics_in(e) for e in exprs)) - exported
    assert not unknown, f"not exported by throttle.metrics.Metrics: {sorted(unknown)}"


def test_keda_scales_on_releasable_backlog_not_depth(rendered_all: list[dict[str, Any]]) -> None:
    scaled = one(rendered_all, "ScaledObject", "dispatcher")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "rel-throttle-dispatcher"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert throttle_metrics_in(trigger["metadata"]["query"]) == {"throttle_releasable_backlog"}
    assert trigger["authenticationRef"] == {"name": "keda-prometheus"}


def rules_file(rendered: list[dict[str, Any]], tmp_path: Path) -> Path:
    rule = one(rendered, "PrometheusRule", "dispatcher")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_promtool_check_rules(
    promtool: str, rendered_all: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = rules_file(rendered_all, tmp_path)
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert {
        "ThrottleBacklogNearExpiration",
        "ThrottleHubSpotRateLimited",
        "ThrottleTokenRefreshFailing",
        "ThrottleHubSpotConfigFault",
        "ThrottleWebhookSecretMismatch",
        "ThrottleDispatcherLag",
    } <= alerts


def github_anchors(markdown: str) -> dict[str, str]:
    """Each heading's anchor as GitHub makes it, mapped to the section's text (to the next
    heading of any level)."""
    sections: dict[str, str] = {}
    current = None
    for line in markdown.splitlines():
        heading = re.match(r"#+ (.+)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            current = text.replace(" ", "-")
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_every_alert_links_a_runbook_section_that_says_what_to_check_and_do(
    rendered_all: list[dict[str, Any]],
) -> None:
    rule = one(rendered_all, "PrometheusRule", "dispatcher")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    sections = github_anchors((REPO / "docs" / "operations.md").read_text())
    base = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["prometheusRule"]
    for alert in alerts:
        url = alert["annotations"].get("runbook_url")
        assert url, f"{alert['alert']} has no runbook_url"
        page, _, anchor = url.partition("#")
        assert page == base["runbookUrl"]
        assert page.endswith("/docs/operations.md")
        assert anchor == alert["alert"].lower()
        assert anchor in sections, f"docs/operations.md has no section #{anchor}"
        assert "**Check**" in sections[anchor], f"#{anchor} does not say what to check"
        assert "**Do**" in sections[anchor], f"#{anchor} does not say what to do"


def test_promtool_alert_unit_tests(promtool: str, helm: Helm, tmp_path: Path) -> None:
    """The alerts fire on the series that should fire them, and only those (promtool test rules)."""
    objects = helm.template(values=[VALUES_ALL], namespace="throttle", release="rel")
    rules_file(objects, tmp_path)
    test_file = tmp_path / "alerts-test.yaml"
    test_file.write_text(ALERT_TESTS.read_text())
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_and_keda_promql_parse(
    promtool: str, rendered_all: list[dict[str, Any]], tmp_path: Path
) -> None:
    """promtool parses every dashboard query (Grafana's variables filled in) and the KEDA query,
    checked as recording rules."""
    exprs = [
        e.replace("$__rate_interval", "5m").replace("$namespace", ".*") for e in dashboard_exprs()
    ]
    scaled = one(rendered_all, "ScaledObject", "dispatcher")
    exprs += [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    rules = [{"record": f"throttle:check_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_packaged_chart_carries_crds_dashboard_schema_and_readme(
    helm: Helm, tmp_path: Path
) -> None:
    import tarfile

    helm.run("package", CHART, "--destination", tmp_path)
    [archive] = tmp_path.glob("throttle-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for path in (
        "throttle/Chart.yaml",
        "throttle/values.yaml",
        "throttle/values.schema.json",
        "throttle/README.md",
        "throttle/crds/throttlepolicies.yaml",
        "throttle/dashboards/throttle.json",
        "throttle/templates/NOTES.txt",
        "throttle/templates/migrations/job.yaml",
    ):
        assert path in names, path


# ---- the development profile (values-dev.yaml) --------------------------------------------------


def hooks(obj: dict[str, Any]) -> tuple[set[str], int]:
    """A hook object's events and weight."""
    annotations = obj["metadata"].get("annotations", {})
    events = set(filter(None, annotations.get("helm.sh/hook", "").split(",")))
    return events, int(annotations.get("helm.sh/hook-weight", "0"))


def test_dev_profile_says_it_is_not_for_production() -> None:
    head = VALUES_DEV.read_text().split("\n\n", 1)[0]
    assert "NOT FOR PRODUCTION" in head
    values = (CHART / "values.yaml").read_text()
    assert "devStack:" in values
    assert "NOT for production" in values.split("devStack:", 1)[0].rsplit("\n\n", 1)[-1]


def test_dev_profile_points_throttle_at_its_own_redis_postgres_and_simulator(
    rendered_dev: list[dict[str, Any]],
) -> None:
    import base64
    from urllib.parse import urlsplit

    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in by_kind(rendered_dev, "Service")
    }
    secret = {
        k: base64.b64decode(v).decode()
        for k, v in one(rendered_dev, "Secret", "throttle")["data"].items()
    }
    config = one(rendered_dev, "ConfigMap", "config")["data"]
    for url, component in (
        (secret["REDIS_URL"], "redis"),
        (secret["DATABASE_URL"], "postgres"),
        (config["HUBSPOT_API_BASE"], "hubspot-simulator"),
        (config["HUBSPOT_APP_BASE"], "hubspot-simulator"),
    ):
        parts = urlsplit(url)
        assert parts.hostname in services, f"{url}: no such Service"
        assert parts.port in services[parts.hostname], url
        [deployment] = [
            d
            for d in by_kind(rendered_dev, "Deployment")
            if d["metadata"]["name"] == parts.hostname
        ]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        service = one(rendered_dev, "Service", parts.hostname)
        assert service["spec"]["selector"] == selector
    # The settings load as every component reads them.
    settings = Settings(**{k.lower(): v for k, v in {**config, **secret}.items()})
    assert settings.public_url == "http://localhost:8080"
    # PostgreSQL is made with the user, password and database of DATABASE_URL.
    database = urlsplit(secret["DATABASE_URL"])
    pg = {
        k: base64.b64decode(v).decode()
        for k, v in one(rendered_dev, "Secret", "throttle-postgres")["data"].items()
    }
    assert pg == {
        "POSTGRES_USER": database.username,
        "POSTGRES_PASSWORD": database.password,
        "POSTGRES_DB": database.path.strip("/"),
    }
    # The simulator signs with the app's client secret and answers as its app.
    simulator = pod_specs(rendered_dev)["hubspot-simulator"]["containers"][0]
    assert secret_refs(simulator) == {
        "HUBSPOT_CLIENT_SECRET": {"name": "throttle", "key": "HUBSPOT_CLIENT_SECRET"}
    }
    assert simulator["envFrom"] == [{"configMapRef": {"name": "throttle-config"}}]


def test_dev_profile_runs_local_images_with_volumes(rendered_dev: list[dict[str, Any]]) -> None:
    images = {}
    for component, spec in pod_specs(rendered_dev).items():
        [container] = spec["containers"]
        assert container["imagePullPolicy"] == "Never", component
        assert container["image"].startswith("localhost/throttle"), component
        images[component] = container["image"]
        if component in ("redis", "postgres", "hubspot-simulator"):
            assert container["readinessProbe"], component
    assert images["redis"] == "localhost/throttle-redis:dev"
    assert images["postgres"] == "localhost/throttle-postgres:dev"
    assert images["hubspot-simulator"] == "localhost/throttle-simulator:dev"
    assert {images[c] for c in ("webhook", "dispatcher", "operator", "migrations")} == {
        "localhost/throttle:dev"
    }
    # Data on emptyDir volumes (no PersistentVolume needed on a laptop cluster).
    specs = pod_specs(rendered_dev)
    for component, path in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        [container] = specs[component]["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in specs[component]["volumes"]}
        assert volumes[mounts[path]]["emptyDir"] == {}, component
        assert "args" not in container, "the image's own arguments (Redis: the AOF on)"
    assert not by_kind(rendered_dev, "PersistentVolumeClaim")
    # The Redis image's own arguments turn the append-only file on.
    redis_cmd = [
        rest
        for word, rest in (
            line.split(" ", 1)
            for line in (REPO / "deploy/images/redis/Containerfile").read_text().splitlines()
            if line.startswith("CMD ")
        )
    ]
    assert redis_cmd
    assert '"--appendonly", "yes"' in redis_cmd[0]


def test_dev_profile_postgres_exists_before_the_migration_hook_runs(
    rendered_dev: list[dict[str, Any]],
) -> None:
    """The migration Job is a pre-install hook: a PostgreSQL that were a plain object of the
    release would not exist yet when it runs. The dev PostgreSQL is a pre-install hook of lower
    weight, and only pre-install: an upgrade must not recreate it (its data is on an emptyDir)."""
    job_events, job_weight = hooks(one(rendered_dev, "Job", "migrations"))
    assert "pre-install" in job_events
    postgres = [
        o
        for o in rendered_dev
        if o["metadata"]["name"] == "throttle-postgres" and o["kind"] != "Deployment"
    ] + [one(rendered_dev, "Deployment", "postgres")]
    assert sorted(o["kind"] for o in postgres) == ["Deployment", "Secret", "Service"]
    for obj in postgres:
        events, weight = hooks(obj)
        assert events == {"pre-install"}, obj["kind"]
        assert weight < job_weight, obj["kind"]
        assert weight < hooks(one(rendered_dev, "Secret", "migrations"))[1], obj["kind"]
    # The migration pod is retried while PostgreSQL starts.
    assert one(rendered_dev, "Job", "migrations")["spec"]["backoffLimit"] >= 5
    # Everything else of the stack is a plain object of the release (helm uninstall removes it).
    for component in ("redis", "hubspot-simulator"):
        assert hooks(one(rendered_dev, "Deployment", component))[0] == set(), component


def test_dev_stack_needs_a_database_url_with_a_password(helm: Helm) -> None:
    for database_url in ("", "postgresql://throttle@db:5432/throttle"):
        proc = helm.run(
            "template", "rel", CHART, "-f", VALUES_DEV,
            "--set", f"secrets.databaseUrl={database_url}",
            check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "ERROR: devStack.enabled" in proc.stderr, proc.stderr
    # Off by default: nothing of it renders.
    default = helm.template(values=[VALUES_REQUIRED])
    assert not [o for o in default if o["metadata"]["name"].endswith(("-redis", "-postgres"))]
