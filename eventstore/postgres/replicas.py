"""Reads on hot standbys (docs/scaling.md). A read's pages go to a streaming standby once it has
replayed the primary's WAL as far as the read needs, else to the primary:

- a position-order read takes the fence on the primary, with the primary's WAL position once
  the fence settled (``fence.settle_with_wal``): the standby then holds every event at or below
  the mark, so nothing is skipped;
- a read without a fence (an entity's events, a snapshot) takes the primary's WAL position when
  it begins: every append that returned before is on the standby when the standby serves it.

A standby still behind after ``max_lag`` seconds, unreachable, cancelling the statement (a
recovery conflict) or not a standby at all is passed over, for the next one and then the
primary, and tried again :data:`RETRY_AFTER` seconds later without waiting. A URL that names
another cluster (another system identifier) is never read from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from ..dsn import DatabaseURL
from .connections import CLOSE_TIMEOUT, Connections, open_pool
from .errors import UNAVAILABLE
from .queries import QUERIES

log = logging.getLogger("eventstore.replicas")

RETRY_AFTER = 1.0  # seconds a standby passed over is left alone before it is tried again
# A standby that cannot serve this page: gone, starting, or cancelling the statement because
# replay needed what it read (a recovery conflict, SQLSTATE 40001).
REPLICA_ERRORS = (*UNAVAILABLE, asyncpg.SerializationError)

_REPLAYED_SQL: str = QUERIES.standby_replayed.sql
_IDENTITY_SQL: str = QUERIES.cluster_identity.sql
_PRIMARY_WAL_SQL: str = QUERIES.primary_wal_position.sql

CONNECTING, OK, BEHIND, DOWN, NOT_STANDBY, FOREIGN = "connecting", "ok", "behind", "down", "not a standby", "another cluster"


class Replica:
    """One standby: its pool, how far it was seen to have replayed, and whether reads go to it."""

    def __init__(self, url: DatabaseURL) -> None:
        self.url = url
        self.pool: asyncpg.Pool | None = None
        self.replayed = 0  # the WAL position it had replayed when last asked
        self.state = CONNECTING
        self.retry_at = 0.0
        self.pages = 0

    def pass_over(self, state: str, reason: str) -> None:
        if state != self.state:
            log.warning("replica %s passed over (%s): %s", self.url.where, state, reason)
        self.state = state
        self.retry_at = time.monotonic() + RETRY_AFTER


class Replicas:
    def __init__(self, urls: list[DatabaseURL], primary: Connections, *, max_lag: float) -> None:
        self.primary = primary
        self.max_lag = max_lag
        self.replicas = [Replica(url) for url in urls]
        self.primary_pages = 0  # pages read on the primary because no standby could serve them
        self._system_id: int | None = None
        self._next = 0
        self._closed = False  # after close(), no standby pool is opened again

    async def open(self, system_id: int) -> None:
        """Connect to every standby at once; one that does not answer is passed over, not fatal."""
        self._system_id = system_id
        await asyncio.gather(*(self._connect(replica) for replica in self.replicas))

    async def close(self) -> None:
        self._closed = True
        for replica in self.replicas:
            pool, replica.pool = replica.pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
                except TimeoutError:
                    pool.terminate()

    async def wal_position(self) -> int:
        """The primary's WAL position now, for a read that takes no fence."""
        async with self.primary.acquire() as conn:
            return await conn.fetchval(_PRIMARY_WAL_SQL)

    async def fetch(self, wal: int, sql: str, *args: Any, planned: bool = False) -> list[asyncpg.Record]:
        """One page, from a standby that has replayed ``wal``, else from the primary."""
        for replica in self._candidates():
            rows = await self._fetch_on(replica, wal, sql, args, planned)
            if rows is not None:
                return rows
        self.primary_pages += 1
        return await (self.primary.fetch_planned if planned else self.primary.fetch)(sql, *args)

    def metrics(self) -> dict[str, Any]:
        return {
            "replicas": [
                {"database": replica.url.where, "state": replica.state, "pages": replica.pages, "replayed_wal": replica.replayed}
                for replica in self.replicas
            ],
            "replica_fallback_pages": self.primary_pages,
        }

    def _candidates(self) -> list[Replica]:
        """Serving standbys in turn (one further on per call), then any whose retry time came."""
        if self._closed:
            return []
        now, count = time.monotonic(), len(self.replicas)
        start, self._next = self._next, (self._next + 1) % count
        turn = [self.replicas[(start + i) % count] for i in range(count)]
        return [r for r in turn if r.state == OK] + [r for r in turn if r.state != OK and r.state != FOREIGN and r.retry_at <= now]

    async def _fetch_on(self, replica: Replica, wal: int, sql: str, args: tuple[Any, ...], planned: bool) -> list[asyncpg.Record] | None:
        if replica.pool is None and not await self._connect(replica):
            return None
        assert replica.pool is not None
        # A standby passed over is only looked at, not waited for: reads do not queue behind it again.
        wait = self.max_lag if replica.state == OK else 0.0
        try:
            async with replica.pool.acquire(timeout=self.primary.connect_timeout) as conn:
                if replica.replayed < wal and not await self._caught_up(replica, conn, wal, wait):
                    return None
                rows = await ((await conn.prepare(sql)).fetch(*args) if planned else conn.fetch(sql, *args))
        except REPLICA_ERRORS as exc:
            replica.pass_over(DOWN, replica.url.describe(exc))
            replica.replayed = 0  # a restarted standby may come back short of where it was
            with contextlib.suppress(*UNAVAILABLE):
                await replica.pool.expire_connections()
            return None
        except asyncpg.PostgresError as exc:  # refused (a privilege, say): as the primary's errors are
            raise (self.primary.errors.translate(exc, f"read from the standby {replica.url.where}", "eventstore_reader") or exc) from None
        replica.state = OK
        replica.pages += 1
        return rows

    async def _caught_up(self, replica: Replica, conn: asyncpg.Connection, wal: int, wait: float) -> bool:
        """Whether the standby has replayed ``wal``, polling up to ``wait`` seconds (0.5 ms apart,
        doubling to 20 ms: a healthy standby is usually a commit or two behind)."""
        deadline = time.monotonic() + wait
        pause = 0.0005
        while True:
            replayed = await conn.fetchval(_REPLAYED_SQL)
            if replayed is None:
                replica.pass_over(NOT_STANDBY, "the server is not in recovery (promoted, or not a standby)")
                return False
            replica.replayed = replayed
            if replayed >= wal:
                return True
            if time.monotonic() >= deadline:
                replica.pass_over(BEHIND, f"{wal - replayed} bytes of WAL behind after {wait:g} s")
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def _connect(self, replica: Replica) -> bool:
        """Open the standby's pool and check it is of the primary's cluster."""
        try:
            if replica.pool is None:
                options = self.primary.options("eventstore-replica", url=replica.url)
                replica.pool = await open_pool(options, min_size=1, max_size=self.primary.max_size)
            async with replica.pool.acquire(timeout=self.primary.connect_timeout) as conn:
                system_id = await conn.fetchval(_IDENTITY_SQL)
        except (*REPLICA_ERRORS, asyncpg.PostgresError) as exc:
            replica.pass_over(DOWN, replica.url.describe(exc))
            return False
        if system_id != self._system_id:
            replica.pass_over(FOREIGN, f"system identifier {system_id}, the primary's is {self._system_id}: never read from")
            return False
        replica.replayed = 0
        replica.state = OK
        return True


def split_replica_urls(urls: Sequence[str] | str | None) -> list[str]:
    """``replica_urls`` as a list: a string (or ``$DATABASE_REPLICA_URLS`` when None) is split at
    the commas that begin another URL, so a multi-host replica URL stays whole."""
    if urls is None:
        urls = os.environ.get("DATABASE_REPLICA_URLS", "")
    if isinstance(urls, str):
        urls = re.split(r",\s*(?=[a-z+]+://)", urls.strip())
    return [url.strip() for url in urls if url and url.strip()]
