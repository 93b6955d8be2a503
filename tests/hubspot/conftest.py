"""Fixtures for the HubSpot integration: a migrated database, token stores, HTTP sessions."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from throttle.history.store import migrate
from throttle.hubspot.crypto import TokenCipher
from throttle.hubspot.tokens import TokenStore
from throttle.settings import EncryptionKey, Settings


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Any]:
    """A database migrated by the project's own `migrate` (0010 holds this area's tables)."""
    applied = await migrate(database_url)
    assert any(name.startswith("0010") for name in applied), applied
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
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
