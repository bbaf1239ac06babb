"""PostgreSQL subscriptions: catch up from a position, then follow new events, never skipping or
repeating one. Each step takes the fence of docs/ordering.md on a dedicated connection that
LISTENs for the journal's wake-ups (a pooled one would keep the LISTEN after release). With
replicas, the fence and the LISTEN stay on the primary (a standby has neither) and the pages
come from a standby that has replayed as far as the primary's WAL reached by then."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import cast

import asyncpg

from ..envelope import EventEnvelope
from ..errors import DatabaseUnavailableError, EventStoreError
from .connections import Connections, connect, terminate
from .errors import UNAVAILABLE
from .fence import take_fence
from .notifier import channel
from .queries import QUERIES
from .replicas import Replicas
from .rows import rows_to_events

log = logging.getLogger("eventstore.subscriptions")

FALLBACK_POLL = 1.0  # seconds: wakes a subscriber even when no notification arrives
RECONNECT_ATTEMPTS = 5

_PAGE_SQL: str = QUERIES.read_events_page.sql


async def follow(connections: Connections, after: int, page_size: int, replicas: Replicas | None = None) -> AsyncIterator[EventEnvelope]:
    wake = asyncio.Event()
    cursor = after  # every position <= cursor has been delivered or never will exist
    conn: asyncpg.Connection | None = None
    try:
        while True:
            if conn is None:
                conn = await _listen(connections, wake)
            wake.clear()
            try:
                # No timeout: a live stream waits for transactions in flight (so never None).
                high_water, wal = cast(tuple[int, int], await take_fence(conn, cursor, with_wal=replicas is not None))
                fetch = conn.fetch if replicas is None else functools.partial(replicas.fetch, wal)
                while cursor < high_water:
                    rows = await fetch(_PAGE_SQL, cursor, high_water, page_size)
                    for event in rows_to_events(rows):
                        cursor = event.position  # type: ignore[assignment]  # a stored event has one
                        yield event
                    if len(rows) < page_size:
                        cursor = high_water  # the rest of the range are burned ids (ON CONFLICT)
            except asyncpg.InsufficientPrivilegeError as exc:
                raise connections.errors.denied(exc, "subscribe", "eventstore_reader or eventstore_writer") from None
            except (*UNAVAILABLE, EventStoreError) as exc:
                if connections.pool is None:
                    return  # the journal was closed under us (a page from a replica's fallback says "not open")
                if not isinstance(exc, (*UNAVAILABLE, DatabaseUnavailableError)):
                    raise  # a refusal, not a lost server
                log.warning("subscription connection lost (%s); reconnecting", type(exc).__name__)
                connections.listeners.pop(conn, None)
                terminate(conn)
                conn = None
                continue
            if connections.pool is None:
                return
            if not wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), FALLBACK_POLL)
    finally:
        if conn is not None:
            connections.listeners.pop(conn, None)
            await _close_quietly(conn)


async def _listen(connections: Connections, wake: asyncio.Event) -> asyncpg.Connection:
    """A dedicated connection listening on the journal's channel, with retries."""
    delay = 0.1
    for attempt in range(1, RECONNECT_ATTEMPTS + 1):
        if connections.pool is None:
            raise DatabaseUnavailableError("the journal was closed")
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(connections.errors, connections.options("eventstore-subscription", lock_timeout=False))
            await conn.add_listener(channel(connections.errors.schema), lambda *_: wake.set())
        except (DatabaseUnavailableError, *UNAVAILABLE) as exc:  # lost between connecting and listening: a failed attempt too
            if conn is not None:
                terminate(conn)
            if attempt == RECONNECT_ATTEMPTS:
                raise (exc if isinstance(exc, DatabaseUnavailableError) else connections.errors.unavailable(exc)) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        except BaseException:
            if conn is not None:
                terminate(conn)
            raise
        connections.listeners[conn] = wake
        return conn
    raise AssertionError("unreachable")  # the loop returns or raises


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.shield(conn.close(timeout=2))
    except BaseException:  # cancelled or the server is gone: drop the socket
        conn.terminate()
