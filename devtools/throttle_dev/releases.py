"""An earlier release of Throttle, runnable beside the working tree: for A/B benchmarks
(bench/ab.py) and the rolling-upgrade test (tests/e2e/test_upgrade.py).

`materialize(rev)` extracts the commit from the repository's own history (`git archive`: no
worktree is registered in the clone, and a clean CI clone has the full history) into
~/.cache/throttle/releases/<commit>/src and gives it a virtualenv of its own beside it, made once
and reused. A file lock makes two runs that want the same commit at once wait for each other
instead of building it twice.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "throttle" / "releases"


@dataclass(frozen=True)
class Release:
    """A commit's source and the interpreter of its own virtualenv."""

    commit: str
    src: Path
    python: Path

    def throttle_argv(self, *args: str) -> list[str]:
        """The release's `throttle` command (as `throttle_dev.stack.throttle_argv`)."""
        return [str(self.python), "-m", "throttle.cli.main", *args]

    @property
    def pythonpath(self) -> str:
        """PYTHONPATH for its processes: its own source, never the working tree's (a
        PYTHONPATH inherited from a test run would otherwise put the new code first)."""
        return f"{self.src}{os.pathsep}{self.src / 'devtools'}"


def commit_of(rev: str, repo: Path = REPO) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"commit {rev} is not in {repo}'s history ({done.stderr.strip()}); "
            "a shallow clone needs `git fetch --unshallow`"
        )
    return done.stdout.strip()


def materialize(rev: str, *, dev: bool = False, repo: Path = REPO, cache: Path = CACHE) -> Release:
    """The release at `rev`, extracted and installed once per commit (`dev`: with its `[dev]`
    extras and development tools, as the benchmarks need; without, only what its `throttle`
    command needs)."""
    commit = commit_of(rev, repo)
    home = cache / commit[:12]
    src, venv = home / "src", home / "venv"
    python = venv / "bin" / "python"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (src / ".extracted").exists():
            print(f"==> extracting {commit[:12]} into {src}", flush=True)
            archive = subprocess.run(
                ["git", "-C", str(repo), "archive", "--format=tar", commit],
                capture_output=True,
                check=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(src, filter="data")
            (src / ".extracted").touch()
        marker = venv / (".installed-dev" if dev else ".installed")
        if not marker.exists() and not (venv / ".installed-dev").exists():
            print(f"==> virtualenv for {commit[:12]} (once)", flush=True)
            # Nothing of the caller's environment may point pip at the working tree.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
            packages = ["-e", f"{src}[dev]" if dev else str(src)]
            if dev and (src / "devtools" / "pyproject.toml").exists():
                packages += ["-e", str(src / "devtools")]
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *packages], check=True, env=env
            )
            marker.touch()
    return Release(commit, src, python)
