"""What the file journal knows of its file, rebuilt by one scan at open: idempotency keys (with
their positions), event ids and entity versions (the writer's checks), consumers' checkpoints,
lines to skip, and a sparse seek index."""

from __future__ import annotations

import bisect
from pathlib import Path

from ..errors import CorruptedEventError
from ..jsonl import LineCursor, LineDecoder

SEEK_EVERY = 1024  # lines between two entries of the seek index


class JournalIndex:
    """Built by :meth:`scan`; then kept current by the group commit (``stage``/``made_durable``) in
    the writer, or by :meth:`catch_up` in a read-only journal."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}  # idempotency key -> position
        self.event_ints: set[int] = set()
        self.versions: dict[str, int] = {}
        self.checkpoints: dict[str, int] = {}  # durable ones
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
        self._cursor: LineCursor | None = None
        self._decoder: LineDecoder | None = None

    def scan(self, path: Path) -> None:
        if path.exists():
            self.catch_up(path, path.stat().st_size)

    def catch_up(self, path: Path, limit: int) -> None:
        """Read the lines between what was scanned and byte ``limit`` (a read-only journal follows
        the writer this way). A file shorter than what was scanned had a torn tail cut: scan again."""
        if limit < self.size:
            self.__init__()  # type: ignore[misc]  # start over, in place: the journal holds this object
        if self._cursor is None or self._decoder is None:
            self._cursor = LineCursor(path)
            self._decoder = LineDecoder(str(path), keys=self.keys, checkpoints=self.checkpoints)
        cursor, decoder = self._cursor, self._decoder
        offset = cursor.offset
        for number, line in cursor.lines(limit):
            if number % SEEK_EVERY == 0:
                self.seeks.append((decoder.last_position, offset, number))
            offset += len(line) + 1
            try:
                event = decoder.decode(number, line)
            except CorruptedEventError:
                self.corrupt_lines += 1
                continue
            if event is None:
                self.skip_lines.add(number)  # a repeated line (or a checkpoint): the first occurrence wins
                continue
            self.event_ints.add(event.event_id.int)
            if event.entity_id is not None and event.entity_version is not None:
                self.versions[event.entity_id] = event.entity_version
            self.events += 1
        self.line_count = cursor.number
        self.legacy = decoder.completed
        self.position = decoder.last_position
        self.size = cursor.offset

    def start_for(self, after: int) -> tuple[int, int]:
        """``(byte offset, lines before it)`` where a read of the positions after ``after`` can
        start: from the start when lines from older tools need every line before them."""
        if self.legacy:
            return 0, 0
        index = bisect.bisect_right(self.seeks, after, key=lambda seek: seek[0]) - 1
        _, offset, first_line = self.seeks[max(index, 0)]
        return offset, first_line - 1

    def made_durable(self, lines: int, events: int, data_size: int, position: int) -> None:
        """``lines`` more lines (``data_size`` bytes, ``events`` of them events up to ``position``)
        reached the disk."""
        if self.line_count - self.seeks[-1][2] >= SEEK_EVERY:
            self.seeks.append((self.position, self.size, self.line_count + 1))
        self.size += data_size
        self.position = position
        self.line_count += lines
        self.events += events

    def decoder(self, where: str) -> LineDecoder:
        """A decoder for readers of this file: the scan's skip list, completion only if needed."""
        return LineDecoder(where, legacy=self.legacy, skip_lines=self.skip_lines)
