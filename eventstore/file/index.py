"""What the file journal knows of its file: lines to skip, consumers' checkpoints and a sparse
seek index for everyone; idempotency keys with their positions, event ids and entity versions for
the writer's checks. The writer builds it by one scan at open; a read-only journal builds it
lazily, a chunk at a time, as its reads reach lines it has not indexed yet."""

from __future__ import annotations

import bisect
import threading
from pathlib import Path

from ..envelope import EventEnvelope
from ..errors import CorruptedEventError
from ..jsonl import LineCursor, LineDecoder
from ..key_hashes import KeyHashes

SEEK_EVERY = 1024  # lines between two entries of the seek index
#: Bytes of lines a reader's turn at extending the index covers (a few hundred events). Larger
#: turns hold more decoded events at once, which costs the garbage collector more than the hops.
EXTEND_BYTES = 64 << 10

#: What indexing a chunk read from one line: its event, or why it is corrupt.
Indexed = EventEnvelope | CorruptedEventError


class JournalIndex:
    """Built by :meth:`scan`; then kept current by the group commit (``stage``/``made_durable``) in
    the writer, or by :meth:`extend` in a read-only journal (``writer=False``), which keeps only
    the keys' hashes: a reader never appends, so it needs neither positions by key, nor event
    ids, nor versions."""

    def __init__(self, *, writer: bool = True) -> None:
        self.writer = writer
        self.lock = threading.Lock()  # a read-only journal's index is extended from helper threads
        self._reset()

    def _reset(self) -> None:
        self.keys: dict[str, int] = {}  # idempotency key -> position (the writer's)
        self.key_hashes = None if self.writer else KeyHashes()  # which keys were read (a read-only journal's)
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
        #: Lines found corrupt. Every other indexed line was checked by every rule (by the scan, or
        #: by validate_event when this writer appended it), so readers re-check only these.
        self.corrupt_numbers: set[int] = set()
        self._cursor: LineCursor | None = None
        self._decoder: LineDecoder | None = None

    def scan(self, path: Path) -> None:
        if path.exists():
            self.catch_up(path, path.stat().st_size)

    def catch_up(self, path: Path, limit: int) -> None:
        """Index every line up to byte ``limit`` (a read-only journal that needs the last position
        or the checkpoints). A file shorter than what was indexed had a torn tail cut: start over."""
        with self.lock:
            self._read(path, limit, None)

    def extend(self, path: Path, start: int, limit: int) -> tuple[list[Indexed], int, int, int] | None:
        """Index about :data:`EXTEND_BYTES` of lines from byte ``start`` towards ``limit``, for a reader that
        reached the end of the index: what each line held (it yields those events rather than
        decode the lines twice), and the index's size, line count and last position after them.
        ``None`` when the index no longer ends at ``start`` (another reader extended it
        meanwhile, or a torn tail was cut): read on from the index."""
        with self.lock:
            return self.extend_locked(path, start, limit)

    def extend_locked(self, path: Path, start: int, limit: int) -> tuple[list[Indexed], int, int, int] | None:
        """:meth:`extend`, for a caller that holds :attr:`lock`."""
        if self.size != start or limit < start:
            return None
        found: list[Indexed] = []
        step = EXTEND_BYTES
        # One turn; more only for a line longer than that (it is yielded once it is whole).
        while self.size == start and start + step < limit:
            self._read(path, start + step, found)
            step *= 2
        if self.size == start:
            self._read(path, limit, found)
        return found, self.size, self.line_count, self.position

    def _read(self, path: Path, limit: int, found: list[Indexed] | None) -> None:
        if limit < self.size:
            self._reset()
        if self._cursor is None or self._decoder is None:
            self._cursor = LineCursor(path)
            keys = self.keys if self.key_hashes is None else self.key_hashes
            self._decoder = LineDecoder(str(path), keys=keys, path=path, checkpoints=self.checkpoints)
        cursor, decoder, writer = self._cursor, self._decoder, self.writer
        offset = cursor.offset
        for number, line in cursor.lines(limit):
            if number % SEEK_EVERY == 0:
                self.seeks.append((decoder.last_position, offset, number))
            offset += len(line) + 1
            try:
                event = decoder.decode(number, line)
            except CorruptedEventError as exc:
                self.corrupt_numbers.add(number)
                if found is not None:
                    found.append(exc)
                continue
            if event is None:
                self.skip_lines.add(number)  # a repeated line (or a checkpoint): the first occurrence wins
                continue
            if writer:
                self.event_ints.add(event.event_id.int)
                if event.entity_id is not None and event.entity_version is not None:
                    self.versions[event.entity_id] = event.entity_version
            if found is not None:
                found.append(event)
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

    @property
    def corrupt_lines(self) -> int:
        return len(self.corrupt_numbers)

    def decoder(self, where: str) -> LineDecoder:
        """A decoder for readers of the lines indexed so far: the scan's skip list, completion only
        if needed, and the rules checked again only on the lines found corrupt."""
        return LineDecoder(where, legacy=self.legacy, skip_lines=self.skip_lines, checked_except=self.corrupt_numbers)
