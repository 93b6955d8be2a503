"""Settings: a missing or malformed variable stops a command with one line naming it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from throttle.settings import SettingsError, load_settings

SECRET = "s3cr3t-value-that-must-not-leak-0123456789"


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    return subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def full_env() -> dict[str, str]:
    return {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db",
        "HUBSPOT_CLIENT_ID": "id",
        "HUBSPOT_CLIENT_SECRET": SECRET,
        "PUBLIC_URL": "https://throttle.example.com",
        "SECRET_KEY_BASE": SECRET,
        "ENCRYPTION_KEY": base64.b64encode(b"k" * 32).decode(),
    }


def test_webhook_without_redis_url_names_it_in_one_line(tmp_path: Path) -> None:
    env = full_env()
    del env["REDIS_URL"]
    result = run_cli(["webhook"], env, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "REDIS_URL" in lines[0]
    assert "Traceback" not in result.stderr


def test_malformed_value_is_named_but_never_echoed(tmp_path: Path) -> None:
    env = {**full_env(), "DATABASE_URL": f"mysql://root:{SECRET}@db/x"}
    result = run_cli(["webhook"], env, tmp_path)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_public_url_must_be_https_outside_localhost() -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL must be https://"):
        load_settings(_env_file=None, public_url="http://throttle.example.com")
    assert load_settings(_env_file=None, public_url="http://127.0.0.1:8080/").public_url == (
        "http://127.0.0.1:8080"
    )


def test_v2_span_may_not_outlast_the_dedupe_window() -> None:
    """A v2 signature carries no time: only a span within one dedupe window keeps replays out."""
    soon = datetime.now(UTC) + timedelta(hours=2)
    settings = load_settings(_env_file=None, allow_signature_v2_until=soon.isoformat())
    assert settings.allow_signature_v2_until == soon
    naive = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None)
    assert load_settings(_env_file=None, allow_signature_v2_until=naive.isoformat())
    with pytest.raises(SettingsError, match=r"^ALLOW_SIGNATURE_V2_UNTIL must be at most DEDUPE_S"):
        load_settings(_env_file=None, allow_signature_v2_until=soon.isoformat(), dedupe_seconds=60)
    with pytest.raises(SettingsError, match="ALLOW_SIGNATURE_V2_UNTIL"):
        load_settings(_env_file=None, allow_signature_v2_until="next tuesday")


def test_completion_deadline_must_fit_in_the_lease() -> None:
    """A completion request still out when its lease runs out may be sent again by the next
    holder: its deadline plus a tenth of the lease (at least 0.5 s) must fit in the lease."""
    fits = load_settings(
        _env_file=None, dispatcher_lease_seconds=12, hubspot_completion_timeout_seconds=10
    )
    assert fits.hubspot_completion_timeout_seconds == 10
    with pytest.raises(SettingsError) as refused:
        load_settings(
            _env_file=None, dispatcher_lease_seconds=8, hubspot_completion_timeout_seconds=10
        )
    message = str(refused.value)
    assert message.startswith("HUBSPOT_COMPLETION_TIMEOUT_SECONDS (10 s) must end before")
    assert "DISPATCHER_LEASE_SECONDS (8 s) with a margin of 0.8 s" in message
    with pytest.raises(SettingsError, match="HUBSPOT_COMPLETION_TIMEOUT_SECONDS"):
        load_settings(
            _env_file=None, dispatcher_lease_seconds=1, hubspot_completion_timeout_seconds=0.6
        )


def test_env_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "export REDIS_URL=redis://from-file:6379/0\nHUBSPOT_CLIENT_ID=from-file\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUBSPOT_CLIENT_ID", "from-env")
    settings = load_settings()
    assert settings.redis_url == "redis://from-file:6379/0"
    assert settings.hubspot_client_id == "from-env"


def test_seed_ecto_database_url_is_accepted() -> None:
    settings = load_settings(_env_file=None, database_url="ecto://u:p@db.internal/throttle")
    assert settings.database_url == "postgresql://u:p@db.internal/throttle"


def test_encryption_keys_rotate_newest_first() -> None:
    new, old = base64.b64encode(b"n" * 32).decode(), (b"o" * 32).hex()
    keys = load_settings(_env_file=None, encryption_key=f"{new},{old}").encryption_keys
    assert [k.material for k in keys] == [b"n" * 32, b"o" * 32]
    assert keys[0].key_id != keys[1].key_id
    with pytest.raises(SettingsError, match="ENCRYPTION_KEY each key must be 32 bytes"):
        load_settings(_env_file=None, encryption_key="too-short")


def test_an_encryption_key_never_shows_its_material() -> None:
    """A key printed by a debugger, a traceback's locals or a log line's f-string."""
    material = bytes(range(32))
    text = base64.b64encode(material).decode()
    settings = load_settings(_env_file=None, encryption_key=text)
    [key] = settings.encryption_keys
    for shown in (repr(key), str(key), f"{settings.encryption_keys}", repr(settings)):
        assert text not in shown
        assert repr(material) not in shown
        assert material.hex() not in shown
    assert key.key_id in repr(key)


def test_every_command_has_help(tmp_path: Path) -> None:
    result = run_cli(["--help"], {}, tmp_path)
    assert result.returncode == 0
    commands = [
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()
    ]
    assert {"webhook", "dispatcher", "operator", "migrate"} <= set(commands)
    for command in commands:
        sub = run_cli([command, "--help"], {}, tmp_path)
        assert sub.returncode == 0, (command, sub.stderr)
        assert "Usage:" in sub.stdout
