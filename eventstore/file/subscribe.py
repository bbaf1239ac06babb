"""File subscriptions: read the durable lines after the last one read, then wait for the writer's
next flush (in the writer's process) or poll the file's size (a read-only journal elsewhere)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from ..envelope import EventEnvelope
from ..errors import CorruptedEventError
from .index import JournalIndex
from .reader import DurableLines

POLL_INTERVAL = 0.1  # seconds: how often a read-only subscriber looks at the file size


class Followed(Protocol):
    """What a subscription reads of the file journal it follows."""

    path: Path
    index: JournalIndex
    is_open: bool
    corrupted_skipped: int

    @property
    def flushed(self) -> asyncio.Event | None: ...

    def durable_size(self) -> int: ...


async def follow(journal: Followed, after: int) -> AsyncIterator[EventEnvelope]:
    lines = DurableLines(journal.path, journal.index, after, journal.durable_size)  # every position <= lines.last is delivered

    def corrupt(error: CorruptedEventError) -> None:
        journal.corrupted_skipped += 1

    stalled_at = -1  # a size at which only an incomplete line was left to read
    while journal.is_open:
        flushed = journal.flushed  # taken before reading: a flush after this point wakes us
        limit = journal.durable_size()
        if limit < lines.cursor.offset:  # the writer cut a torn tail we had passed: read again, positions dedupe
            lines.restart()
        if limit > lines.cursor.offset and limit != stalled_at:
            async for event in lines.read(corrupt, limit):
                yield event
            stalled_at = limit if lines.cursor.offset < limit else -1
            continue  # look again before sleeping: more may have been flushed meanwhile
        if flushed is None:
            await asyncio.sleep(POLL_INTERVAL)
        else:
            await flushed.wait()


def file_size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
