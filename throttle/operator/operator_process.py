"""`throttle operator`: run the kopf operator (in a cluster) or the local manifest reconciler.

In a cluster every replica serves `/healthz` and `/metrics` at once, waits for the Lease, and
only the holder runs kopf; a replica that loses the Lease stops acting and exits with an error
(Kubernetes restarts it as a standby). Everything is per instance (registry, memo, Kubernetes
credentials), so tests run several operators side by side in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf

from throttle.health_server import health_server
from throttle.kube import api_client, client_configuration
from throttle.metrics import Metrics
from throttle.operator.handler_state import OperatorState
from throttle.operator.handlers import build_registry, operator_settings
from throttle.operator.lease import LeaderLease, LeaseSettings
from throttle.operator.local import run_local
from throttle.settings import Settings

log = logging.getLogger(__name__)

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LeadershipLost(RuntimeError):
    """This replica stopped renewing the Lease; another one may act now."""


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def lease_namespace(settings: Settings) -> str:
    if settings.operator_lease_namespace:
        return settings.operator_lease_namespace
    with contextlib.suppress(OSError):
        return _SA_NAMESPACE.read_text().strip() or "default"
    return "default"


async def run(
    settings: Settings,
    namespaces: list[str] | None = None,
    *,
    kubeconfig: Path | str | None = None,
    identity: str | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | threading.Event | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Stand by until this replica holds the Lease, then run kopf until `stop` or a lost Lease.

    `namespaces` empty = every namespace (cluster-wide). `ready` is set once kopf's startup
    handlers have run (tests wait on it). Raises LeadershipLost when the Lease was lost.

    An `AsyncExitStack` opens the Kubernetes client, the health server and the Lease, so a
    start that fails half-way (the port taken) closes what it had opened, in reverse order.
    """
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    configuration = await asyncio.to_thread(client_configuration, kubeconfig)
    identity = identity or settings.operator_identity or default_identity()
    role = {"role": "standby", "identity": identity}
    async with contextlib.AsyncExitStack() as opened:
        kube = api_client(configuration)
        opened.callback(kube.close)
        lease = LeaderLease(
            api=_coordination_api(kube),
            settings=LeaseSettings(
                name=settings.operator_lease_name,
                namespace=lease_namespace(settings),
                identity=identity,
                duration_s=settings.operator_lease_seconds,
                renew_s=max(0.5, settings.operator_lease_seconds / 3),
                retry_s=max(0.5, settings.operator_lease_seconds / 5),
            ),
        )
        await opened.enter_async_context(
            health_server(
                settings.host,
                settings.metrics_port,
                metrics.registry,
                lambda: (True, {"status": "ok", **role}),
            )
        )
        if not await lease.acquire(stop):
            return
        role["role"] = "leader"
        opened.callback(role.update, role="stopped")
        acting = await opened.enter_async_context(_leading(lease, stop, identity))
        state = OperatorState(settings=settings, metrics=metrics, kube_configuration=configuration)
        await kopf.operator(
            registry=build_registry(settings),
            settings=operator_settings(settings),
            memo=kopf.Memo(state=state),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            stop_flag=acting,
            ready_flag=ready,
        )


@contextlib.asynccontextmanager
async def _leading(
    lease: LeaderLease, stop: asyncio.Event, identity: str
) -> AsyncIterator[asyncio.Event]:
    """While inside, keep renewing the Lease this replica holds. Yields the event that tells
    kopf to stop acting: `stop` was set, or a renewal failed. On the way out the Lease is
    released, unless it was lost (then LeadershipLost: another replica may be acting)."""
    acting = asyncio.Event()
    relay = asyncio.create_task(_relay(stop, acting))
    keeper = asyncio.create_task(lease.keep(acting))
    try:
        yield acting
    finally:
        relay.cancel()
        keeper.cancel()
        lost = acting.is_set() and not stop.is_set() and lease.expired
        if not lost:
            await asyncio.to_thread(lease.release)
    if lost:
        raise LeadershipLost(f"{identity} lost the operator lease")


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _coordination_api(kube: Any) -> Any:
    from kubernetes import client as k8s

    return k8s.CoordinationV1Api(kube)


def serve(settings: Settings, namespaces: list[str], local: Path | None = None) -> None:
    """Entry point of `throttle operator` (blocks; SIGTERM/SIGINT stop it cleanly)."""
    if settings.log_level != "DEBUG":
        # kopf logs "Timer ... succeeded" per policy per status refresh; our Events and our own
        # log lines say what matters. LOG_LEVEL=DEBUG shows kopf's per-object lines again.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if local is not None:
        asyncio.run(_with_signals(lambda stop: run_local(settings, local, stop=stop)))
        return
    from kubernetes.config import ConfigException

    try:
        asyncio.run(_with_signals(lambda stop: run(settings, namespaces, stop=stop)))
    except LeadershipLost as exc:
        log.error("%s; exiting so a restart rejoins as a standby", exc)
        raise SystemExit(1) from None
    except ConfigException as exc:
        sys.stderr.write(
            f"throttle: error: no Kubernetes credentials ({exc}); run in a pod with a "
            "ServiceAccount, set KUBECONFIG, or use `throttle operator --local DIR`\n"
        )
        raise SystemExit(2) from None


async def _with_signals(main: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)
