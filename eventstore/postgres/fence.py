"""The settled high-water mark (docs/ordering.md): the highest position at or below which every
event is visible and none can still appear. Every position-order read takes it once per call, so
a reader never returns position N+1 while N could still commit.

With replicas, the fence is taken on the primary together with its WAL position at that moment
(``take_fence(..., with_wal=True)``): a standby that has replayed that far holds every event at or below the mark."""

from __future__ import annotations

import time

import asyncpg

from .queries import QUERIES

FENCE_WAIT_MS = 100  # server-side wait for in-flight commits per call; the caller asks again

_MARK_SQL: str = QUERIES.subscription_fence_mark.sql
_WAIT_SQL: str = QUERIES.subscription_fence_wait.sql
_MARK_WAL_SQL: str = QUERIES.replica_fence_mark.sql
_WAIT_WAL_SQL: str = QUERIES.replica_fence_wait.sql


async def take_fence(conn: asyncpg.Connection, known: int, timeout: float | None = None, *, with_wal: bool = False) -> tuple[int, int] | None:
    """The settled high-water mark, given ``known``: a mark settled earlier (0 if none), or the
    position a reader already has (a result at or below it is then only "nothing new"). When the
    sequence has not moved past ``known``: one round trip that spends no transaction id.
    Returns ``(high_water, wal)``; ``wal`` is, ``with_wal``, the primary's WAL insert position
    once the mark settled (a standby that has replayed that far holds every event at or below
    it), else 0. ``None`` when transactions in flight outlast ``timeout`` seconds (``None``:
    wait for them)."""
    if with_wal:
        return await _settle(conn, known, timeout, _MARK_WAL_SQL, _WAIT_WAL_SQL)
    return await _settle(conn, known, timeout, _MARK_SQL, _WAIT_SQL)


async def _settle(conn: asyncpg.Connection, known: int, timeout: float | None, mark_sql: str, wait_sql: str) -> tuple[int, int] | None:
    high_water, marker, *wal = await conn.fetchrow(mark_sql, known)
    if marker is None:
        return high_water, (wal[0] if wal else 0)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        settled, *wal = await conn.fetchrow(wait_sql, marker, FENCE_WAIT_MS)
        if settled:
            return high_water, (wal[0] if wal else 0)
        # A transaction in flight outlasts the wait: keep waiting (delayed, never skipped).
        if deadline is not None and time.monotonic() >= deadline:
            return None
