"""The PostgreSQL pool every history reader and writer opens.

Bounded waits on purpose: connecting gives up after 10 s and a statement after 30 s, so a
database that stops answering fails the caller (the history writer keeps its batch and retries;
a command reports) instead of holding it forever.
"""

from __future__ import annotations

import asyncpg


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, timeout=10, command_timeout=30
    )
