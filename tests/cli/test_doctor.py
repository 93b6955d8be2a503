"""`throttle doctor` against real Redis, PostgreSQL and the simulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.hubspot_simulator import StartSimulator
from throttle.cli.doctor import run_checks
from throttle.engine.policy import Policy
from throttle.engine.policy_index import registry_put
from throttle.engine.scripts import Scripts
from throttle.hubspot.action_definition import register_action
from throttle.hubspot.client import DeveloperAuth, HubSpotClient, TokenGrant
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenStore


def by_name(checks: list[Any]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for check in checks:
        found.setdefault(check.name, []).append((check.status, check.detail))
    return found


async def test_doctor_reports_every_area(
    start_simulator: StartSimulator,
    make_settings: Any,
    pool: Any,
    redis: Any,
    session: aiohttp.ClientSession,
) -> None:
    running = await start_simulator(app_id=77, developer_api_key="dev-key")
    sim = running.sim
    settings = make_settings(
        hubspot_api_base=running.url,
        hubspot_client_id=sim.config.client_id,
        hubspot_client_secret=sim.config.client_secret,
        hubspot_app_id=77,
        hubspot_developer_api_key="dev-key",
    )
    store = TokenStore(pool, TokenCipher(settings.encryption_keys))
    good = sim.issue_tokens(1)
    await store.save(1, TokenGrant(good["access_token"], good["refresh_token"], 1800))
    narrow = sim.issue_tokens(2, scopes=["oauth"])
    await store.save(2, TokenGrant(narrow["access_token"], narrow["refresh_token"], 1800))
    await store.save(3, TokenGrant("x", "y", 1800))
    await store.mark_uninstalled(3, "uninstalled: test")
    await registry_put(
        Scripts(redis),
        Policy.model_validate({"name": "p", "portalId": 9, "rate": {"limit": 1, "period": "1m"}}),
    )

    checks = by_name(await run_checks(settings))
    assert checks["redis"][0][0] == "ok"
    assert checks["durability"] == [
        (
            "ok",
            "standard: Redis has appendonly yes, appendfsync everysec (REDIS_DURABILITY=strict: "
            "nothing answered BLOCK is lost to a crash)",
        )
    ]
    assert checks["postgresql"] == [("ok", "reachable")]
    assert checks["migrations"] == [("ok", "current")]
    assert checks["portal 1"][0][0] == "ok"
    assert checks["portal 2"] == [("fail", "missing scopes automation: reinstall the app")]
    [(status, detail)] = checks["portal 3"]
    assert status == "warn"
    assert detail.startswith("uninstalled: test; tokens kept since ")
    assert "`throttle portal restore 3` undoes the uninstall" in detail
    assert checks["hubspot app"] == [
        ("ok", "no configuration fault met at HubSpot's token endpoint")
    ]
    assert ("warn", "policies for portals without the app: 9") in checks["policies"]
    assert checks["action definition"][0][0] == "fail"
    assert "register-action" in checks["action definition"][0][1]

    client = HubSpotClient(session, running.url)
    await register_action(client, 77, DeveloperAuth(api_key="dev-key"), settings.public_url)
    checks = by_name(await run_checks(settings))
    assert checks["action definition"][0][0] == "ok"
    strict = by_name(await run_checks(settings.model_copy(update={"redis_durability": "strict"})))
    [(status, detail)] = strict["durability"]
    assert status == "fail"
    assert "REDIS_DURABILITY=strict" in detail
    assert "appendfsync everysec" in detail
    text = repr(checks)
    for token in (good["access_token"], good["refresh_token"], narrow["access_token"]):
        assert token not in text


async def test_doctor_names_a_refused_client_secret_and_uninstalls_nobody(
    start_simulator: StartSimulator, make_settings: Any, pool: Any, redis: Any
) -> None:
    running = await start_simulator(access_token_ttl_s=1800)
    sim = running.sim
    settings = make_settings(
        hubspot_api_base=running.url,
        hubspot_client_id=sim.config.client_id,
        hubspot_client_secret=sim.config.client_secret,
    )
    store = TokenStore(pool, TokenCipher(settings.encryption_keys))
    due = sim.issue_tokens(1)
    await store.save(1, TokenGrant(due["access_token"], due["refresh_token"], 1))  # expired soon
    sim.set_faults(reject_client_secret_seconds=3600)
    await asyncio.sleep(1.1)

    checks = by_name(await run_checks(settings))
    [(status, detail)] = checks["portal 1"]
    assert status == "fail"
    assert "refuses the app's client id or secret (HTTP 400 BAD_CLIENT_SECRET)" in detail
    [(status, detail)] = checks["hubspot app"]
    assert status == "fail"
    assert "check HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET" in detail
    assert "portals stay installed" in detail
    assert sim.config.client_secret not in repr(checks)
    installation = await store.installation(1)
    assert installation is not None
    assert installation.status == "installed"
    assert await store.load(1) is not None

    # Fresh tokens need no refresh: what a dispatcher met (the shared record) is still named.
    fresh = sim.issue_tokens(1)
    await store.save(1, TokenGrant(fresh["access_token"], fresh["refresh_token"], 1800))
    checks = by_name(await run_checks(settings))
    assert checks["portal 1"][0][0] == "ok"
    assert checks["hubspot app"][0][0] == "fail"

    # Fixed: the next refresh clears it everywhere.
    sim.set_faults(reject_client_secret_until=0.0)
    await store.save(1, TokenGrant(fresh["access_token"], fresh["refresh_token"], 1))
    await asyncio.sleep(1.1)
    checks = by_name(await run_checks(settings))
    assert checks["portal 1"][0][0] == "ok"
    assert checks["hubspot app"][0][0] == "ok"


def test_doctor_cli_names_missing_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "throttle.cli.main", "doctor"],
        env={"PATH": "/usr/bin:/bin", "LOG_FORMAT": "text"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "REDIS_URL is not set" in result.stdout
    assert "DATABASE_URL is not set" in result.stdout
