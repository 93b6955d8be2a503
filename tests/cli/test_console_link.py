"""`throttle console-link`: the printed link enters the console of its portal with its role."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from tests.fixtures.console import PORTAL_A, ConsoleStack, parse_html
from throttle.cli.main import main
from throttle.webhook_service.console.sessions import SessionSigner

KEY = "a-console-session-key-of-40-characters-xx"


def _run(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("CONSOLE_SESSION_KEY", raising=False)
    return CliRunner().invoke(main, ["console-link", *args], env=env)


def test_missing_key_is_an_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(["--portal", "5", "--role", "viewer"], tmp_path, monkeypatch)
    assert result.exit_code == 2
    assert "CONSOLE_SESSION_KEY is not set" in result.output
    assert "console/link" not in result.output


@pytest.mark.parametrize("expires", ["0s", "91d", "soon"])
def test_bad_expiry_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expires: str
) -> None:
    args = ["--portal", "5", "--role", "viewer", "--expires", expires]
    result = _run(args, tmp_path, monkeypatch, CONSOLE_SESSION_KEY=KEY)
    assert result.exit_code == 2
    assert "--expires" in result.output


def test_link_carries_portal_role_name_and_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--portal", "42", "--role", "operator", "--expires", "2h", "--name", "ann"]
    args += ["--base-url", "https://throttle.example.com/"]
    result = _run(args, tmp_path, monkeypatch, CONSOLE_SESSION_KEY=KEY)
    assert result.exit_code == 0, result.output
    url = urlsplit(result.output.strip())
    assert (url.scheme, url.netloc, url.path) == ("https", "throttle.example.com", "/console/link")
    session = SessionSigner(KEY).read("link", parse_qs(url.query)["t"][0])
    assert (session.portal_id, session.role, session.who) == (42, "operator", "link:ann")
    assert abs(session.expires_at - (time.time() + 7200)) < 5
    with pytest.raises(Exception, match="not issued"):
        SessionSigner(KEY + "-other").read("link", parse_qs(url.query)["t"][0])


async def test_printed_link_opens_the_console(
    console_stack: ConsoleStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = console_stack.settings.console_session_key
    assert key is not None
    args = ["--portal", str(PORTAL_A), "--role", "viewer", "--base-url", console_stack.base]
    result = _run(args, tmp_path, monkeypatch, CONSOLE_SESSION_KEY=key.get_secret_value())
    assert result.exit_code == 0, result.output
    browser = console_stack.browser()
    async with browser.get(result.output.strip()) as r:
        assert r.status == 200
        assert parse_html(await r.text()).has_id("queues")
