"""The PostgreSQL journal: events in ``credit_events``, statements from ``sql/*.sql``, one round
trip per append, keyset pages for every read."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ..base import BaseEventJournal, Checked, Checkpoint, EntityRead, EventQuery, Location, Stored
from ..dsn import DatabaseURL, parse_database_url
from ..envelope import DEFAULT_MAX_PAYLOAD_BYTES, EventEnvelope, Snapshot
from ..errors import ConfigurationError, EventStoreError
from ..telemetry import record_fence_wait
from .connections import Connections
from .errors import RACE_SQLSTATE, ErrorMap, conflict_target
from .fence import take_fence
from .group_commit import CONFLICT, STORED, GroupCommit
from .notifier import Notifier
from .queries import QUERIES
from .query_plan import ENTITY_SQL, MAX_VERSION, READ_PAGE_SQL, query_plan
from .replicas import Replicas, split_replica_urls
from .rows import ENTITY_VERSION, POSITION, batch_params, event_params, rows_to_events
from .schema import check_schema_name, require_current_schema
from .subscribe import follow

_APPEND_BATCH_SQL: str = QUERIES.append_events.sql
_LOAD_SNAPSHOT_SQL: str = QUERIES.load_snapshot.sql
_APPEND_CHECKPOINTED_SQL: str = QUERIES.append_checkpointed.sql


class PostgresEventJournal(BaseEventJournal):
    """Events in the ``credit_events`` table. ``pool_size`` connections are kept open and up to
    ``max_overflow`` more are opened under load; ``schema`` selects the search_path.
    ``statement_timeout`` bounds every statement; ``lock_timeout`` bounds the wait for a lock (an
    append queued behind others to the same entity, a read behind a migration), after which the
    call fails with :class:`DatabaseUnavailableError` and nothing is written; subscriptions wait. ``get_metrics()``'s
    ``total_events`` starts from an exact count below 100,000 events and from the planner's
    estimate above (``total_events_exact`` says which): opening never scans a big table.

    Single appends are group-committed: at most ``append_connections`` append round trips are
    out at once (bounded by ``pool_size``), and the calls that arrive meanwhile go together in
    the next one, one transaction with an outcome per event (``postgres/group_commit.py``). A
    lone caller goes at once; ``append_events``/``append_many`` batches go on their own.

    ``replica_urls`` (default: the comma-separated ``$DATABASE_REPLICA_URLS``) are streaming hot
    standbys of this primary: reads (``read_events``, ``read_entity``, ``query_events``,
    ``subscribe``, ``load_snapshot``) are served by one that has replayed the primary's WAL as
    far as the read needs, so nothing is skipped or repeated and a read sees every append that
    returned before it began; appends, checkpoints and snapshot writes go to the primary, and
    so does the fence every position-order read takes. A standby still behind after
    ``max_replica_lag`` seconds, or unreachable, is passed over for the next one, then the
    primary (``postgres/replicas.py``). A multi-host ``database_url``
    (``postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write``) follows the primary
    after a failover."""

    backend = "postgres"

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 20,
        schema: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        idempotency_cache_size: int = 100_000,
        page_size: int = 1000,
        connect_timeout: float | None = None,
        statement_timeout: float = 30.0,
        lock_timeout: float = 5.0,
        append_connections: int = 2,
        replica_urls: Sequence[str] | str | None = None,
        max_replica_lag: float = 1.0,
    ) -> None:
        super().__init__(max_payload_bytes=max_payload_bytes)
        self.url: DatabaseURL = parse_database_url(database_url)
        if pool_size < 1 or max_overflow < 0:
            raise ConfigurationError(f"pool_size must be >= 1 and max_overflow >= 0 (got {pool_size}, {max_overflow})")
        if append_connections < 1:
            raise ConfigurationError(f"append_connections must be >= 1 (got {append_connections!r})")
        if not lock_timeout > 0:
            raise ConfigurationError(f"lock_timeout must be > 0 seconds (got {lock_timeout!r})")
        if not max_replica_lag >= 0:
            raise ConfigurationError(f"max_replica_lag must be >= 0 seconds (got {max_replica_lag!r})")
        replicas = [parse_database_url(url) for url in split_replica_urls(replica_urls)]
        self.schema = check_schema_name(schema or self.url.schema or "public")
        self.page_size = page_size
        self.errors = ErrorMap(self.url, self.schema)
        self.connections = Connections(
            self.errors, pool_size=pool_size, max_overflow=max_overflow,
            # Default: the URL's libpq-style ?connect_timeout=, else 10 s.
            connect_timeout=connect_timeout if connect_timeout is not None else (self.url.connect_timeout or 10.0),
            statement_timeout=statement_timeout, lock_timeout=lock_timeout,
        )
        self._cache_size = idempotency_cache_size
        # Stored keys (known duplicates), with where they are when known: a retry costs no round trip.
        self._seen_keys: OrderedDict[str, Location | None] = OrderedDict()
        self._settled = 0  # a settled high-water mark seen earlier: reads at the head spend no xid
        self._cache_hits = 0
        self._total_events = 0
        self._total_exact = True  # False: total_events started from the planner's estimate (a big table)
        self._init_lock = asyncio.Lock()
        self._notifier = Notifier(self.connections)
        self._group = GroupCommit(self.connections, min(append_connections, self.connections.lane_cap))
        self._replicas = Replicas(replicas, self.connections, max_lag=max_replica_lag) if replicas else None

    def __repr__(self) -> str:
        return f"PostgresEventJournal({self.url}, schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        async with self._init_lock:
            if self.connections.pool is not None:
                return
            pool = await self.connections.open()
            try:
                async with pool.acquire() as conn:
                    await require_current_schema(conn, self.errors)
                    self._total_events, self._total_exact = await _count_events(conn)
                    system_id = await conn.fetchval(QUERIES.cluster_identity.sql) if self._replicas else None
            except Exception as exc:
                await pool.close()
                raise (self.errors.translate(exc, "read the eventstore schema", "eventstore_reader") or exc) from None
            except BaseException:
                await pool.close()
                raise
            self.connections.pool = pool
            if self._replicas is not None:
                await self._replicas.open(system_id)

    async def close(self) -> None:
        if self.connections.pool is None:
            return
        await self._notifier.close()
        if self._replicas is not None:
            await self._replicas.close()
        await self.connections.close()

    # -- appends ---------------------------------------------------------------------------

    def _check_open(self, *, writing: bool) -> None:
        self.connections.require_pool()

    def _known_duplicate(self, key: str) -> bool:
        if key in self._seen_keys:  # a known duplicate costs no round trip
            self._seen_keys.move_to_end(key)
            self._cache_hits += 1
            return True
        return False

    def _remember(self, key: str, where: Location | None) -> None:
        seen = self._seen_keys
        if where is None and seen.get(key) is not None:
            return  # keep what is known of where it is
        seen[key] = where
        if len(seen) > self._cache_size:
            seen.popitem(last=False)

    async def _locate(self, keys: list[str]) -> dict[str, Location]:
        seen = self._seen_keys
        found = {key: where for key in keys if (where := seen.get(key)) is not None}
        missing = [key for key in keys if key not in found]
        if missing:
            rows = await self.connections.fetch(QUERIES.locate_keys.sql, missing)
            for key, position, version in rows:
                found[key] = (position, version)
                self._remember(key, (position, version))
        return found

    async def _store_one(self, event: Checked, expected_version: int | None) -> Stored:
        envelope, payload_json = event
        try:
            outcome, position, version = await self._group.append(event_params(envelope, payload_json, expected_version))
        except asyncpg.PostgresError as exc:
            raise self.errors.append_error(exc, envelope.entity_id, expected_version) from None
        if outcome == STORED:
            self._remember(envelope.idempotency_key, (position, version))  # type: ignore[arg-type]
            self._stored(1)
            return position, version  # type: ignore[return-value]
        if outcome == CONFLICT:
            raise self.errors.conflict(envelope.entity_id, expected_version, version or 0)
        self._remember(envelope.idempotency_key, None if position is None else (position, version))
        return None

    async def _store_many(self, events: list[Checked], expected: list[int | None], checkpoint: Checkpoint | None) -> list[Stored]:
        batch = [event for event, _ in events]
        params = batch_params(batch, [payload for _, payload in events], expected)
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                if checkpoint is None:
                    rows = await self.connections.append_call(_APPEND_BATCH_SQL, *params, many=True)
                else:
                    rows = await self.connections.append_call(_APPEND_CHECKPOINTED_SQL, *params, *checkpoint, many=True)
                break
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == RACE_SQLSTATE and attempt < BATCH_ATTEMPTS:
                    continue  # rolled back whole; sent again, the key committed meanwhile is a duplicate
                entity, version = conflict_target(exc, batch, expected)
                raise self.errors.append_error(exc, entity, version, checkpoint) from None
        results: list[Stored] = []
        for event, row in zip(batch, rows, strict=True):
            where = None if row[0] is None else (row[0], row[1])
            self._remember(event.idempotency_key, where)
            results.append(where)
        self._stored(len(results) - results.count(None))
        return results

    def _stored(self, count: int) -> None:
        if count:
            self._total_events += count
            self._notifier.poke()

    # -- reads -----------------------------------------------------------------------------

    async def _high_water(self) -> tuple[int, int]:
        """The settled high-water mark, taken on the primary once per position-order read
        (postgres/fence.py), and with replicas the primary's WAL position once it settled (0
        without). Transactions in flight are waited for up to ``statement_timeout``, as a
        statement would be."""
        timeout = self.connections.statement_timeout
        with_wal = self._replicas is not None
        started = time.perf_counter()
        async with self.connections.acquire() as conn:
            fence = await take_fence(conn, self._settled, timeout, with_wal=with_wal)
            if fence is not None and fence[0] < self._settled:
                # The sequence went back (a restore, a failover to a lagging standby): the mark
                # remembered is no longer settled anywhere. Take the fence from scratch.
                self._settled = 0
                fence = await take_fence(conn, 0, timeout, with_wal=with_wal)
        record_fence_wait(time.perf_counter() - started)
        if fence is None:
            raise self.errors.fence_timeout(timeout, self._settled)
        self._settled = max(self._settled, fence[0])
        return fence

    def _pages(self, wal: int, *, planned: bool = False) -> Callable[..., Awaitable[list[asyncpg.Record]]]:
        """Where a read's pages come from: the primary's pool, or a standby that has replayed ``wal``."""
        if self._replicas is None:
            return self.connections.fetch_planned if planned else self.connections.fetch
        return functools.partial(self._replicas.fetch, wal, planned=planned)

    async def _pages_now(self) -> Callable[..., Awaitable[list[asyncpg.Record]]]:
        """``_pages`` for a read that takes no fence: what the primary holds when it begins."""
        return self._pages(0 if self._replicas is None else await self._replicas.wal_position())

    async def _last_position(self) -> int:
        return (await self._high_water())[0]

    async def _read_events(self, after: int, skip_corrupted: bool) -> AsyncIterator[EventEnvelope]:
        # Rows are checked by the database's constraints on the way in, so there is nothing to skip;
        # skip_corrupted is accepted for parity with the file journal.
        high_water, wal = await self._high_water()
        if high_water <= after:
            return
        fetch, page_size = self._pages(wal), self.page_size
        # Read-ahead of one page: the server fetches page N+1 while this process decodes page N.
        pending: asyncio.Task[list[asyncpg.Record]] | None = asyncio.ensure_future(fetch(READ_PAGE_SQL, after, high_water, page_size))
        try:
            while pending is not None:
                rows = await pending
                pending = None
                if len(rows) == page_size:
                    pending = asyncio.ensure_future(fetch(READ_PAGE_SQL, rows[-1][POSITION], high_water, page_size))
                for event in rows_to_events(rows):
                    yield event
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, EventStoreError):
                    await pending

    async def _read_entity(self, read: EntityRead) -> AsyncIterator[EventEnvelope]:
        ranged = read.since is not None or read.until is not None
        sql = ENTITY_SQL[ranged, read.backwards]
        head: tuple[Any, ...] = (read.entity_id, read.since, read.until) if ranged else (read.entity_id,)
        low, high = read.after_version, MAX_VERSION if read.up_to_version is None else min(read.up_to_version, MAX_VERSION)
        if low >= MAX_VERSION:
            return  # no version is above it (entity_version is an INTEGER)
        remaining = read.limit
        fetch = await self._pages_now()
        while remaining is None or remaining > 0:
            page_size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = await fetch(sql, *head, low, high, page_size)
            for event in rows_to_events(rows):
                yield event
            if len(rows) < page_size:
                return
            if read.backwards:
                high = rows[-1][ENTITY_VERSION] - 1
            else:
                low = rows[-1][ENTITY_VERSION]
            if remaining is not None:
                remaining -= len(rows)

    async def _query_events(self, query: EventQuery) -> AsyncIterator[EventEnvelope]:
        high_water, wal = await self._high_water()
        sql, head, tail = query_plan(query)
        fetch = self._pages(wal, planned=sql is not READ_PAGE_SQL)
        position, remaining = query.after, query.limit
        while position < high_water and (remaining is None or remaining > 0):
            page_size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = await fetch(sql, *head, position, high_water, *tail, page_size)
            for event in rows_to_events(rows):
                yield event
            if len(rows) < page_size:
                return
            position = rows[-1][POSITION]
            if remaining is not None:
                remaining -= len(rows)

    def _subscribe(self, after: int) -> AsyncIterator[EventEnvelope]:
        return follow(self.connections, after, self.page_size, self._replicas)

    async def _load_checkpoint(self, name: str) -> int | None:
        async with self.connections.acquire() as conn:
            return await conn.fetchval(QUERIES.load_checkpoint.sql, name)

    async def _save_snapshot(self, name: str, position: int, state_json: bytes) -> None:
        async with self.connections.acquire() as conn:
            await QUERIES.save_snapshot(conn, name=name, position=position, state=state_json)

    async def _load_snapshot(self, name: str) -> Snapshot | None:
        rows = await (await self._pages_now())(_LOAD_SNAPSHOT_SQL, name)
        if not rows:
            return None
        row = rows[0]
        return Snapshot(name=row["name"], position=row["position"], state=row["state"], created_at=row["created_at"])

    def _metrics(self) -> dict[str, Any]:
        pool = self.connections.pool
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        return {
            "total_events": self._total_events,
            "total_events_exact": self._total_exact,
            "corrupted_skipped": 0,
            "idempotency_cache_hits": self._cache_hits,
            "idempotency_cache_size": len(self._seen_keys),
            "pool_size": size,
            "pool_in_use": size - idle,
            "pool_max_size": self.connections.max_size,
            "append_lane": self.connections.lane_size,
            "append_groups": self._group.groups,
            "append_grouped_events": self._group.grouped,
            "database": self.url.where,
            "schema": self.schema,
            **(self._replicas.metrics() if self._replicas is not None else {}),
        }


#: A batch is sent again when another writer commits one of its keys during the statement (ES412,
#: migration 0012): rare, and the next attempt sees that key stored, so a few attempts settle it.
BATCH_ATTEMPTS = 3
EXACT_COUNT_BOUND = 100_000  # rows: below this, initialize() counts them (milliseconds); above, it estimates


async def _count_events(conn: asyncpg.Connection) -> tuple[int, bool]:
    """(events stored, whether that is exact): startup never scans more than EXACT_COUNT_BOUND rows."""
    estimate = await QUERIES.estimated_events(conn)
    if estimate >= EXACT_COUNT_BOUND:
        return estimate, False
    counted = await QUERIES.count_events_up_to(conn, bound=EXACT_COUNT_BOUND)
    if counted < EXACT_COUNT_BOUND:
        return counted, True
    return max(estimate, counted), False  # a big table not analyzed yet (a fresh restore)
