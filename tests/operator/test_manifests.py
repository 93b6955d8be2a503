"""Manifests become the same Policy with or without an API server in between."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import REPO, policy_manifest
from throttle.engine.manifests import (
    ManifestError,
    crd_rule_errors,
    load_folder,
    load_policies,
    policy_from_resource,
)

EXAMPLES = REPO / "deploy" / "examples"


def test_every_example_is_a_valid_policy() -> None:
    manifests = load_folder(EXAMPLES)
    assert len(manifests) >= 10
    assert [m.errors for m in manifests if m.errors] == []
    keys = {m.key for m in manifests}
    assert {"1010:default", "0:default"} <= keys  # portal default, global default
    assert {m.on_delete for m in manifests} >= {"Drain", "Succeed"}


@pytest.mark.kube
@pytest.mark.usefixtures("throttle_crd")
def test_api_server_defaults_equal_local_defaults(kube: KubeEnv, namespace: str) -> None:
    """What `kubectl apply` stores and what local mode reads are the same Policy."""
    kube.apply(EXAMPLES, namespace=namespace)
    stored = kube.kubectl_json("get", "tp", "-n", namespace)["items"]
    in_cluster = {p.key: p for p in map(policy_from_resource, stored)}
    local = {m.key: m.policy for m in load_folder(EXAMPLES)}
    assert in_cluster == local


def test_invalid_time_zone_names_the_field() -> None:
    manifest = policy_manifest("tz", dailyCap={"limit": 100, "timeZone": "Mars/Olympus_Mons"})
    with pytest.raises(ManifestError) as caught:
        policy_from_resource(manifest)
    assert caught.value.errors[0][0] == "spec.dailyCap.timeZone"
    assert "IANA time zone" in caught.value.errors[0][1]


@pytest.mark.parametrize("period", ["0s", "P0D", "PT0S", "500ms", 1e308, "99999999999999w"])
def test_a_local_manifest_with_a_zero_or_huge_period_names_the_field(period: object) -> None:
    """Local mode (manifest files) refuses what the CRD and the config API refuse."""
    manifest = policy_manifest("p", rate={"limit": 5, "period": period})
    with pytest.raises(ManifestError) as caught:
        policy_from_resource(manifest)
    assert caught.value.errors[0][0] == "spec.rate.period", caught.value.errors


def test_crd_cel_rules_apply_locally_too() -> None:
    spec = {"portalId": 1, "rate": {"limit": 10, "burst": 11}, "dailyCap": {"limit": 5}}
    assert [path for path, _ in crd_rule_errors(spec)] == ["spec.rate.burst", "spec.dailyCap.limit"]
    weekly = {"portalId": 1, "rate": {"limit": 1000, "period": "P7D"}, "dailyCap": {"limit": 200}}
    assert crd_rule_errors(weekly) == []
    with pytest.raises(ManifestError, match=r"spec\.rate\.burst: rate\.burst must not exceed"):
        policy_from_resource(policy_manifest("x", **spec))


def test_name_precedence_spec_then_annotation_then_metadata() -> None:
    manifest = policy_manifest("object-name")
    assert policy_from_resource(manifest).name == "object-name"
    manifest["metadata"]["annotations"] = {"throttle.dev/policy-name": "annotated"}
    assert policy_from_resource(manifest).name == "annotated"
    manifest["spec"]["name"] = "default"
    assert policy_from_resource(manifest).name == "default"


def test_folder_reading_skips_other_kinds_and_flags_problems(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
                policy_manifest("one"),
                policy_manifest("bad", rate={"limit": 0}),
            ]
        )
    )
    (tmp_path / "b.yml").write_text(yaml.safe_dump(policy_manifest("one")))  # duplicate
    (tmp_path / "c.yaml").write_text("this: [is not yaml")
    (tmp_path / "notes.txt").write_text(yaml.safe_dump(policy_manifest("ignored")))
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.yaml").write_text(yaml.safe_dump(policy_manifest("nested")))

    manifests = load_folder(tmp_path)
    summary = [(Path(m.source).name, m.key, [p for p, _ in m.errors]) for m in manifests]
    assert summary == [
        ("a.yaml#1", "1234:one", []),
        ("a.yaml#2", None, ["spec.rate.limit"]),
        ("b.yml", None, ["metadata.name"]),
        ("c.yaml", None, ["file"]),
    ]
    with pytest.raises(ManifestError, match=r"spec\.rate\.limit"):
        load_policies(tmp_path)


def test_wrong_api_version_is_an_error(tmp_path: Path) -> None:
    manifest = policy_manifest("old")
    manifest["apiVersion"] = "throttle.dev/v1"
    (tmp_path / "old.yaml").write_text(textwrap.dedent(yaml.safe_dump(manifest)))
    [m] = load_folder(tmp_path)
    assert m.policy is None
    assert m.errors[0][0] == "apiVersion"
