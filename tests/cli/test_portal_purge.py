"""`throttle portal purge P`, run as a process against real Redis and PostgreSQL: without --yes
it only says what would go; with it, an installed portal is uninstalled, then purged and the
purge recorded — no token in what it prints or logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.builders import item, policy
from throttle.engine.queue import Queue
from throttle.engine.registry import portal_state, reconcile
from throttle.hubspot.client import TokenGrant
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenStore
from throttle.settings import Settings

PORTAL = 4242
ACCESS = "access-token-never-printed"


def purge(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HUBSPOT_", "REDIS_"))},
        "DATABASE_URL": str(settings.database_url),
        "REDIS_URL": settings.redis_url,
        "ENCRYPTION_KEY": settings.encryption_key.get_secret_value(),  # type: ignore[union-attr]
        "LOG_FORMAT": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", "portal", "purge", str(PORTAL), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_purge_asks_first_then_uninstalls_purges_and_records(
    redis: Any, pool: Any, make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    store = TokenStore(pool, TokenCipher(settings.encryption_keys))
    await store.save(PORTAL, TokenGrant(ACCESS, "refresh-token-never-printed", 1800))
    queue = Queue(redis)
    p = policy("orders", PORTAL, rate={"limit": 1, "period": "1h"})
    await reconcile(queue, p)
    for n in range(3):
        await queue.enqueue(item(f"cb-{n}", PORTAL), p)

    asked = await asyncio.to_thread(purge, settings, tmp_path)
    assert asked.returncode == 0, asked.stderr
    assert "would delete its tokens, 1 policies with 3 executions" in asked.stdout
    assert "Nothing deleted: run again with --yes" in asked.stdout
    assert (await portal_state(queue, PORTAL)).executions == 3
    assert await store.load(PORTAL) is not None

    done = await asyncio.to_thread(purge, settings, tmp_path, "--yes")
    assert done.returncode == 0, done.stderr
    assert "uninstalled; waiting" in done.stdout
    assert "1 token rows, 1 policies with 3 executions, 0 history rows deleted" in done.stdout
    assert f"portal {PORTAL} purged (request)" in done.stderr  # the log line
    assert "never-printed" not in done.stdout + done.stderr + asked.stdout + asked.stderr
    assert (await portal_state(queue, PORTAL)).policies == ()
    installation = await store.installation(PORTAL)
    assert installation is not None
    assert (installation.status, installation.uninstall_reason) == (
        "uninstalled",
        "data purged on request",
    )
    rows = await pool.fetch("SELECT reason, tokens, executions_dropped FROM portal_purges")
    assert [tuple(r) for r in rows] == [("request", 1, 3)]
