"""PostgreSQL → JSONL export, file ↔ PostgreSQL verification, and a terminal progress bar."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .envelope import ENCODER, EventEnvelope
from .migrate import KEEP_CORRUPT, JournalFileReader, session

EXAMPLES = 5


# -- export -----------------------------------------------------------------------------------


async def export_to_file(database_url: str, target: str | os.PathLike[str], *, after: int = 0,
                         page_size: int = 1000, schema: str | None = None, progress: Any = None) -> int:
    """Write every event with position > ``after`` as JSONL lines FileEventJournal reads (positions
    and entity versions as stored), in position order. Written to a temporary file in the same
    folder, fsynced, then renamed over ``target``: readers see the old file or the whole new one."""
    from .postgres import QUERIES, row_to_event

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.export-{os.getpid()}.tmp")
    written = 0
    try:
        # One snapshot for every page: the file is the database as of one moment, even if
        # something still writes (stop writers anyway: see docs/migration.md).
        async with session(database_url, schema) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            total = await conn.fetchval(QUERIES.count_events.sql)
            with open(temporary, "wb") as out:
                position = after
                while True:
                    rows = await conn.fetch(QUERIES.read_events_page.sql, position, page_size)
                    if rows:
                        out.write(b"".join(ENCODER.encode(row_to_event(row)) + b"\n" for row in rows))
                        written += len(rows)
                        position = rows[-1][0]
                        if progress is not None:
                            progress(written, total)
                    if len(rows) < page_size:
                        break
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        temporary.unlink(missing_ok=True)
    return written


# -- verify -----------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    events: int = 0  # valid, distinct events in the file
    matched: int = 0
    missing: int = 0
    different: int = 0
    extra_in_database: int = 0
    corrupt: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: {"missing": [], "different": [], "extra_in_database": [], "corrupt": []})

    @property
    def ok(self) -> bool:
        """Every event of the file is in PostgreSQL, identical. Extra rows (written after a
        switch-over) and corrupt lines (which no backend can read) do not fail the check."""
        return self.missing == 0 and self.different == 0

    def _example(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "matched": self.matched, "missing": self.missing,
            "different": self.different, "extra_in_database": self.extra_in_database, "corrupt": self.corrupt,
            "examples": self.examples,
        }


def _differences(a: EventEnvelope, b: EventEnvelope) -> list[str]:
    return [name for name in a.__struct_fields__ if name != "position" and getattr(a, name) != getattr(b, name)]


async def verify_file(source: str | os.PathLike[str], database_url: str, *, batch_size: int = 1000,
                      schema: str | None = None, progress: Any = None) -> VerifyResult:
    """Compare the file's events (as FileEventJournal reads them) with PostgreSQL by idempotency
    key, in batches; then count database rows whose key the file does not have. Bounded memory:
    one batch of rows, plus the reader's set of key hashes."""
    from .postgres import QUERIES, row_to_event

    reader = JournalFileReader(source)
    result = VerifyResult()
    async with session(database_url, schema) as conn:
        for batch in reader.batches(batch_size):
            rows = await conn.fetch(QUERIES.events_by_keys.sql, [e.idempotency_key for _, e, _ in batch])
            stored = {row[8]: row_to_event(row) for row in rows}
            for number, event, _ in batch:
                found = stored.get(event.idempotency_key)
                if found is None:
                    result.missing += 1
                    result._example("missing", f"line {number}: {event.idempotency_key}")
                    continue
                fields = _differences(event, found)
                if fields:
                    result.different += 1
                    result._example("different", f"line {number}: {event.idempotency_key} ({', '.join(fields)})")
                else:
                    result.matched += 1
            if progress is not None:
                progress(reader.bytes_read, reader.size, result.matched + result.missing + result.different)
        position = 0
        keys = reader.key_hashes
        while True:
            page = await conn.fetch(QUERIES.keys_page.sql, position, 10_000)
            for row in page:
                if hash(row[1]) not in keys:
                    result.extra_in_database += 1
                    result._example("extra_in_database", f"position {row[0]}: {row[1]}")
            if len(page) < 10_000:
                break
            position = page[-1][0]
    result.events = reader.events
    result.corrupt = reader.corrupt
    for number, reason in reader.corrupt_lines[:KEEP_CORRUPT]:
        result._example("corrupt", f"line {number}: {reason}")
    return result


# -- progress ---------------------------------------------------------------------------------


class ProgressBar:
    """``[#####-----]  42%  12,345 events/s  ETA 0:00:07`` redrawn in place on a TTY, at most
    ten times a second; does nothing when the stream is not a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None, *, unit: str = "events") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.unit = unit
        self.count = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, total: int, count: int | None = None) -> None:
        """``done``/``total`` drive the bar and ETA (bytes of a file, or rows); ``count`` is the
        number of events so far, for the rate (default: ``done``)."""
        self.count = done if count is None else count
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.1 and done < total):
            return
        self._drawn = now
        self.stream.write("\r" + render(self.label, done, total, self.count, now - self.started, self.unit))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def render(label: str, done: int, total: int, count: int, elapsed: float, unit: str = "events", width: int = 30) -> str:
    fraction = min(1.0, done / total) if total > 0 else 1.0
    filled = int(fraction * width)
    rate = count / elapsed if elapsed > 0 else 0.0
    if 0 < fraction < 1 and elapsed > 0:
        remaining = int(elapsed * (1 - fraction) / fraction)
        eta = f"{remaining // 3600}:{remaining // 60 % 60:02d}:{remaining % 60:02d}"
    else:
        eta = "-:--:--" if fraction < 1 else "0:00:00"
    return f"{label} [{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}  {count:,} {unit}  {rate:,.0f} {unit}/s  ETA {eta}"

