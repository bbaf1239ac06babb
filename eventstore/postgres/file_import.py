"""``eventstore import``: stream a JSONL journal into ``credit_events`` in file order.

Each batch is one transaction: the batch's entity locks (``sql/migrate.sql``:
``lock_import_entities``), then a binary ``COPY credit_events (…) FROM STDIN`` of its rows, so a
run killed at any moment leaves whole batches only. COPY draws ids in the rows' order, so
positions follow file order. A batch whose COPY meets a key already stored (a re-run, or an event
written to PostgreSQL since) is rolled back and sent again as one ``INSERT … SELECT FROM
unnest(…)`` that leaves stored keys out (``import_batch``), so a re-run skips what is already
there. The file's ``entity_version`` is stored as is, so versions equal the file's, and
``credit_events_entity_version_key`` refuses a version already taken by another event (events
written to PostgreSQL after a switch-over): the import stops with :class:`MigrationConflictError`
instead of numbering around them.

Consumers' checkpoints in the file are stored after the last batch, each moved forward to the
file's position (never back), so a checkpoint is never ahead of the events written with it.

Locking: the whole import holds a session advisory lock (one import per database at a time), and
each batch takes the per-entity transaction lock that ``credit_events_append`` takes, for every
entity in the batch, before inserting. A live append to one of those entities waits for the batch
to commit and then numbers after it; it never races the import to the same version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ..envelope import DEFAULT_MAX_PAYLOAD_BYTES, EventEnvelope, encode_payload, validate_event
from ..errors import CorruptedEventError, EventStoreError, InvalidEventError
from ..jsonl import LineCursor, LineDecoder, durable_size
from ..key_hashes import KeyHashes
from .errors import ENTITY_VERSION_KEY, EVENT_ID_KEY, IDEMPOTENCY_KEY_KEY
from .queries import QUERIES
from .rows import IMPORT_COLUMNS, batch_params, import_rows
from .session import tool_session

#: How many corrupt lines a result keeps (with line numbers); the count covers all of them.
KEEP_CORRUPT = 20
_DEADLOCK_RETRIES = 5
#: Decoding yields to the event loop this often, so the batch in flight makes its round trips
#: (BEGIN, locks, COPY, COMMIT) while the next batch is decoded.
_YIELD_EVERY = 16

Progress = Callable[[int, int, int], None]  # (bytes read, total bytes, events so far)


class MigrationConflictError(EventStoreError):
    """The target already holds a different event where the file has one (same entity and
    version, or same event_id under another key). Batches before it were imported."""


@dataclass
class ImportResult:
    """What an import did. ``corrupt_lines`` keeps the first :data:`KEEP_CORRUPT` (line, reason)."""

    inserted: int = 0
    already_present: int = 0
    corrupt: int = 0
    corrupt_lines: list[tuple[int, str]] = field(default_factory=list)
    repeated: int = 0  # lines that repeat an earlier key or position: FileEventJournal skips them too
    events: int = 0  # valid, distinct events in the file
    checkpoints: int = 0  # consumers' checkpoints in the file, moved forward in PostgreSQL
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "already_present": self.already_present,
            "corrupt": self.corrupt,
            "corrupt_lines": [{"line": n, "reason": r} for n, r in self.corrupt_lines],
            "repeated_lines": self.repeated,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "dry_run": self.dry_run,
        }


IMPORT_ROLE = "the role that owns the schema (the one that runs `eventstore schema upgrade`), or run the import as it"


class JournalFileReader:
    """Stream a JSONL journal the way :class:`FileEventJournal` reads it (``eventstore.jsonl``:
    the same completion of lines from older tools, the same rule that a line repeating an earlier
    idempotency key or position is skipped, the same checks of every envelope rule), and each
    payload encoded once for the database, within ``max_payload_bytes``.

    Memory: one dict of entity → version and the keys' 64-bit hashes (``eventstore.key_hashes``:
    a hash hit is confirmed with the keys themselves, so no event is skipped for a collision);
    lines are read in 1 MiB chunks.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.path = Path(path)
        self.max_payload_bytes = max_payload_bytes
        # Lines appended after this are left for a catch-up run; a write a killed writer left
        # unfinished (the <journal>.writing marker) is not read: the writer's recovery moves it aside.
        self.size = durable_size(self.path, self.path.stat().st_size)
        self.bytes_read = 0
        self.keys = KeyHashes()
        self.corrupt = 0
        self.corrupt_lines: list[tuple[int, str]] = []
        self.repeated = 0
        self.events = 0
        self.checkpoints: dict[str, int] = {}  # consumers' checkpoints (the last line of each name wins)

    def _bad(self, number: int, reason: str) -> None:
        self.corrupt += 1
        if len(self.corrupt_lines) < KEEP_CORRUPT:
            self.corrupt_lines.append((number, reason))

    def __iter__(self) -> Iterator[tuple[int, EventEnvelope, bytes]]:
        """``(line_number, event, payload_json)`` per event, in file order."""
        lines = LineCursor(self.path)
        decoder = LineDecoder(str(self.path), keys=self.keys, path=self.path, checkpoints=self.checkpoints)
        checkpoint_lines = 0
        for number, line in lines.lines(self.size):
            self.bytes_read += len(line) + 1
            try:
                event = decoder.decode(number, line)
            except CorruptedEventError as exc:
                self._bad(number, exc.why)
                continue
            if event is None:
                if decoder.checkpoint_lines == checkpoint_lines:
                    self.repeated += 1
                checkpoint_lines = decoder.checkpoint_lines
                continue
            try:
                if decoder.completed:  # lines from an older tool: fields filled in from the payload, unchecked
                    event, payload_json = validate_event(event, self.max_payload_bytes)
                else:  # the decoder checked every rule but the payload's size
                    payload_json = encode_payload(event.payload, self.max_payload_bytes)
            except InvalidEventError as exc:
                self._bad(number, str(exc))
                continue
            self.events += 1
            yield number, event, payload_json

    async def batches(self, size: int) -> AsyncIterator[list[tuple[int, EventEnvelope, bytes]]]:
        """Batches of ``size`` events, letting the event loop run every :data:`_YIELD_EVERY` events."""
        batch: list[tuple[int, EventEnvelope, bytes]] = []
        for item in self:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
            elif len(batch) % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if batch:
            yield batch


# -- import -----------------------------------------------------------------------------------


def _conflict(exc: asyncpg.UniqueViolationError, batch: list[tuple[int, EventEnvelope, bytes]]) -> MigrationConflictError:
    detail = getattr(exc, "detail", None) or str(exc)
    if exc.constraint_name == ENTITY_VERSION_KEY:
        for number, event, _ in batch:  # name the first line whose (entity, version) is taken
            if f"=({event.entity_id}, {event.entity_version})" in detail:
                return MigrationConflictError(
                    f"line {number}: entity {event.entity_id!r} version {event.entity_version} is already taken in "
                    "PostgreSQL by a different event (written there after the switch-over?); "
                    "nothing of this batch was imported, earlier batches were"
                )
        return MigrationConflictError(f"an entity version of the file is taken by a different event in PostgreSQL ({detail})")
    if exc.constraint_name == EVENT_ID_KEY:
        return MigrationConflictError(f"an event_id of the file is stored in PostgreSQL under another idempotency_key ({detail})")
    return MigrationConflictError(f"PostgreSQL refused a batch: {exc}")


async def _copy_batch(conn: asyncpg.Connection, batch: list[tuple[int, EventEnvelope, bytes]]) -> int:
    """The batch in one transaction: its entity locks, then one COPY of its rows (heap
    multi-insert: one WAL record per page of rows, where ``import_batch`` inserts row by row).
    COPY has no ON CONFLICT, so a batch with a key already stored goes to :func:`_insert_batch`."""
    rows = import_rows([event for _, event, _ in batch], [payload for _, _, payload in batch])
    entity_ids = [event.entity_id for _, event, _ in batch]
    for attempt in range(_DEADLOCK_RETRIES):
        try:
            async with conn.transaction():
                await conn.execute(QUERIES.lock_import_entities.sql, entity_ids)
                await conn.copy_records_to_table("credit_events", records=rows, columns=IMPORT_COLUMNS)
        except asyncpg.DeadlockDetectedError:
            if attempt == _DEADLOCK_RETRIES - 1:  # as in _insert_batch
                raise
            continue
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name in (IDEMPOTENCY_KEY_KEY, EVENT_ID_KEY):
                return await _insert_batch(conn, batch)  # rolled back: the statement that skips stored keys
            raise _conflict(exc, batch) from None
        return len(rows)
    raise AssertionError("unreachable")


async def _insert_batch(conn: asyncpg.Connection, batch: list[tuple[int, EventEnvelope, bytes]]) -> int:
    events = [event for _, event, _ in batch]
    args = batch_params(events, [payload for _, _, payload in batch], [event.entity_version for event in events])
    sql = QUERIES.import_batch.sql
    for attempt in range(_DEADLOCK_RETRIES):
        try:
            status = await conn.execute(sql, *args)
        except asyncpg.DeadlockDetectedError:
            # Entity locks share one order with live appends (migration 0008), but two statements
            # inserting the same keys in opposite orders can still wait on each other's unique-index
            # entries; ours was rolled back.
            if attempt == _DEADLOCK_RETRIES - 1:
                raise
            continue
        except asyncpg.UniqueViolationError as exc:
            # The same event stored by someone else since the statement began fails on the first
            # unique index reached (event_id's or the key's): redo the batch with the key as arbiter.
            retryable = exc.constraint_name in (IDEMPOTENCY_KEY_KEY, EVENT_ID_KEY)
            if not retryable or sql is QUERIES.import_batch_on_conflict.sql:
                raise _conflict(exc, batch) from None
            sql = QUERIES.import_batch_on_conflict.sql
            continue
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 n"
    raise AssertionError("unreachable")


def _count(result: ImportResult, inserted: int, size: int) -> None:
    result.inserted += inserted
    result.already_present += size - inserted


async def import_file(
    source_file_path: str | os.PathLike[str],
    target_database_url: str,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    schema: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import (or with ``dry_run`` only count) the file's events; see the module docstring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    reader = JournalFileReader(source_file_path)
    result = ImportResult(dry_run=dry_run)
    # Batches commit without waiting for the WAL flush (a crash can only lose the latest ones, which a
    # re-run imports again); flush_wal at the end makes the finished import durable.
    settings = {} if dry_run else {"synchronous_commit": "off"}
    # Imports store the file's entity versions as they are: a raw INSERT that only the schema's
    # owner may run (writers append through the functions only, migration 0010).
    async with tool_session(target_database_url, schema, tool="import", action="import into credit_events",
                            needs=IMPORT_ROLE, **settings) as conn:
        if not dry_run and not await conn.fetchval(QUERIES.try_import_lock.sql):
            raise MigrationConflictError("another import into this database is running; wait for it to finish")
        # Pipelined: batch k runs on the server while the file is decoded into batch k+1. Batches
        # still commit strictly one after another, so positions follow file order.
        in_flight: asyncio.Task[int] | None = None
        in_flight_size = 0
        try:
            async for batch in reader.batches(batch_size):
                if dry_run:
                    keys = [e.idempotency_key for _, e, _ in batch]
                    present = len(await conn.fetch(QUERIES.present_keys.sql, keys))
                    result.already_present += present
                    result.inserted += len(batch) - present
                else:
                    if in_flight is not None:
                        _count(result, await in_flight, in_flight_size)
                    in_flight = asyncio.ensure_future(_copy_batch(conn, batch))
                    in_flight_size = len(batch)
                    await asyncio.sleep(0)  # let the task send its first statement before decoding goes on
                if progress is not None:
                    progress(reader.bytes_read, reader.size, result.inserted + result.already_present)
            if in_flight is not None:
                task, in_flight = in_flight, None
                _count(result, await task, in_flight_size)
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
                with contextlib.suppress(BaseException):
                    await in_flight
        if reader.checkpoints and not dry_run:
            # After every event: a checkpoint never gets ahead of the events its consumer wrote.
            names = list(reader.checkpoints)
            await conn.execute(QUERIES.import_checkpoints.sql, names, [reader.checkpoints[n] for n in names])
        if not dry_run:
            await conn.fetchval(QUERIES.flush_wal.sql)
            await conn.fetchval(QUERIES.import_unlock.sql)
    result.corrupt, result.corrupt_lines = reader.corrupt, reader.corrupt_lines
    result.repeated, result.events = reader.repeated, reader.events
    result.checkpoints = len(reader.checkpoints)
    return result


async def migrate_file_to_postgres(
    source_file_path: str | os.PathLike[str], target_database_url: str, batch_size: int = 1000
) -> int:
    """Copy a JSONL journal into PostgreSQL in file order; return how many events were newly
    inserted. Safe to re-run (present events are skipped) and to interrupt at any moment."""
    result = await import_file(source_file_path, target_database_url, batch_size=batch_size)
    return result.inserted
