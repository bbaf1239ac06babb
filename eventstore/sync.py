"""A blocking interface for synchronous code: scripts, Django/Flask services, notebooks, threads.

``open_journal(...)`` takes the factory's arguments (``create_event_journal``) and returns a
:class:`SyncJournal`: every journal method, blocking, with the same arguments, answers and
errors. The journal lives on one event loop in one background thread of its own; any number of
threads may call it at once (their calls interleave on that loop as tasks would: a PostgreSQL
journal group-commits their single appends). Reads are plain iterators that fetch a page of
events per hop to the loop thread, so memory stays bounded whatever the journal's size;
``subscribe`` hands over each event as it arrives. ``close()`` (or leaving the ``with`` block)
closes the journal and stops the thread; ``with`` opens a closed one again.

Calling a ``SyncJournal`` from inside its own loop (a coroutine or callback running there) would
wait for the loop it blocks: it raises ``RuntimeError`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from .base import BaseEventJournal
from .envelope import Appended, EventEnvelope, Snapshot
from .factory import create_event_journal

T = TypeVar("T")

PAGE = 1000  # events per hop to the loop thread for reads: bounded memory, few hops
CLOSE_TIMEOUT = 5.0  # seconds close() gives reads left open to finish


def open_journal(backend: str | None = None, **options: Any) -> SyncJournal:
    """An open :class:`SyncJournal`: the arguments of ``create_event_journal``."""
    return SyncJournal(backend, **options)


class SyncJournal:
    """A journal for blocking code; see the module's docstring. ``journal`` is the asyncio journal
    underneath (use it only from :attr:`loop`)."""

    def __init__(self, backend: str | None = None, **options: Any) -> None:
        self.hops = 0  # calls handed to the loop thread (a read counts one per page; not locked: approximate across threads)
        self._start()
        try:
            self.journal: BaseEventJournal = self._call(create_event_journal(backend, **options))
        except BaseException:
            self._stop()
            raise

    def _start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="eventstore-sync", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The thread the journal's event loop runs in; it ends with :meth:`close`."""
        return self._thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def __repr__(self) -> str:
        return f"SyncJournal({self.journal!r})"

    def __enter__(self) -> SyncJournal:
        """Open again if closed (as ``async with`` initializes an async journal), on a new thread."""
        self._refuse_own_loop()
        if not self._thread.is_alive():
            self._start()
            try:
                self._call(self.journal.initialize())
            except BaseException:
                self._stop()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the hop to the loop thread ----------------------------------------------------------

    def _call(self, coroutine: Awaitable[T]) -> T:
        self._refuse_own_loop(coroutine)
        if not self._thread.is_alive():
            _discard(coroutine)
            raise RuntimeError("this SyncJournal is closed")
        self.hops += 1
        return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self.loop).result()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` on the journal's loop, where it may await :attr:`journal`'s methods,
        and return its result: several calls that belong together in one hop."""
        return self._call(coroutine)

    def _refuse_own_loop(self, coroutine: object = None) -> None:
        if threading.current_thread() is self._thread:
            _discard(coroutine)
            raise RuntimeError(
                "a SyncJournal was called from inside its own event loop, which would wait for itself; "
                "use its .journal there (with await)"
            )

    def _iterate(self, open_iterator: Callable[[], AsyncIterator[EventEnvelope]], page: int) -> Iterator[EventEnvelope]:
        """A plain iterator over an async one: ``page`` events per hop. Arguments are checked at
        the call (``open_iterator`` runs here, as the async method's checks do at its call)."""
        self._refuse_own_loop()
        source = open_iterator()
        return _Pages(self, source, page)

    # -- appends -----------------------------------------------------------------------------

    def append_event(self, event: EventEnvelope, *, expected_version: int | None = None) -> bool:
        return self._call(self.journal.append_event(event, expected_version=expected_version))

    def append(self, event: EventEnvelope, *, expected_version: int | None = None) -> Appended:
        return self._call(self.journal.append(event, expected_version=expected_version))

    def append_events(
        self, events: Iterable[EventEnvelope], *, expected_versions: Mapping[str, int] | None = None
    ) -> list[bool]:
        return self._call(self.journal.append_events(list(events), expected_versions=expected_versions))

    def append_many(
        self,
        events: Iterable[EventEnvelope],
        *,
        expected_versions: Mapping[str, int] | None = None,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[Appended]:
        return self._call(self.journal.append_many(list(events), expected_versions=expected_versions, checkpoint=checkpoint))

    def checkpoint(self, name: str) -> int | None:
        return self._call(self.journal.checkpoint(name))

    # -- reads -------------------------------------------------------------------------------

    def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> Iterator[EventEnvelope]:
        return self._iterate(lambda: self.journal.read_events(after=after, skip_corrupted=skip_corrupted), PAGE)

    def last_position(self) -> int:
        return self._call(self.journal.last_position())

    def read_entity(
        self,
        entity_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        after_version: int | None = None,
        up_to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Iterator[EventEnvelope]:
        return self._iterate(lambda: self.journal.read_entity(
            entity_id, since=since, until=until, after_version=after_version, up_to_version=up_to_version,
            backwards=backwards, limit=limit,
        ), PAGE)

    def query_events(
        self,
        *,
        event_type: str | Sequence[str] | None = None,
        correlation_id: Any = None,
        since: datetime | None = None,
        until: datetime | None = None,
        payload_contains: dict[str, Any] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> Iterator[EventEnvelope]:
        return self._iterate(lambda: self.journal.query_events(
            event_type=event_type, correlation_id=correlation_id, since=since, until=until,
            payload_contains=payload_contains, after=after, limit=limit,
        ), PAGE)

    def subscribe(self, *, after: int = 0) -> Iterator[EventEnvelope]:
        """Every event after ``after``, then each new one as it is stored (one per hop: a live
        event is handed over as soon as it arrives). Close the iterator (``close()``, or leave
        the ``for`` loop and drop it) to end the subscription."""
        return self._iterate(lambda: self.journal.subscribe(after=after), 1)

    # -- snapshots, metrics, lifecycle -------------------------------------------------------

    def save_snapshot(self, name: str, position: int, state: Any) -> None:
        self._call(self.journal.save_snapshot(name, position, state))

    def load_snapshot(self, name: str) -> Snapshot | None:
        return self._call(self.journal.load_snapshot(name))

    def get_metrics(self) -> dict[str, Any]:
        return self._call(_call_soon(self.journal.get_metrics))

    def close(self) -> None:
        """Close the journal and stop the loop thread; idempotent."""
        self._refuse_own_loop()
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.journal.close(), self.loop).result()
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            # Reads left open (an iterator dropped mid-way) are closed on the loop, then it stops.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(CLOSE_TIMEOUT)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


class _Pages(Iterator[EventEnvelope]):
    """One async iterator read from another thread, ``page`` events per hop."""

    def __init__(self, owner: SyncJournal, source: AsyncIterator[EventEnvelope], page: int) -> None:
        self._owner = owner
        self._source = source
        self._page = page
        self._buffer: list[EventEnvelope] = []
        self._next = 0
        self._ended = False

    def __iter__(self) -> _Pages:
        return self

    def __next__(self) -> EventEnvelope:
        if self._next == len(self._buffer):
            if self._ended:
                raise StopIteration
            self._buffer, self._ended = self._owner._call(_take(self._source, self._page))
            self._next = 0
            if not self._buffer:
                self._ended = True
                raise StopIteration
        event = self._buffer[self._next]
        self._next += 1
        return event

    def close(self) -> None:
        """End the read (a subscription: stop following); idempotent."""
        if self._ended:
            return
        self._ended = True
        self._buffer, self._next = [], 0
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None and self._owner._thread.is_alive():
            self._owner._call(aclose())

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # the journal or its loop is already gone
            pass


async def _take(source: AsyncIterator[T], page: int) -> tuple[list[T], bool]:
    """Up to ``page`` items, and whether the source ended."""
    items: list[T] = []
    while len(items) < page:
        try:
            items.append(await source.__anext__())
        except StopAsyncIteration:
            return items, True
    return items, False


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _call_soon(function: Callable[[], T]) -> T:
    return function()


def _discard(coroutine: object) -> None:
    close = getattr(coroutine, "close", None)
    if close is not None:
        close()  # never awaited: say so to nobody
