"""The journal's connections: one pool, the append lane kept out of it between appends, and
dedicated connections (subscriptions, tools), all opened with the same settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from ..base import not_open
from ..dsn import DatabaseURL
from .errors import UNAVAILABLE, ErrorMap
from .rows import init_connection

CLOSE_TIMEOUT = 5.0  # seconds close() waits for statements in flight before cutting their connections


def connect_options(
    url: DatabaseURL, schema: str, *, application_name: str, connect_timeout: float, statement_timeout: float,
    **settings: str,
) -> dict[str, Any]:
    """What every connection is opened with: search_path, statement timeout, a name in
    pg_stat_activity, and READ COMMITTED whatever the database's default: an append's version is
    read after its entity lock is granted, which only a per-statement snapshot sees (a database
    set to ``default_transaction_isolation = 'repeatable read'`` would otherwise turn racing
    appends into conflicts; the functions refuse other levels, SQLSTATE ES411)."""
    return {
        "dsn": url.asyncpg_dsn(),
        "timeout": connect_timeout,
        "command_timeout": statement_timeout + 5,
        "server_settings": {
            "search_path": schema,
            "statement_timeout": str(int(statement_timeout * 1000)),
            "default_transaction_isolation": "read committed",
            "application_name": application_name,
            **settings,
        },
    }


async def connect(errors: ErrorMap, options: dict[str, Any]) -> asyncpg.Connection:
    """One dedicated connection with the journal's jsonb codec; failures as eventstore errors."""
    try:
        conn = await asyncpg.connect(**options)
    except Exception as exc:
        raise (errors.translate(exc, "connect", "a role with LOGIN") or exc) from None
    try:
        await init_connection(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # The journal leaves no session state behind (no LISTEN, SET or session locks on pooled
    # connections), so the default reset query would be a wasted round trip per append.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def open_pool(options: dict[str, Any], *, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool of connections opened with ``options``, each with the journal's codec."""
    return await asyncpg.create_pool(
        min_size=min_size, max_size=max_size, max_inactive_connection_lifetime=60.0,
        init=init_connection, reset=_reset_connection, **options,
    )


def is_open(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False  # the server closed it and the pool already took its slot back


def terminate(conn: asyncpg.Connection) -> None:
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass  # already handed back to the pool when its server connection closed


class Connections:
    """``pool_size`` connections kept open, up to ``max_overflow`` more under load.

    Appends keep up to ``pool_size`` connections checked out between calls (the "lane"): the
    pool's acquire/release bookkeeping costs about as much as the plpgsql append itself. One pool
    connection always stays free for reads and subscriptions. The cap counts every connection
    the lane holds (idle or in use), so appenders beyond it queue fairly in the pool."""

    def __init__(
        self, errors: ErrorMap, *, pool_size: int, max_overflow: int,
        connect_timeout: float, statement_timeout: float, lock_timeout: float,
    ) -> None:
        self.errors = errors  # holds the URL every connection is opened with
        self.pool_size = pool_size
        self.max_size = pool_size + max_overflow
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.pool: asyncpg.Pool | None = None
        self.listeners: dict[asyncpg.Connection, asyncio.Event] = {}  # live subscriptions' connections
        self._lane: list[asyncpg.Connection] = []
        self._lane_cap = min(pool_size, self.max_size - 1)
        self._lane_held = 0
        self._generation = 0  # drop_connections() counts up: a connection out at the time never returns to the lane

    @property
    def url(self) -> DatabaseURL:
        return self.errors.url

    def options(self, application_name: str, *, lock_timeout: bool = True, url: DatabaseURL | None = None) -> dict[str, Any]:
        """``lock_timeout=False``: the connection waits for locks up to the statement timeout (a
        subscription waits out a migration's lock, as it waits out the fence). ``url``: a
        replica's, opened with the same settings."""
        return connect_options(
            url or self.errors.url, self.errors.schema, application_name=application_name,
            connect_timeout=self.connect_timeout, statement_timeout=self.statement_timeout,
            # A hot entity's appenders queue on its lock: past this they fail, saying so.
            lock_timeout=str(int(self.lock_timeout * 1000)) if lock_timeout else "0",
        )

    async def open(self) -> asyncpg.Pool:
        try:
            return await open_pool(self.options("eventstore"), min_size=self.pool_size, max_size=self.max_size)
        except Exception as exc:
            raise (self.errors.translate(exc, "connect", "a role with LOGIN") or exc) from None

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise not_open()
        return self.pool

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. After a lost-server error every connection is replaced, so the
        error is one :class:`DatabaseUnavailableError` per call in flight and the next reconnects."""
        pool = self.require_pool()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                try:
                    yield conn
                except UNAVAILABLE:
                    await self.drop_connections()
                    raise
        except UNAVAILABLE as exc:
            raise self.errors.unavailable(exc) from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise self.errors.denied(exc, "run this statement", "eventstore_writer (writes) or eventstore_reader (reads)") from None
        except asyncpg.LockNotAvailableError as exc:  # queued past lock_timeout (behind a migration, say)
            raise self.errors.translate(exc, "run this statement", "") from None

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def fetch_planned(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A statement prepared for this call only, so PostgreSQL plans it for these values. A
        cached statement switches to a generic plan after five runs, and a generic plan of a
        query_events page cannot know a type is rare or a containment selective: on 1M rows it
        walked the primary key for 1.5 s where the custom plan took 36 ms. The cost is one
        extra round trip per page."""
        async with self.acquire() as conn:
            statement = await conn.prepare(sql)
            return await statement.fetch(*args)

    async def append_call(self, sql: str, *args: Any, many: bool = False) -> Any:
        """Run an append statement on a lane connection (or a pooled one when the lane is empty)."""
        pool = self.require_pool()
        conn = self._lane_pop()
        from_lane = conn is not None
        generation = self._generation
        if conn is None:
            try:
                conn = await pool.acquire()
            except UNAVAILABLE as exc:  # the pool reconnects on acquire: a down server surfaces here
                raise self.errors.unavailable(exc) from None
        outcome = "cancelled"
        try:
            result = await (conn.fetch(sql, *args) if many else conn.fetchrow(sql, *args))
            outcome = "ok"
            return result
        except UNAVAILABLE as exc:
            outcome = "broken"
            await self.drop_connections()
            raise self.errors.unavailable(exc) from None
        except asyncpg.PostgresError:
            outcome = "ok"  # a refused statement in autocommit leaves the session clean
            raise
        finally:
            # After close() began (self.pool is None) every connection goes back to the pool,
            # which is waiting for exactly that.
            lane_open = self.pool is pool
            # A connection out while the server went away may have been cut too, though its own
            # statement finished: it goes back to the pool, which replaces it.
            current = generation == self._generation
            keep = outcome == "ok" and lane_open and current and is_open(conn) and (from_lane or self._lane_held < self._lane_cap)
            if keep:
                if not from_lane:
                    self._lane_held += 1
                self._lane.append(conn)
            else:
                if from_lane and lane_open:
                    self._lane_held -= 1
                if outcome == "broken":
                    terminate(conn)  # hands its slot back to the pool
                else:
                    with contextlib.suppress(asyncpg.InterfaceError):
                        await pool.release(conn)  # cancelled mid-statement: the pool cleans up

    def _lane_pop(self) -> asyncpg.Connection | None:
        while self._lane:
            conn = self._lane.pop()
            if is_open(conn):
                return conn
            self._lane_held -= 1
            terminate(conn)  # hands its slot back unless the pool already took it
        return None

    @property
    def lane_cap(self) -> int:
        """How many append round trips may be out at once (at least one)."""
        return max(1, self._lane_cap)

    @property
    def lane_size(self) -> int:
        return len(self._lane)

    async def drop_connections(self) -> None:
        """After a lost server: replace every connection rather than fail once per connection."""
        pool = self.pool
        if pool is None:
            return
        self._generation += 1
        await pool.expire_connections()  # pooled ones reconnect on their next acquire
        lane, self._lane = self._lane, []
        self._lane_held -= len(lane)
        for conn in lane:
            terminate(conn)

    async def close(self) -> None:
        """Stop subscriptions, hand the lane back and close the pool; statements still running
        after :data:`CLOSE_TIMEOUT` lose their connection (their callers get an error)."""
        pool, self.pool = self.pool, None
        for conn, wake in list(self.listeners.items()):  # subscriptions end at their next step
            terminate(conn)
            wake.set()
        self.listeners.clear()
        if pool is None:
            return
        lane, self._lane = self._lane, []
        self._lane_held = 0
        for conn in lane:
            with contextlib.suppress(asyncpg.InterfaceError):  # already handed back when its server connection closed
                await pool.release(conn)
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()
