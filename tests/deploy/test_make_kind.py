"""`make kind` cannot run here (no Docker engine, no kind node image): its dry run must show it
wraps the same install-and-check script the node test runs (throttle_dev.cluster_check), with
images built by docker and loaded by kind, so what runs here is what users run."""

from __future__ import annotations

import shlex
import subprocess

from tests.fixtures.helm_chart import REPO


def dry_run(*args: str) -> list[str]:
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Continuation lines of one recipe line belong together.
    return proc.stdout.replace("\\\n", " ").splitlines()


def test_make_kind_runs_the_shared_install_and_check_script_with_kinds_loader() -> None:
    lines = dry_run("kind", "KIND_CLUSTER=try-me")
    [check] = [line for line in lines if "-m throttle_dev.cluster_check" in line]
    argv = shlex.split(check)
    assert argv[0] == "ENGINE=docker", "images built with docker, the engine kind runs on"
    assert argv[2:5] == ["-m", "throttle_dev.cluster_check", "install-and-check"]
    options = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert options["--load"] == "kind load image-archive {archive} --name try-me"
    assert options["--kubeconfig"] == ".local/kind-try-me.kubeconfig"
    creates = [line for line in lines if "kind create cluster" in line]
    assert creates
    assert "--name 'try-me'" in creates[0]
    kubeconfig = [line for line in lines if "kind get kubeconfig" in line]
    assert kubeconfig
    assert kubeconfig[0].endswith("> .local/kind-try-me.kubeconfig")
    # It stops with a clear message when Docker or kind is missing, before creating anything.
    first_create = lines.index(creates[0])
    assert any("docker info" in line for line in lines[:first_create])
    assert any("kind kubectl helm" in line for line in lines[:first_create])
    # And says what to look at.
    shown = "\n".join(lines[lines.index(check) :])
    assert "get tp" in shown
    assert "dashboards/throttle.json" in shown


def test_the_install_and_check_command_takes_what_make_kind_passes() -> None:
    from click.testing import CliRunner

    from throttle_dev.cluster_check import main

    result = CliRunner().invoke(main, ["install-and-check", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--kubeconfig", "--load", "--namespace", "--helm", "--kubectl", "--traffic"):
        assert option in result.output


def test_deploy_docs_walk_through_make_kind() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    section = docs.split("## Try it on kind: `make kind`", 1)[1].split("\n## ", 1)[0]
    for needed in (
        "make kind",
        "values-dev.yaml",
        "not for production",
        "kind load image-archive",
        "kubectl -n throttle get tp",
        "throttle status",
        "dashboards/throttle.json",
        "kind delete cluster",
        "kubectl -n throttle delete tp --all",
        "throttle_dev.cluster_check install-and-check",
    ):
        assert needed in section, needed
