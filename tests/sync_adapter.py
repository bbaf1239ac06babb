"""The async journal interface served by an ``eventstore.sync.SyncJournal`` from worker threads,
so the contract suite runs unchanged through the blocking interface: every call crosses into a
caller thread, then into the SyncJournal's loop thread, and back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from eventstore.sync import SyncJournal

_END = object()


class AsyncOverSync:
    def __init__(self, journal: SyncJournal) -> None:
        self.sync = journal

    def __getattr__(self, name: str) -> Any:  # backend, path, schema, ...: the journal underneath
        return getattr(self.sync.journal, name)

    async def initialize(self) -> None:
        """Opened by ``open_journal`` already."""

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncOverSync:
        await asyncio.to_thread(self.sync.__enter__)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def append_event(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync.append_event, *args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync.append, *args, **kwargs)

    async def append_events(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync.append_events, *args, **kwargs)

    async def append_many(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync.append_many, *args, **kwargs)

    async def checkpoint(self, name: str) -> Any:
        return await asyncio.to_thread(self.sync.checkpoint, name)

    async def last_position(self) -> int:
        return await asyncio.to_thread(self.sync.last_position)

    async def save_snapshot(self, *args: Any) -> None:
        await asyncio.to_thread(self.sync.save_snapshot, *args)

    async def load_snapshot(self, name: str) -> Any:
        return await asyncio.to_thread(self.sync.load_snapshot, name)

    def get_metrics(self) -> dict[str, Any]:
        return self.sync.get_metrics()

    # Argument errors are raised at the call, as the async journal raises them.
    def read_events(self, **kwargs: Any) -> AsyncIterator[Any]:
        return _each(self.sync.read_events(**kwargs))

    def read_entity(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return _each(self.sync.read_entity(*args, **kwargs))

    def query_events(self, **kwargs: Any) -> AsyncIterator[Any]:
        return _each(self.sync.query_events(**kwargs))

    def subscribe(self, **kwargs: Any) -> AsyncIterator[Any]:
        return _each(self.sync.subscribe(**kwargs))


async def _each(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    try:
        while (item := await asyncio.to_thread(next, iterator, _END)) is not _END:
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
