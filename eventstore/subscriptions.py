"""Subscriptions: catch up from a position, then follow new events, never skipping or repeating
one. PostgreSQL: a fence (docs/ordering.md) on a dedicated LISTEN connection; file: tail the
lines after the last one read, woken by the in-process flusher or by polling the file size."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from .envelope import ENVELOPE_DECODER, EventEnvelope
from .errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from .file import FileEventJournal
    from .postgres import PostgresEventJournal

log = logging.getLogger("eventstore.subscriptions")

CHANNEL = "credit_events"
FALLBACK_POLL = 1.0  # seconds: wakes a subscriber even when no notification arrives
FENCE_WAIT_MS = 100  # server-side wait for in-flight commits per fence call
RECONNECT_ATTEMPTS = 5
FILE_POLL = 0.1  # seconds: how often a read-only file subscriber looks at the file size


# -- PostgreSQL -----------------------------------------------------------------------------


async def pg_subscribe(journal: PostgresEventJournal, after: int) -> AsyncIterator[EventEnvelope]:
    from .postgres import _UNAVAILABLE, QUERIES, row_to_event

    mark_sql: str = QUERIES.subscription_fence_mark.sql
    wait_sql: str = QUERIES.subscription_fence_wait.sql
    page_sql: str = QUERIES.subscription_page.sql
    journal._require_pool()
    wake = asyncio.Event()
    cursor = after  # every position <= cursor has been delivered or never will exist
    conn: asyncpg.Connection | None = None
    try:
        while True:
            if conn is None:
                conn = await _listen(journal, wake)
            wake.clear()
            try:
                high_water, marker = await conn.fetchrow(mark_sql, cursor)
                while marker is not None and not await conn.fetchval(wait_sql, marker, FENCE_WAIT_MS):
                    pass  # a transaction in flight outlasts the wait: keep waiting (delayed, never skipped)
                while cursor < high_water:
                    rows = await conn.fetch(page_sql, cursor, high_water, journal._page_size)
                    for row in rows:
                        cursor = row[0]
                        yield row_to_event(row)
                    if len(rows) < journal._page_size:
                        cursor = high_water  # the rest of the range are burned ids (ON CONFLICT)
            except asyncpg.InsufficientPrivilegeError as exc:
                raise journal._denied(exc, "subscribe", "eventstore_reader or eventstore_writer") from None
            except _UNAVAILABLE as exc:
                if journal._pool is None:
                    return  # the journal was closed under us
                log.warning("subscription connection lost (%s); reconnecting", type(exc).__name__)
                conn = _discard(journal, conn)
                continue
            if journal._pool is None:
                return
            if not wake.is_set():
                try:
                    await asyncio.wait_for(wake.wait(), FALLBACK_POLL)
                except TimeoutError:
                    pass
    finally:
        if conn is not None:
            journal._listeners.pop(conn, None)
            await _close_quietly(conn)


async def _listen(journal: PostgresEventJournal, wake: asyncio.Event) -> asyncpg.Connection:
    """A dedicated connection (a pooled one would keep the LISTEN after release), with retries."""
    from .postgres import _UNAVAILABLE, _init_connection

    delay = 0.1
    for attempt in range(RECONNECT_ATTEMPTS):
        if journal._pool is None:
            raise DatabaseUnavailableError("the journal was closed")
        try:
            conn = await asyncpg.connect(**journal.connect_options("eventstore-subscription"))
        except _UNAVAILABLE as exc:
            if attempt == RECONNECT_ATTEMPTS - 1:
                raise journal._unavailable(exc) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        try:
            await _init_connection(conn)
            await conn.add_listener(CHANNEL, lambda *_: wake.set())
        except _UNAVAILABLE as exc:  # lost between connecting and listening: a failed attempt too
            conn.terminate()
            if attempt == RECONNECT_ATTEMPTS - 1:
                raise journal._unavailable(exc) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        except BaseException:
            conn.terminate()
            raise
        journal._listeners[conn] = wake
        return conn
    raise AssertionError("unreachable")


def _discard(journal: PostgresEventJournal, conn: asyncpg.Connection | None) -> None:
    if conn is not None:
        journal._listeners.pop(conn, None)
        conn.terminate()
    return None


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.shield(conn.close(timeout=2))
    except BaseException:  # cancelled or the server is gone: drop the socket
        conn.terminate()


class Notifier:
    """Wakes listeners after appends: at most one ``pg_notify`` per ``interval`` seconds, sent on
    a pool connection outside the appending transaction, fire-and-forget."""

    def __init__(self, journal: PostgresEventJournal, interval: float = 0.002) -> None:
        self._journal = journal
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
        if self._journal._pool is None:
            return
        task = asyncio.get_running_loop().create_task(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        from .postgres import QUERIES

        pool = self._journal._pool
        if pool is None:
            return
        try:
            async with pool.acquire() as conn:
                await conn.execute(QUERIES.notify_appended.sql, CHANNEL)
        except Exception as exc:  # a lost wake-up only delays subscribers until their fallback poll
            log.debug("pg_notify failed: %r", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# -- file -----------------------------------------------------------------------------------


async def file_subscribe(journal: FileEventJournal, after: int) -> AsyncIterator[EventEnvelope]:
    """Read the lines after the last one read; wait for the flusher (writer) or poll (read-only)."""
    from .file import FileEventJournal

    cursor = after
    offset = number = last_position = seen_limit = 0
    chunk = 1 << 20
    versions: dict[str, int] = {}
    while journal._open:
        flushed = journal._flushed  # taken before reading: a flush after this point wakes us
        limit = journal._durable_size if not journal.read_only else _size(journal.path)
        if limit < offset:  # the writer cut a torn tail we had skipped: read again, positions dedupe
            offset = number = last_position = 0
            versions.clear()
        if limit > offset and limit != seen_limit:
            lines, end = _read_lines(journal.path, offset, min(limit, offset + chunk))
            if end == offset and offset + chunk < limit:
                chunk *= 2  # one line longer than the chunk
                continue
            seen_limit = limit if offset + chunk >= limit else 0
            offset = end
            for line in lines:
                number += 1
                try:
                    event = ENVELOPE_DECODER.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    journal._corrupted_skipped += 1
                    continue
                if number in journal._skip_lines:
                    continue
                if journal._legacy or event.position is None:
                    event, _ = FileEventJournal._complete(event, line, last_position, versions)
                    if event.entity_id is not None and event.entity_version is not None:
                        versions[event.entity_id] = event.entity_version
                position = event.position
                assert position is not None
                if position <= last_position:
                    continue  # a repeated line: the first occurrence wins
                last_position = position
                if position > cursor:
                    cursor = position
                    yield event
            continue  # look again before sleeping: more may have been flushed meanwhile
        if journal.read_only:
            await asyncio.sleep(FILE_POLL)
        else:
            await flushed.wait()


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _read_lines(path: os.PathLike[str], offset: int, limit: int) -> tuple[list[bytes], int]:
    """The complete lines in bytes [offset, limit) and the offset after the last of them."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(limit - offset)
    end = data.rfind(b"\n")
    if end == -1:
        return [], offset
    return data[:end].split(b"\n"), offset + end + 1
