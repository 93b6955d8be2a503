"""The API server itself enforces the ThrottlePolicy schema: defaults, enums, bounds, CEL rules.

Each case is a manifest the real kube-apiserver must refuse with a message that names the field,
so a `kubectl apply` of a bad policy fails at once instead of reaching the operator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import CRD_FILE, policy_manifest
from throttle.engine.manifests import policy_from_spec

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("throttle_crd")]


def create(kube: KubeEnv, namespace: str, manifest: dict[str, Any], check: bool = True) -> Any:
    return kube.kubectl(
        "create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=check
    )


def test_crd_file_is_what_the_api_server_serves(kube: KubeEnv) -> None:
    crd = kube.kubectl_json("get", "crd", "throttlepolicies.throttle.dev")
    assert crd["spec"]["names"]["shortNames"] == ["tp"]
    assert crd["spec"]["names"]["categories"] == ["throttle"]
    assert crd["spec"]["scope"] == "Namespaced"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert list(versions) == ["v1beta1", "v1alpha1"]
    assert [n for n, v in versions.items() if v["storage"]] == ["v1beta1"]
    assert all(v["served"] for v in versions.values())
    assert versions["v1alpha1"]["deprecated"] is True
    assert not versions["v1beta1"].get("deprecated")
    # The same schema and columns in both, so no conversion webhook is needed.
    assert crd["spec"]["conversion"]["strategy"] == "None"
    assert versions["v1alpha1"]["schema"] == versions["v1beta1"]["schema"]
    version = versions["v1beta1"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Portal", "Action", "Rate", "Queued", "In Flight", "Ready", "Age"]
    assert versions["v1alpha1"]["additionalPrinterColumns"] == version["additionalPrinterColumns"]
    # The shipped file is a single document (the chart copies it verbatim).
    assert len(list(yaml.safe_load_all(CRD_FILE.read_text()))) == 1


def test_a_v1alpha1_manifest_still_applies_and_reads_as_v1beta1(
    kube: KubeEnv, namespace: str
) -> None:
    """Manifests written for the first release keep working: kubectl warns, the API server
    stores the object in the storage version, and both versions read the same spec."""
    manifest = policy_manifest("older", rate={"limit": 5})
    manifest["apiVersion"] = "throttle.dev/v1alpha1"
    proc = kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=True
    )
    assert "throttle.dev/v1alpha1 ThrottlePolicy is deprecated" in proc.stderr
    as_beta = kube.kubectl_json(
        "get", "throttlepolicies.v1beta1.throttle.dev", "older", "-n", namespace
    )
    as_alpha = kube.kubectl_json(
        "get", "throttlepolicies.v1alpha1.throttle.dev", "older", "-n", namespace
    )
    assert as_beta["apiVersion"] == "throttle.dev/v1beta1"
    assert as_alpha["apiVersion"] == "throttle.dev/v1alpha1"
    assert as_beta["spec"] == as_alpha["spec"]
    assert as_beta["spec"]["rate"] == {"limit": 5, "period": "1m"}  # the burst follows the rate


def test_valid_manifest_gets_defaults(kube: KubeEnv, namespace: str) -> None:
    manifest = policy_manifest(
        "defaults",
        rate={"limit": 5},
        dailyCap={"limit": 100},
        schedule={"windows": [{"days": ["Mon"], "start": "09:00", "end": "17:00"}]},
    )
    create(kube, namespace, manifest)
    spec = kube.kubectl_json("get", "tp", "defaults", "-n", namespace)["spec"]
    assert spec == {
        "portalId": 1234,
        "rate": {"limit": 5, "period": "1m"},  # no stored burst: the model's default applies
        "dailyCap": {"limit": 100, "timeZone": "UTC"},
        "schedule": {
            "timeZone": "UTC",
            "windows": [{"days": ["Mon"], "start": "09:00", "end": "17:00"}],
        },
        "scope": "Shared",
        "expiration": "P7D",
        "overflow": "Block",
        "paused": False,
        "onDelete": "Drain",
    }
    assert policy_from_spec("defaults", spec).rate.burst == 0  # 12 s apart: strict


def test_unknown_fields_are_refused_by_name(kube: KubeEnv, namespace: str) -> None:
    """A typo must not silently become a default (kubectl validates fields strictly)."""
    manifest = policy_manifest("typo")
    manifest["spec"]["ratee"] = {"limit": 1}
    proc = create(kube, namespace, manifest, check=False)
    assert proc.returncode != 0
    assert 'unknown field "spec.ratee"' in proc.stderr


@pytest.mark.parametrize("period", ["P7D", "7d", "48h", "PT25H"])
def test_small_daily_cap_is_fine_for_long_periods(
    kube: KubeEnv, namespace: str, period: str
) -> None:
    """ "1000 a week, at most 200 a day" is a sensible policy."""
    manifest = policy_manifest(
        "weekly", rate={"limit": 1000, "period": period}, dailyCap={"limit": 200}
    )
    create(kube, namespace, manifest)


@pytest.mark.parametrize("period", ["1s", "0.5h", "PT1S", "1000ms", "0.01d", "P1W"])
def test_short_periods_down_to_one_second_are_accepted(
    kube: KubeEnv, namespace: str, period: str
) -> None:
    create(kube, namespace, policy_manifest("short", rate={"limit": 5, "period": period}))


def test_every_feature_together_is_accepted(kube: KubeEnv, namespace: str) -> None:
    manifest = policy_manifest(
        "everything",
        actionId=987654,
        rate={"limit": 100, "period": "PT1M", "burst": 20},
        dailyCap={"limit": 5000, "timeZone": "America/New_York"},
        schedule={
            "timeZone": "Europe/Berlin",
            "windows": [
                {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "17:30"},
                {"days": ["Sat"], "start": "10:00", "end": "24:00"},
            ],
        },
        scope="PerWorkflow",
        expiration="P2DT12H",
        overflow="Fail",
        paused=True,
        onDelete="Succeed",
    )
    create(kube, namespace, manifest)
    spec = kube.kubectl_json("get", "tp", "everything", "-n", namespace)["spec"]
    assert spec["rate"] == {"limit": 100, "period": "PT1M", "burst": 20}
    assert spec["schedule"]["windows"][1]["end"] == "24:00"


def test_the_inline_ceiling_is_accepted_with_defaults_and_reads_as_the_policys(
    kube: KubeEnv, namespace: str
) -> None:
    manifest = policy_manifest("default", inline={"maxRate": {"limit": 60}, "maxDailyTotal": 5000})
    create(kube, namespace, manifest)
    spec = kube.kubectl_json("get", "tp", "default", "-n", namespace)["spec"]
    assert spec["inline"] == {
        "enabled": True,
        "maxRate": {"limit": 60, "period": "1m"},
        "maxDailyTotal": 5000,
        "timeZone": "UTC",
        "expiration": "P7D",
    }
    policy = policy_from_spec("default", spec)
    assert policy.inline is not None
    assert policy.inline.max_daily_total == 5000
    assert policy.inline.max_rate is not None
    assert policy.inline.max_rate.burst == 1  # 1 s apart: the jitter burst


# (id, spec overrides, text the refusal must contain: the field and the reason)
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    # CEL rules
    (
        "cel-burst-above-limit",
        {"rate": {"limit": 10, "burst": 11}},
        ["spec.rate.burst", "rate.burst must not exceed rate.limit"],
    ),
    (
        "cel-window-end-before-start",
        {"schedule": {"windows": [{"days": ["Mon"], "start": "17:00", "end": "09:00"}]}},
        ["spec.schedule.windows[0].end", "end must be after its start"],
    ),
    (
        "cel-window-empty",
        {"schedule": {"windows": [{"days": ["Mon"], "start": "09:00", "end": "09:00"}]}},
        ["spec.schedule.windows[0].end", "end must be after its start"],
    ),
    (
        "cel-daily-cap-below-rate",
        {"rate": {"limit": 100}, "dailyCap": {"limit": 50}},
        ["spec.dailyCap.limit", "dailyCap.limit must be at least rate.limit"],
    ),
    (
        "cel-daily-cap-below-hourly-rate",
        {"rate": {"limit": 100, "period": "PT1H"}, "dailyCap": {"limit": 50}},
        ["spec.dailyCap.limit", "when rate.period is a day or less"],
    ),
    (
        "cel-daily-cap-below-daily-rate",
        {"rate": {"limit": 100, "period": "1d"}, "dailyCap": {"limit": 50}},
        ["spec.dailyCap.limit", "dailyCap.limit must be at least rate.limit"],
    ),
    # schema: required, enums, bounds, patterns, sets
    ("missing-portal", {"portalId": None}, ["spec.portalId", "Required value"]),
    ("missing-rate", {"rate": None}, ["spec.rate", "Required value"]),
    ("zero-limit", {"rate": {"limit": 0}}, ["spec.rate.limit", "greater than or equal to 1"]),
    ("negative-burst", {"rate": {"limit": 5, "burst": -1}}, ["spec.rate.burst"]),
    ("bad-period", {"rate": {"limit": 5, "period": "soon"}}, ["spec.rate.period"]),
    ("empty-iso-period", {"rate": {"limit": 5, "period": "PT"}}, ["spec.rate.period"]),
    # A zero-length period passed the pattern once; the policy model needs at least 1 second.
    *[
        (
            f"zero-period-{period}",
            {"rate": {"limit": 5, "period": period}},
            ["spec.rate.period", "rate.period must be at least 1 second"],
        )
        for period in ("0s", "0.0m", "P0D", "PT0S", "PT0H0M0S", "0d", "500ms")
    ],
    ("bad-expiration", {"expiration": "7 days"}, ["spec.expiration"]),
    ("bad-scope", {"scope": "Global"}, ["spec.scope", "Unsupported value"]),
    ("bad-overflow", {"overflow": "Drop"}, ["spec.overflow", "Unsupported value"]),
    ("bad-on-delete", {"onDelete": "Forget"}, ["spec.onDelete", "Unsupported value"]),
    ("bad-action-id", {"actionId": 0}, ["spec.actionId"]),
    ("negative-portal", {"portalId": -1}, ["spec.portalId"]),
    ("bad-name", {"name": "Not_A_Name"}, ["spec.name"]),
    (
        "bad-window-time",
        {"schedule": {"windows": [{"days": ["Mon"], "start": "9:00", "end": "17:00"}]}},
        ["spec.schedule.windows[0].start"],
    ),
    (
        "bad-day",
        {"schedule": {"windows": [{"days": ["Funday"], "start": "09:00", "end": "17:00"}]}},
        ["spec.schedule.windows[0].days[0]", "Unsupported value"],
    ),
    (
        "duplicate-day",
        {"schedule": {"windows": [{"days": ["Mon", "Mon"], "start": "09:00", "end": "10:00"}]}},
        ["spec.schedule.windows[0].days[1]", "Duplicate value"],
    ),
    ("no-windows", {"schedule": {"windows": []}}, ["spec.schedule.windows"]),
    (
        "window-without-days",
        {"schedule": {"windows": [{"start": "09:00", "end": "17:00"}]}},
        ["spec.schedule.windows[0].days", "Required value"],
    ),
    (
        "window-no-day",
        {"schedule": {"windows": [{"days": [], "start": "09:00", "end": "17:00"}]}},
        ["spec.schedule.windows[0].days"],
    ),
    ("bad-zone-shape", {"dailyCap": {"limit": 10, "timeZone": "New York"}}, ["timeZone"]),
    (
        "inline-burst",
        {"inline": {"maxRate": {"limit": 1, "burst": 2}}},
        ["spec.inline.maxRate.burst", "must not exceed"],
    ),
    ("inline-total", {"inline": {"maxDailyTotal": 0}}, ["spec.inline.maxDailyTotal"]),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_api_server_refuses_invalid_manifest(
    kube: KubeEnv, namespace: str, spec: dict[str, Any], expected: list[str]
) -> None:
    proc = create(kube, namespace, policy_manifest("bad", **spec), check=False)
    assert proc.returncode != 0, f"accepted: {spec}"
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert kube.kubectl("get", "tp", "-n", namespace, "-o", "name").stdout.strip() == ""


# CEL transition rules: fields that may not change once a policy exists.
IMMUTABLE: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("portal", {}, {"portalId": 99}, ["spec.portalId", "portalId is immutable"]),
    ("scope", {}, {"scope": "PerWorkflow"}, ["spec.scope", "scope is immutable"]),
    ("action-changed", {"actionId": 1}, {"actionId": 2}, ["spec.actionId", "is immutable"]),
    ("action-added", {}, {"actionId": 2}, ["spec.actionId", "cannot be added or removed"]),
    ("name-changed", {"name": "a"}, {"name": "b"}, ["spec.name", "name is immutable"]),
    ("name-added", {}, {"name": "b"}, ["spec.name", "cannot be added or removed"]),
]


@pytest.mark.parametrize(
    ("initial", "patch", "expected"), [c[1:] for c in IMMUTABLE], ids=[c[0] for c in IMMUTABLE]
)
def test_api_server_refuses_changing_identity_fields(
    kube: KubeEnv,
    namespace: str,
    initial: dict[str, Any],
    patch: dict[str, Any],
    expected: list[str],
) -> None:
    create(kube, namespace, policy_manifest("fixed", **initial))
    proc = kube.kubectl(
        "patch",
        "tp",
        "fixed",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": patch}),
        check=False,
    )
    assert proc.returncode != 0, "patch accepted"
    for text in expected:
        assert text in proc.stderr, proc.stderr
    # Fields outside the identity still change freely.
    kube.kubectl(
        "patch", "tp", "fixed", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":true}}'
    )
