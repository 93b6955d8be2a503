"""The Lease that picks one active operator, against the real API server, with clocks as inputs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kubernetes import client as k8s

from tests.fixtures.kube_control_plane import KubeEnv
from throttle.operator.lease import LeaderLease, LeaseSettings

pytestmark = pytest.mark.kube


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(kube: KubeEnv, namespace: str, identity: str, clock: Clock) -> LeaderLease:
    api = k8s.CoordinationV1Api(kube.api_client())
    settings = LeaseSettings(name="op", namespace=namespace, identity=identity, duration_s=10)
    return LeaderLease(api=api, settings=settings, clock=clock)


def holder(kube: KubeEnv, namespace: str) -> str | None:
    lease = kube.kubectl_json("get", "lease", "op", "-n", namespace)
    return lease["spec"].get("holderIdentity")


def test_one_holder_until_it_goes_silent(kube: KubeEnv, namespace: str) -> None:
    clock_a, clock_b = Clock(), Clock()
    a, b = replica(kube, namespace, "a", clock_a), replica(kube, namespace, "b", clock_b)
    assert a.try_acquire()  # creates the Lease
    assert not b.try_acquire()
    assert holder(kube, namespace) == "a"

    # A renews within the duration: B keeps waiting however long it has been waiting in total.
    for _ in range(3):
        clock_a.now += 6
        clock_b.now += 6
        assert a.try_acquire()
        assert not b.try_acquire()
        assert not a.expired

    # A goes silent: B waits a full duration from its own last observation, then takes over.
    clock_b.now += 9
    assert not b.try_acquire()
    clock_b.now += 1
    assert b.try_acquire()
    assert holder(kube, namespace) == "b"
    lease = kube.kubectl_json("get", "lease", "op", "-n", namespace)
    assert lease["spec"]["leaseTransitions"] == 1

    # A comes back: it is no longer the holder, and knows its own term ran out.
    clock_a.now += 10
    assert a.expired
    assert not a.try_acquire()


def test_release_hands_over_at_once(kube: KubeEnv, namespace: str) -> None:
    clock = Clock()
    a, b = replica(kube, namespace, "a", clock), replica(kube, namespace, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert holder(kube, namespace) is None
    assert b.try_acquire()  # no waiting for the duration
    assert holder(kube, namespace) == "b"
    a.release()  # not the holder: changes nothing
    assert holder(kube, namespace) == "b"


def test_a_stale_write_loses(kube: KubeEnv, namespace: str) -> None:
    """Two replicas that read the same free Lease cannot both win it (resourceVersion)."""
    clock = Clock()
    a, b = replica(kube, namespace, "a", clock), replica(kube, namespace, "b", clock)
    assert a.try_acquire()
    a.release()
    api = k8s.CoordinationV1Api(kube.api_client())
    stale = api.read_namespaced_lease("op", namespace)
    assert b.try_acquire()

    class Replay:
        """Hands `a` the copy read before `b` wrote, as if both had read at the same time."""

        def read_namespaced_lease(self, name: str, ns: str) -> object:
            return stale

        def __getattr__(self, name: str) -> object:
            return getattr(api, name)

    a.api = Replay()
    assert not a.try_acquire()  # 409 Conflict: b's write stands
    assert holder(kube, namespace) == "b"
