"""A file journal's durable lines, read in order the one way reads and subscriptions share.

Lines the index has seen are decoded here, with its list of lines to skip. Past the index's end
(a read-only journal indexes lazily, so that opening it reads nothing) the reader extends the
index by a few hundred lines and takes their events from it: each line is decoded once either
way, and the first event comes after those lines, not after a scan of the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ..envelope import EventEnvelope
from ..errors import CorruptedEventError
from ..jsonl import LineCursor
from .index import Indexed, JournalIndex

_YIELD_EVERY = 4096  # events between two yields to the event loop during a long replay


class DurableLines:
    """Events after position ``after``, each once and in position order, with a
    :class:`CorruptedEventError` in place of each corrupt line; :meth:`read` is called again with
    a later limit as the writer appends (a subscription)."""

    def __init__(self, path: Path, index: JournalIndex, after: int, durable_size: Callable[[], int]) -> None:
        self.path = path
        self.index = index
        self.durable_size = durable_size
        self.last = after  # the last position yielded, or the read's start
        self.cursor = LineCursor(path, *index.start_for(after))
        self.decoder = index.decoder(str(path))
        # Whether self.decoder has decoded every line before the cursor. Lines from older tools
        # are completed from the entity versions before them: without that history (a read that
        # started at a seek point, took chunks from the index, or began before the index knew of
        # such lines, so kept no versions), the read starts again from the first line.
        self.whole_history = self.cursor.offset == 0
        self.lines_done = self.cursor.number  # corrupt lines up to here were already reported

    def restart(self) -> None:
        """Read from the first line again (a torn tail was cut, or history is needed); positions
        already yielded are not yielded again."""
        self.cursor = LineCursor(self.path)
        self.decoder = self.index.decoder(str(self.path))
        self.whole_history = True

    async def read(self, on_corrupt: Callable[[CorruptedEventError], None], limit: int | None = None) -> AsyncIterator[EventEnvelope]:
        """The events of the lines up to byte ``limit`` (the durable size when iteration starts),
        from where the last read stopped; ``on_corrupt`` is told of each corrupt line (it raises,
        or counts and returns)."""
        if limit is None:
            limit = self.durable_size()
        index = self.index
        yielded = 0
        while self.cursor.offset < limit:
            offset = self.cursor.offset
            if offset >= index.size:
                found = await self._extend(limit)
                if found is None:
                    return  # only an incomplete line is left
                for item in found:
                    if type(item) is not EventEnvelope:
                        on_corrupt(item)  # type: ignore[arg-type]
                    elif item.position > self.last:  # type: ignore[operator]  # the index completed it
                        self.last = item.position  # type: ignore[assignment]
                        yield item
                await asyncio.sleep(0)  # a chunk at a time: a long replay must not starve the loop
                continue
            if index.legacy and not (self.whole_history and self.decoder.legacy):
                self.restart()
                continue
            decode, lines_done, last = self.decoder.decode, self.lines_done, self.last
            try:
                for number, line in self.cursor.lines(min(limit, index.size)):
                    try:
                        event = decode(number, line)
                    except CorruptedEventError as exc:
                        if number > lines_done:
                            on_corrupt(exc)
                        continue
                    if event is not None and event.position > last:  # type: ignore[operator]
                        last = event.position  # type: ignore[assignment]
                        yield event
                        yielded += 1
                        if yielded % _YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # a long replay must not starve the event loop
            finally:
                self.last = last
            self.lines_done = max(lines_done, self.cursor.number)

    async def _extend(self, limit: int) -> list[Indexed] | None:
        """The next chunk's lines, from the index extended past them; ``None`` at an incomplete
        last line. Re-positions the cursor when another reader indexed those lines first."""
        offset, index = self.cursor.offset, self.index
        if index.lock.acquire(blocking=False):  # on the loop, as the lines the index knows are read
            try:
                extension = index.extend_locked(self.path, offset, limit)
            finally:
                index.lock.release()
        else:  # a helper thread is indexing the whole file (last_position, a checkpoint): wait there
            extension = await asyncio.to_thread(index.extend, self.path, offset, limit)
        if extension is None:
            if self.index.size < offset:  # the index started over (a torn tail was cut)
                self.restart()
            return []  # read on from the index
        found, size, line_count, position = extension
        if size == offset:
            return None
        self.cursor = LineCursor(self.path, size, line_count)
        self.lines_done = max(self.lines_done, line_count)
        self.decoder.last_position = max(self.decoder.last_position, position)
        self.whole_history = False
        return found
