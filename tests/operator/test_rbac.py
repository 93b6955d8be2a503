"""The operator's ServiceAccount may do exactly what deploy/rbac/operator-role.yaml grants.

The other operator tests run the operator with a token of this ServiceAccount, which shows the
rules are enough; these checks (impersonating the ServiceAccount) show they are not more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.kube_control_plane import KubeEnv
from tests.fixtures.operator_thread import OPERATOR_NS, OPERATOR_SA

pytestmark = pytest.mark.kube

ALLOWED = [
    ("get", "throttlepolicies.throttle.dev", "any-ns"),
    ("list", "throttlepolicies.throttle.dev", "any-ns"),
    ("watch", "throttlepolicies.throttle.dev", "any-ns"),
    ("patch", "throttlepolicies.throttle.dev", "any-ns"),
    ("patch", "throttlepolicies.throttle.dev/status", "any-ns"),
    ("create", "events", "any-ns"),
    ("create", "leases.coordination.k8s.io", OPERATOR_NS),
    ("get", "leases.coordination.k8s.io/throttle-operator", OPERATOR_NS),
    ("update", "leases.coordination.k8s.io/throttle-operator", OPERATOR_NS),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
]

DENIED = [
    ("create", "throttlepolicies.throttle.dev", "any-ns"),
    ("delete", "throttlepolicies.throttle.dev", "any-ns"),
    ("update", "throttlepolicies.throttle.dev", "any-ns"),
    ("get", "secrets", OPERATOR_NS),
    ("list", "secrets", "any-ns"),
    ("list", "pods", OPERATOR_NS),
    ("create", "leases.coordination.k8s.io", "any-ns"),
    ("update", "leases.coordination.k8s.io/someone-else", OPERATOR_NS),
    ("delete", "leases.coordination.k8s.io/throttle-operator", OPERATOR_NS),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", OPERATOR_NS),
]


def can_i(kube: KubeEnv, verb: str, resource: str, namespace: str) -> bool:
    who = kube.impersonate(OPERATOR_NS, OPERATOR_SA)
    ns = ["-n", namespace] if namespace else []
    proc = kube.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        *ns,
        as_user=who.user,
        as_groups=who.groups,
        check=False,
    )
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


@pytest.mark.parametrize(("verb", "resource", "namespace"), ALLOWED)
def test_operator_account_may(
    kube: KubeEnv, operator_kubeconfig: Path, verb: str, resource: str, namespace: str
) -> None:
    assert can_i(kube, verb, resource, namespace)


@pytest.mark.parametrize(("verb", "resource", "namespace"), DENIED)
def test_operator_account_may_not(
    kube: KubeEnv, operator_kubeconfig: Path, verb: str, resource: str, namespace: str
) -> None:
    assert not can_i(kube, verb, resource, namespace)


def test_operator_token_is_the_service_account(kube: KubeEnv, operator_kubeconfig: Path) -> None:
    """The operator tests really act as the ServiceAccount, not as the admin."""
    proc = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                        kubeconfig=operator_kubeconfig)  # fmt: skip
    assert proc.stdout == f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
    denied = kube.kubectl("get", "secrets", "-n", OPERATOR_NS, kubeconfig=operator_kubeconfig,
                          check=False)  # fmt: skip
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
