"""Real Redis and PostgreSQL servers (and an nginx reverse proxy) as child processes, for tests,
benchmarks and `make demo`.

Each server runs on a free loopback port with its data in a folder the caller owns, so a test
session or a demo never touches a system service. PostgreSQL refuses to run as root (CI runs as
root), so when we are root its processes run as the unprivileged `nobody` user; so does nginx, a
proxy in front of a test's webhook needs no privilege.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import redis


class ServiceError(RuntimeError):
    """A server could not be found, started or reached; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too; both below 65536.

    The kernel's ephemeral range reaches past 55535, where Redis Cluster cannot put its bus port,
    so cluster nodes pick from a range below the ephemeral one instead.
    """
    for _ in range(200):
        port = random.randint(20000, 30000)
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise ServiceError("no free port pair (p, p+10000) for a Redis Cluster node")


def find_binary(name: str) -> str:
    """Find a server binary on PATH or in Debian's versioned PostgreSQL folder."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    if os.access(f"/usr/sbin/{name}", os.X_OK):  # nginx, for a user whose PATH lacks sbin
        return f"/usr/sbin/{name}"
    raise ServiceError(f"{name} not found: run `make deps` (installs Redis, PostgreSQL and nginx)")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _Process:
    """One child process with its log file; stopped by signal, killed if it lingers."""

    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, argv: Sequence[str], **kwargs: Any) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._log:
            self._log.close()
            self._log = None


def _wait(check: Any, what: str, proc: _Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise ServiceError(f"{what} exited during start:\n{tail(proc.log_path)}")
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not up yet; retried until the deadline  # nosec B110
            pass
        time.sleep(0.05)
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s:\n{tail(proc.log_path)}")


START_ATTEMPTS = 3
"""A port `free_port` found free can be bound by any other process before the server binds it;
a server on a port it picked itself moves to another one, at most this many times."""


class _OnPort(Protocol):
    port: int
    _picked_port: bool
    _proc: _Process

    def argv(self) -> list[str]: ...


def _start_on_port(
    server: _OnPort, ready: Any, what: str, pick: Callable[[], int], **popen: Any
) -> None:
    """Start the server's process and wait until `ready()`; on a port it picked itself that
    someone else bound first, pick another and start again. A restart keeps the port."""
    for attempt in range(START_ATTEMPTS):
        server._proc.start(server.argv(), **popen)
        try:
            _wait(ready, f"{what} on port {server.port}", server._proc)
        except ServiceError as exc:
            lost = server._picked_port and "Address already in use" in str(exc)
            if not lost or attempt + 1 == START_ATTEMPTS:
                raise
            server._proc.stop()
            server.port = pick()
            continue
        server._picked_port = False
        return


@dataclass
class RedisServer:
    """A `redis-server` on 127.0.0.1; `appendonly` gives the durability the chart configures."""

    workdir: Path
    port: int = 0
    appendonly: bool = False
    appendfsync: str = "everysec"
    """`always` for REDIS_DURABILITY=strict (each write fsync'ed before Redis answers)."""
    cluster: bool = False
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._picked_port = not self.port
        self.port = self.port or self._free_port()
        self._proc = _Process(f"redis:{self.port}", self.workdir / "redis.log")

    def _free_port(self) -> int:
        return free_cluster_port() if self.cluster else free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        args = [
            find_binary("redis-server"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]
        return args + self.extra_args

    def start(self) -> RedisServer:
        _start_on_port(self, lambda: self.sync_client().ping(), "redis-server", self._free_port)
        return self

    def stop(self, kill: bool = False) -> None:
        self._proc.stop(signal.SIGKILL if kill else signal.SIGTERM)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def sync_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def client(self, **kwargs: Any) -> Any:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url, **kwargs)

    def log_tail(self) -> str:
        return tail(self._proc.log_path)


@dataclass
class RedisCluster:
    """Three masters with all 16384 slots spread across them: enough to prove hash tags hold."""

    workdir: Path
    nodes: list[RedisServer] = field(default_factory=list)

    def start(self) -> RedisCluster:
        self.nodes = [
            RedisServer(self.workdir / f"node{i}", cluster=True).start() for i in range(3)
        ]
        cli = find_binary("redis-cli")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        first = self.nodes[0].sync_client()
        deadline = time.monotonic() + 30
        while _cluster_state(first) != "ok":
            if time.monotonic() > deadline:
                raise ServiceError("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def client(self, **kwargs: Any) -> Any:
        from redis.asyncio.cluster import ClusterNode
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        return AsyncRedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in self.startup_nodes], **kwargs
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def log_tail(self) -> str:
        return "\n".join(n.log_tail() for n in self.nodes)


def _cluster_state(client: redis.Redis) -> str:
    info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    if isinstance(info, dict):  # redis-py parses the reply into a dict
        return str(info.get("cluster_state", ""))
    return "ok" if b"cluster_state:ok" in info else "fail"


def make_traversable(folder: Path) -> None:
    """Let `nobody` (PostgreSQL's user when we are root) reach a folder: every ancestor gets the
    search bit only — never read — wherever it lacks it, e.g. a private home or temp folder."""
    if os.geteuid() != 0:
        return
    for path in [folder, *folder.parents]:
        if path == Path("/"):
            break
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, mode | 0o111)  # noqa: S103 - search bit only


def _demote() -> dict[str, Any]:
    """Popen arguments that run PostgreSQL as `nobody` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb once, then start/stop at will (outage tests)."""

    workdir: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._picked_port = not self.port
        self.port = self.port or free_port()
        self.datadir = self.workdir / "data"
        self._proc = _Process(f"postgres:{self.port}", self.workdir / "postgres.log")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _chown(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "nobody", "nogroup")
            os.chmod(self.workdir, 0o700)
            make_traversable(self.workdir.parent)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self._chown()
        result = subprocess.run(
            [
                find_binary("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            check=False,
            **_demote(),
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresServer:
        self.init()
        _start_on_port(self, self._ready, "postgres", free_port, **_demote())
        return self

    def argv(self) -> list[str]:
        return [
            find_binary("postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.workdir),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "log_min_messages=warning",
        ]

    def _ready(self) -> bool:
        result = subprocess.run(
            [find_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                find_binary("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self, kill: bool = False) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, nothing is lost.
        self._proc.stop(signal.SIGKILL if kill else signal.SIGINT)

    def log_tail(self) -> str:
        return tail(self._proc.log_path)


@dataclass
class NginxProxy:
    """An nginx on 127.0.0.1 with the caller's `server { ... }` blocks, everything under `workdir`.

    The caller's servers listen where it says (`port` is a free one it may use); the main
    configuration here only keeps nginx in the foreground and out of the system's folders.
    """

    workdir: Path
    servers: str
    port: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.conf = self.workdir / "nginx.conf"
        self._proc = _Process(f"nginx:{self.port}", self.workdir / "nginx.log")

    def config(self) -> str:
        temp = self.workdir / "temp"
        temps = "\n".join(
            f"    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""daemon off;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    access_log {self.workdir / "access.log"};
{temps}
{self.servers}
}}
"""

    def start(self) -> NginxProxy:
        self.conf.write_text(self.config())
        (self.workdir / "temp").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in [self.workdir, *self.workdir.rglob("*")]:
                shutil.chown(path, "nobody", "nogroup")
            make_traversable(self.workdir)
        nginx = find_binary("nginx")
        check = subprocess.run(
            [nginx, "-t", "-q", "-e", "stderr", "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
            **_demote(),
        )
        if check.returncode != 0:
            raise ServiceError(f"nginx refused its configuration:\n{check.stderr}")
        self._proc.start([nginx, "-e", "stderr", "-c", str(self.conf)], **_demote())
        _wait(lambda: not _port_is_free(self.port), f"nginx on port {self.port}", self._proc)
        return self

    def stop(self) -> None:
        # SIGQUIT is nginx's graceful shutdown: requests in flight finish.
        self._proc.stop(signal.SIGQUIT)

    def log_tail(self) -> str:
        return tail(self._proc.log_path)

    def access_log(self) -> str:
        return tail(self.workdir / "access.log", lines=1000)
