"""Shared pieces of the operator tests: the installed CRDs and ThrottlePolicy manifests."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.kube import KubeEnv

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "deploy" / "crds" / "throttlepolicies.yaml"
CRD_NAME = "throttlepolicies.throttle.dev"
API_VERSION = "throttle.dev/v1alpha1"


@pytest.fixture(scope="session")
def throttle_crd(kube: KubeEnv) -> str:
    """The ThrottlePolicy CRD, installed once per session from the shipped file."""
    kube.apply(CRD_FILE)
    kube.wait_crd_established(CRD_NAME)
    return CRD_NAME


def policy_manifest(name: str | None = None, /, **spec: Any) -> dict[str, Any]:
    """A minimal valid ThrottlePolicy; keyword arguments replace top-level spec fields."""
    body: dict[str, Any] = {"portalId": 1234, "rate": {"limit": 10, "period": "1m"}}
    body.update(copy.deepcopy(spec))
    body = {k: v for k, v in body.items() if v is not None}
    return {
        "apiVersion": API_VERSION,
        "kind": "ThrottlePolicy",
        "metadata": {"name": name or f"tp-{secrets.token_hex(3)}"},
        "spec": body,
    }
