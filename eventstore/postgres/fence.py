"""The settled high-water mark (docs/ordering.md): the highest position at or below which every
event is visible and none can still appear. Every position-order read takes it once per call, so
a reader never returns position N+1 while N could still commit."""

from __future__ import annotations

import time

import asyncpg

from .queries import QUERIES

FENCE_WAIT_MS = 100  # server-side wait for in-flight commits per call; the caller asks again

_MARK_SQL: str = QUERIES.subscription_fence_mark.sql
_WAIT_SQL: str = QUERIES.subscription_fence_wait.sql


async def settle(conn: asyncpg.Connection, known: int, timeout: float | None = None) -> int | None:
    """The settled high-water mark, given ``known``: a mark settled earlier (0 if none), or the
    position a reader already has (a result at or below it is then only "nothing new"). When the
    sequence has not moved past ``known``: one round trip that spends no transaction id.
    ``None`` when transactions in flight outlast ``timeout`` seconds (``None``: wait for them)."""
    high_water, marker = await conn.fetchrow(_MARK_SQL, known)
    if marker is None:
        return high_water
    deadline = None if timeout is None else time.monotonic() + timeout
    while not await conn.fetchval(_WAIT_SQL, marker, FENCE_WAIT_MS):
        # A transaction in flight outlasts the wait: keep waiting (delayed, never skipped).
        if deadline is not None and time.monotonic() >= deadline:
            return None
    return high_water
