"""The whole product as local processes: what `make demo`, the end-to-end benchmarks and the fault
tests run.

Every part is a real child process started through the same `throttle` CLI a pod runs — Redis and
PostgreSQL (from `throttle_dev.localenv`), `throttle migrate`, the HubSpot simulator, the webhook, N
dispatchers and the local policy reconciler — each with its own log file under the stack's folder
and an environment built from one settings dict, so what runs here is what runs in a cluster.
Fault tests reuse `kill`, `restart` and `start_component` to take one part down at a time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from throttle.settings import Settings
from throttle_dev.localenv import (
    PostgresServer,
    RedisServer,
    ServiceError,
    free_port,
    make_traversable,
    tail,
)
from throttle_dev.releases import Release

if TYPE_CHECKING:
    from throttle.settings import Settings

TERM_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 120.0  # generous: CI machines are shared and slow to start Python processes


def throttle_argv(*args: str, release: Release | None = None) -> list[str]:
    """The `throttle` command as this interpreter runs it (works without the console script),
    or as an earlier release's own interpreter does."""
    if release is not None:
        return release.throttle_argv(*args)
    return [sys.executable, "-m", "throttle.cli.main", *args]


def release_env(release: Release | None) -> dict[str, str]:
    """Environment overrides of a component of `release` (None: this code, none needed)."""
    return {"pythonpath": release.pythonpath} if release is not None else {}


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers 2xx: readiness of a component that serves HTTP."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback  # nosec B310
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Component:
    """One child process of the stack: how to start it, where it logs, how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    ready_url: str | None = None
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {time.strftime('%H:%M:%S')}: {self.name}\n".encode())
        self._log.flush()
        # A session of its own: Ctrl-C in the terminal reaches the demo only, which then stops
        # each child in order instead of all of them dying at once mid-write.
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self.ready_url is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(f"{self.name} exited during start:\n{self.log_tail()}")
            if http_ok(self.ready_url):
                return
            time.sleep(0.1)
        raise ServiceError(f"{self.name} not ready in {timeout:.0f}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = TERM_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful: dispatchers hand back what they hold), SIGKILL if it lingers."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a node failure or an OOM kill looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def generated_secrets() -> dict[str, str]:
    """Fresh app credentials and keys for a throwaway stack (never reused, never printed)."""
    return {
        "hubspot_client_id": str(uuid.uuid4()),
        "hubspot_client_secret": str(uuid.uuid4()),
        "encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "secret_key_base": secrets.token_urlsafe(48),
        "throttle_api_token": secrets.token_urlsafe(32),
        "console_session_key": secrets.token_urlsafe(40),
    }


@dataclass
class StackConfig:
    """What to run: how many dispatchers, which manifests, extra settings for every component."""

    root: Path
    dispatchers: int = 2
    manifests: Path | None = None
    simulator: bool = True
    simulator_args: list[str] = field(default_factory=list)
    reconciler: bool = True
    redis_appendonly: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    keep_data: bool = False
    release: Release | None = None
    """The release the components started with the stack run (`throttle migrate` too), e.g. the
    previous one for an upgrade run (throttle_dev.releases); None = this code. Components added
    later choose their own."""
    webhooks: int = 1
    """Webhook processes ("webhook", then "webhook-2", ...), each on its own port and public
    URL: more than one shows what a pod that did not take a change sees."""


class Stack:
    """Redis, PostgreSQL and every `throttle` component as processes under `config.root`.

    Use as a context manager (or call `start`/`stop`); `stop` runs on exit, on exceptions and on
    Ctrl-C, stopping components in reverse start order before the data services.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.root = config.root.resolve()
        # The stack owns its folder: leftovers of an earlier run (killed, or kept) would replay
        # old queues from Redis' AOF, so it starts empty.
        shutil.rmtree(self.root, ignore_errors=True)
        self.redis = RedisServer(self.root / "redis", appendonly=config.redis_appendonly)
        self.postgres = PostgresServer(self.root / "postgres")
        self.components: dict[str, Component] = {}
        self.webhook_port = free_port()
        self.simulator_port = free_port()
        self.settings: dict[str, str] = {}
        self._started: list[str] = []

    # --- addresses -----------------------------------------------------------------------------
    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    @property
    def action_url(self) -> str:
        return f"{self.webhook_url}/api/hubspot/action"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def database_url(self) -> str:
        return self.settings["database_url"]

    def webhook_url_of(self, name: str) -> str:
        """The base URL of one webhook process ("webhook", "webhook-2", ...)."""
        if name == "webhook":
            return self.webhook_url
        return f"http://127.0.0.1:{self.components[name].port}"

    @property
    def dispatcher_names(self) -> list[str]:
        return [n for n in self.components if n.startswith("dispatcher-")]

    # --- environment ---------------------------------------------------------------------------
    def build_settings(self) -> dict[str, str]:
        """The one settings dict (field name → value) every component's environment comes from."""
        base = {
            **generated_secrets(),
            "redis_url": self.redis.url,
            "database_url": self.postgres.url_for("throttle"),
            "public_url": self.webhook_url,
            "hubspot_api_base": self.simulator_url,
            "hubspot_app_base": self.simulator_url,
            "log_level": self.config.log_level,
            "log_format": "json",
        }
        return {**base, **self.config.settings}

    def environment(self, **overrides: str) -> dict[str, str]:
        """A child's environment: the settings as upper-case variables, nothing inherited that
        could change them (a developer's exported REDIS_URL must not leak into the demo)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
        }
        env["PYTHONUNBUFFERED"] = "1"
        for name, value in {**self.settings, **overrides}.items():
            env[name.upper()] = value
        return env

    def settings_object(self) -> Settings:
        """The same settings as a `Settings`, for in-process clients (status, reports)."""

        values: dict[str, Any] = dict(self.settings)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    # --- components ----------------------------------------------------------------------------
    def add(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_path: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Component:
        component = Component(
            name=name,
            argv=list(argv),
            env=self.environment(**(env or {})),
            log_path=self.root / "logs" / f"{name}.log",
            cwd=self.root,
            ready_url=f"http://127.0.0.1:{port}{ready_path}" if port and ready_path else None,
            port=port,
        )
        self.components[name] = component
        return component

    def _plan(self) -> None:
        cfg = self.config
        if cfg.simulator:
            self.add(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "throttle_dev.simulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.simulator_port),
                    *cfg.simulator_args,
                ],
                ready_path="/_sim/faults",  # the simulator's admin API answers once it is up
                port=self.simulator_port,
            )
        self.add(
            "webhook",
            throttle_argv("webhook", "--port", str(self.webhook_port), release=cfg.release),
            ready_path="/readyz",
            port=self.webhook_port,
            env={"host": "127.0.0.1", "port": str(self.webhook_port), **release_env(cfg.release)},
        )
        for i in range(2, cfg.webhooks + 1):
            self.add_webhook(f"webhook-{i}", cfg.release)
        for i in range(1, cfg.dispatchers + 1):
            self.add_dispatcher(f"dispatcher-{i}", cfg.release)
        if cfg.reconciler and cfg.manifests is not None:
            metrics = free_port()
            self.add(
                "reconciler",
                throttle_argv(
                    "operator", "--local", str(cfg.manifests.resolve()), release=cfg.release
                ),
                port=metrics,
                env={"metrics_port": str(metrics), **release_env(cfg.release)},
            )

    def add_webhook(self, name: str, release: Release | None = None) -> Component:
        """Another webhook process beside the first (same Redis and PostgreSQL); HubSpot signs
        for the URL it calls, so its public URL is its own."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        return self.add(
            name,
            throttle_argv("webhook", "--port", str(port), release=release),
            ready_path="/readyz",
            port=port,
            env={"host": "127.0.0.1", "port": str(port), "public_url": url, **release_env(release)},
        )

    def add_dispatcher(self, name: str, release: Release | None = None) -> Component:
        metrics = free_port()
        return self.add(
            name,
            throttle_argv("dispatcher", release=release),
            ready_path="/healthz",
            port=metrics,
            env={"metrics_port": str(metrics), "host": "127.0.0.1", **release_env(release)},
        )

    def migrate(self, release: Release | None = None) -> None:
        """`throttle migrate` to completion, as the chart's pre-install (or pre-upgrade) hook
        Job runs it: of `release` (default: this code)."""
        log = self.root / "logs" / "migrate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            result = subprocess.run(
                throttle_argv("migrate", release=release),
                env=self.environment(**release_env(release)),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=120,
            )
        if result.returncode != 0:
            raise ServiceError(f"throttle migrate failed:\n{tail(log)}")

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self, on_step: Callable[[str], None] | None = None) -> Stack:
        step = on_step or (lambda _msg: None)
        self.root.mkdir(parents=True, exist_ok=True)
        make_traversable(self.root)
        try:
            step("Redis")
            self.redis.start()
            step("PostgreSQL")
            self.postgres.start()
            self.postgres.psql('DROP DATABASE IF EXISTS "throttle"')
            self.postgres.create_database("throttle")
            self.settings = self.build_settings()
            self._plan()
            step("migrations")
            self.migrate(self.config.release)
            for name in list(self.components):
                step(name)
                self.start_component(name)
        except BaseException:
            self.stop()
            raise
        return self

    def start_component(self, name: str, wait: bool = True) -> Component:
        component = self.components[name]
        component.start()
        if name not in self._started:
            self._started.append(name)
        if wait:
            component.wait_ready()
        return component

    def kill(self, name: str) -> None:
        """SIGKILL one component (fault tests); `restart` or `start_component` brings it back."""
        self.components[name].kill()

    def terminate(self, name: str) -> int | None:
        return self.components[name].stop()

    def restart(self, name: str, kill: bool = False) -> Component:
        component = self.components[name]
        if kill:
            component.kill()
        else:
            component.stop()
        component.restarts += 1
        return self.start_component(name)

    def check_alive(self) -> list[str]:
        """Names of components that died on their own (the demo reports them with their log)."""
        return [n for n in self._started if not self.components[n].running]

    def stop(self) -> None:
        """Components in reverse start order (SIGTERM, then SIGKILL), then PostgreSQL and Redis."""
        for name in reversed(self._started):
            with contextlib.suppress(Exception):  # keep stopping the others
                self.components[name].stop()
        self._started.clear()
        for service in (self.postgres, self.redis):
            with contextlib.suppress(Exception):  # best effort on the way out
                service.stop()
        if not self.config.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> Iterator[tuple[str, str]]:
        for name, component in self.components.items():
            yield name, component.log_tail()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
