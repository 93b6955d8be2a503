"""Shared pieces of the deployment tests: helm and promtool binaries, chart rendering."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.kube import KubeEnvError, find_binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "throttle"
VALUES_ALL = Path(__file__).resolve().parent / "values-all.yaml"
THIRD_PARTY_CRDS = Path(__file__).resolve().parent / "crds"
PROMTOOL_SCRIPT = REPO / "scripts" / "promtool.sh"


@dataclass(frozen=True)
class Helm:
    """The helm binary with its config, cache and data kept in a temporary folder."""

    path: str
    home: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        return env

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.path, *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=self.env())
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def template(
        self,
        *,
        values: Iterable[Path] = (),
        set_values: Iterable[str] = (),
        namespace: str = "throttle",
        release: str = "rel",
        extra: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        """`helm template` the chart; the rendered objects (hooks included, CRDs not)."""
        args: list[str | Path] = ["template", release, CHART, "--namespace", namespace]
        for path in values:
            args += ["-f", path]
        for item in set_values:
            args += ["--set", item]
        args += list(extra)
        out = self.run(*args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        path = find_binaries(("helm",))["helm"]
    except KubeEnvError as exc:
        pytest.fail(f"no helm binary: {exc}", pytrace=False)
    assert path
    return Helm(path=path, home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool, built once from the Go module proxy by scripts/promtool.sh (cached)."""
    proc = subprocess.run(
        ["bash", str(PROMTOOL_SCRIPT)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/promtool.sh failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def rendered_default(helm: Helm) -> list[dict[str, Any]]:
    return helm.template()


@pytest.fixture(scope="session")
def rendered_all(helm: Helm) -> list[dict[str, Any]]:
    return helm.template(values=[VALUES_ALL])


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {len(found)}"
    return found[0]


def pod_specs(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs of every workload, by component label."""
    specs = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            template = obj["spec"]["template"]
            specs[template["metadata"]["labels"]["app.kubernetes.io/component"]] = template["spec"]
    return specs
