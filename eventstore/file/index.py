"""What the file journal knows of its file, rebuilt by one scan at open: idempotency keys, event
ids and entity versions (the writer's checks), lines to skip, and a sparse seek index."""

from __future__ import annotations

import bisect
from pathlib import Path

from ..errors import CorruptedEventError
from ..jsonl import LineCursor, LineDecoder

SEEK_EVERY = 1024  # lines between two entries of the seek index


class JournalIndex:
    """Built by :meth:`scan`; then kept current by the group commit (``stage``/``made_durable``)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.event_ints: set[int] = set()
        self.versions: dict[str, int] = {}
        self.skip_lines: set[int] = set()  # lines that repeat an idempotency key or position
        # (last position before, byte offset, line number) every SEEK_EVERY lines, so that
        # read_events(after=N) near the end does not decode the whole file.
        self.seeks: list[tuple[int, int, int]] = [(0, 0, 1)]
        self.legacy = False  # some line lacks a store-set field: readers must complete every line
        self.line_count = 0
        self.events = 0  # distinct events in the durable lines
        self.position = 0  # last durable position
        self.size = 0  # bytes of durable lines
        self.corrupt_lines = 0

    def scan(self, path: Path) -> None:
        if not path.exists():
            return
        size = path.stat().st_size
        cursor = LineCursor(path)
        decoder = LineDecoder(str(path), keys=self.keys)
        offset = 0
        for number, line in cursor.lines(size):
            if number % SEEK_EVERY == 0:
                self.seeks.append((decoder.last_position, offset, number))
            offset += len(line) + 1
            try:
                event = decoder.decode(number, line)
            except CorruptedEventError:
                self.corrupt_lines += 1
                continue
            if event is None:
                self.skip_lines.add(number)  # a repeated line: the first occurrence wins
                continue
            self.event_ints.add(event.event_id.int)
            if event.entity_id is not None and event.entity_version is not None:
                self.versions[event.entity_id] = event.entity_version
            self.events += 1
        self.line_count = cursor.number
        self.legacy = decoder.completed
        self.position = decoder.last_position
        self.size = size

    def start_for(self, after: int) -> tuple[int, int]:
        """``(byte offset, lines before it)`` where a read of the positions after ``after`` can
        start: from the start when lines from older tools need every line before them."""
        if self.legacy:
            return 0, 0
        index = bisect.bisect_right(self.seeks, after, key=lambda seek: seek[0]) - 1
        _, offset, first_line = self.seeks[max(index, 0)]
        return offset, first_line - 1

    def made_durable(self, lines: int, data_size: int) -> None:
        """``lines`` more lines (``data_size`` bytes) reached the disk."""
        if self.line_count - self.seeks[-1][2] >= SEEK_EVERY:
            self.seeks.append((self.position, self.size, self.line_count + 1))
        self.size += data_size
        self.position += lines
        self.line_count += lines
        self.events += lines

    def decoder(self, where: str) -> LineDecoder:
        """A decoder for readers of this file: the scan's skip list, completion only if needed."""
        return LineDecoder(where, legacy=self.legacy, skip_lines=self.skip_lines)
