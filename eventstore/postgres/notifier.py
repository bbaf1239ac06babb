"""Wake-ups for subscribers: after appends, at most one ``pg_notify`` per ``interval`` seconds,
sent on a pool connection outside the appending transaction (a NOTIFY inside it would take a
database-wide lock at commit), fire-and-forget."""

from __future__ import annotations

import asyncio
import logging

from .connections import Connections
from .queries import QUERIES

log = logging.getLogger("eventstore.subscriptions")


def channel(schema: str) -> str:
    """The schema's own channel: a subscriber wakes for appends to its schema only. NOTIFY names
    are at most 63 bytes; two long schema names sharing that prefix only share wake-ups."""
    return f"credit_events.{schema}"[:63]


_NOTIFY_SQL: str = QUERIES.notify_appended.sql


class Notifier:
    def __init__(self, connections: Connections, interval: float = 0.002) -> None:
        self._connections = connections
        self._interval = interval
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def poke(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_later(self._interval, self._start)

    def _start(self) -> None:
        self._scheduled = False  # appends from now on schedule the next one
        if self._connections.pool is None:
            return
        task = asyncio.get_running_loop().create_task(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        pool = self._connections.pool
        if pool is None:
            return
        try:
            async with pool.acquire() as conn:
                await conn.execute(_NOTIFY_SQL, channel(self._connections.errors.schema))
        except Exception as exc:  # a lost wake-up only delays subscribers until their fallback poll
            log.debug("pg_notify failed: %r", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
