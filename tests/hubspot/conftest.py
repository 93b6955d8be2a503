"""Fixtures for the HubSpot integration: a migrated database, token stores, HTTP sessions."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import aiohttp
import asyncpg
import pytest

from throttle.crypto import TokenCipher
from throttle.settings import EncryptionKey, Settings
from throttle.tokens import TokenStore


async def apply_hubspot_migrations(pool: Any) -> None:
    """This area's migrations (0010-0019), in order."""
    folder = files("throttle").joinpath("migrations")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql") and entry.name[:3] == "001":
            await pool.execute(entry.read_text(encoding="utf-8"))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    await apply_hubspot_migrations(pool)
    yield pool
    await pool.close()


def new_key() -> EncryptionKey:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, encryption_key=base64.b64encode(secrets.token_bytes(32)).decode()
    )
    return settings.encryption_keys[0]


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher([new_key()])


@pytest.fixture
def store(pool: Any, cipher: TokenCipher) -> TokenStore:
    return TokenStore(pool, cipher)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
