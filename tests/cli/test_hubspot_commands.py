"""`throttle hubspot register-action` and `rotate-keys` against the simulator, run as processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from throttle.history.migrations import migrate
from throttle.hubspot.action_definition import action_definition
from throttle.hubspot.client import TokenGrant
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenStore, purge_disabled_tokens
from throttle.settings import Settings
from throttle_dev.localenv import free_port

THROTTLE = [sys.executable, "-m", "throttle.cli.main"]


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "PUBLIC_"))}
    return {**clean, "LOG_FORMAT": "text", **{k.upper(): v for k, v in values.items()}}


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "throttle_dev.simulator",
            "--port",
            str(port),
            "--app-id",
            "99",
            "--developer-api-key",
            "dk",
        ],
        env=env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/_sim/faults", timeout=1).read()  # noqa: S310
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(proc.communicate()[0].decode()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_register_action_creates_then_updates(simulator_process: str, tmp_path: Path) -> None:
    base = env(
        tmp_path,
        hubspot_api_base=simulator_process,
        hubspot_developer_api_key="dk",
        public_url="https://throttle.example.com",
    )
    first = subprocess.run(
        [*THROTTLE, "hubspot", "register-action", "--app-id", "99"],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert "created for app 99: https://throttle.example.com/api/hubspot/action" in first.stdout
    second = subprocess.run(
        [*THROTTLE, "hubspot", "register-action", "--app-id", "99"],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "updated" in second.stdout
    listing = json.loads(
        urllib.request.urlopen(  # noqa: S310
            simulator_process + "/automation/v4/actions/99?hapikey=dk"
        ).read()
    )
    assert len(listing["results"]) == 1
    definition = listing["results"][0]
    assert definition["revisionId"] == "2"
    policy = definition["inputFields"][0]["typeDefinition"]
    assert policy["optionsUrl"] == "https://throttle.example.com/api/hubspot/options"
    outputs = {f["typeDefinition"]["name"] for f in definition["outputFields"]}
    declared = action_definition("https://throttle.example.com")["outputFields"]
    assert outputs == {f["typeDefinition"]["name"] for f in declared}
    assert {
        "throttle_status",
        "throttle_reason",
        "throttle_priority",
        "throttle_applied",
    } <= outputs
    wrong = subprocess.run(
        [*THROTTLE, "hubspot", "register-action", "--app-id", "99"],
        env={**base, "HUBSPOT_DEVELOPER_API_KEY": "bad"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 2
    assert "401" in wrong.stderr
    assert "bad" not in wrong.stderr
    missing = subprocess.run(
        [*THROTTLE, "hubspot", "register-action"],
        env=env(tmp_path, public_url="https://x.example.com"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "HUBSPOT_APP_ID" in missing.stderr


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _keys(text: str) -> Any:
    return Settings(_env_file=None, encryption_key=text).encryption_keys  # type: ignore[call-arg]


async def _seed(database_url: str, key_text: str, portals: int) -> None:
    await migrate(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    store = TokenStore(pool, TokenCipher(_keys(key_text)))
    for portal in range(1, portals + 1):
        await store.save(portal, TokenGrant(f"at-{portal}", f"rt-{portal}", 1800))
    await pool.close()


async def _read(database_url: str, key_text: str, portal: int) -> str:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        stored = await TokenStore(pool, TokenCipher(_keys(key_text))).load(portal)
        assert stored is not None
        return stored.refresh_token
    finally:
        await pool.close()


def test_rotate_keys_then_old_key_can_go(database_url: str, tmp_path: Path) -> None:
    old, new = _key(), _key()
    asyncio.run(_seed(database_url, old, 30))
    base = env(tmp_path, database_url=database_url)
    result = subprocess.run(
        [*THROTTLE, "rotate-keys"],
        env={**base, "ENCRYPTION_KEY": f"{new},{old}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    new_id, old_id = (k.key_id for k in _keys(f"{new},{old}"))
    assert f"30 of 30 token rows re-encrypted under key {new_id}" in result.stdout
    assert "remove them from ENCRYPTION_KEY" in result.stdout
    assert old_id in result.stdout
    assert asyncio.run(_read(database_url, new, 17)) == "rt-17"  # the new key alone suffices
    # Rotating with only a key the rows do not use fails clearly and changes nothing.
    stranger = subprocess.run(
        [*THROTTLE, "rotate-keys"],
        env={**base, "ENCRYPTION_KEY": _key()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert stranger.returncode == 2
    assert "no longer holds" in stranger.stderr
    assert asyncio.run(_read(database_url, new, 3)) == "rt-3"


async def _rotate_while_a_row_is_locked(
    database_url: str, portal: int, command: list[str], environ: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run rotate-keys while another connection holds one row (as a token refresh does)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM oauth_tokens WHERE portal_id = $1 FOR UPDATE", portal)
            return await asyncio.to_thread(
                subprocess.run,
                command,
                env=environ,
                cwd=cwd,
                capture_output=True,
                text=True,
                check=False,
            )
    finally:
        await conn.close()


def test_rotate_keys_says_when_rows_were_skipped(database_url: str, tmp_path: Path) -> None:
    """A row a token refresh holds is skipped (SKIP LOCKED); the command once said "no row uses
    key(s) ... any more" anyway, inviting the operator to remove a key that row still needs."""
    old, new = _key(), _key()
    asyncio.run(_seed(database_url, old, 5))
    environ = {**env(tmp_path, database_url=database_url), "ENCRYPTION_KEY": f"{new},{old}"}
    result = asyncio.run(
        _rotate_while_a_row_is_locked(
            database_url, 3, [*THROTTLE, "rotate-keys"], environ, tmp_path
        )
    )
    assert result.returncode == 2, result.stdout
    assert "4 of 5 token rows re-encrypted" in result.stdout
    assert "No row uses" not in result.stdout
    assert "1 token row(s) still use an older key" in result.stderr
    assert "run `throttle rotate-keys` again" in result.stderr
    again = subprocess.run(
        [*THROTTLE, "rotate-keys"], env=environ, cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "1 of 5 token rows re-encrypted" in again.stdout
    assert "remove them from ENCRYPTION_KEY" in again.stdout


async def _uninstall(database_url: str, key_text: str, portal: int, purge: bool) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await TokenStore(pool, TokenCipher(_keys(key_text))).mark_uninstalled(
            portal, "uninstalled: refresh token refused (HTTP 400 BAD_REFRESH_TOKEN)"
        )
        if purge:
            await pool.execute(
                "UPDATE oauth_tokens SET disabled_at = now() - interval '30 days' "
                "WHERE portal_id = $1",
                portal,
            )
            assert await purge_disabled_tokens(pool, 7) == 1
    finally:
        await pool.close()


def test_portal_restore_undoes_an_uninstall_while_its_tokens_are_kept(
    database_url: str, tmp_path: Path
) -> None:
    key = _key()
    asyncio.run(_seed(database_url, key, 2))
    asyncio.run(_uninstall(database_url, key, 1, purge=False))
    asyncio.run(_uninstall(database_url, key, 2, purge=True))
    base = {**env(tmp_path, database_url=database_url), "ENCRYPTION_KEY": key}

    def restore(portal: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*THROTTLE, "portal", "restore", str(portal)],
            env=base,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    restored = restore(1)
    assert restored.returncode == 0, restored.stderr
    assert "portal 1 restored (it had been uninstalled: refresh token refused" in restored.stdout
    assert asyncio.run(_read(database_url, key, 1)) == "rt-1"  # the very tokens it had
    assert "nothing to restore" in restore(1).stdout
    purged = restore(2)
    assert purged.returncode == 2
    assert "no longer kept: install the app again" in purged.stderr
    unknown = restore(99)
    assert unknown.returncode == 2
    assert "never installed the app" in unknown.stderr
