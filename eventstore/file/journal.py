"""The JSONL file journal: one envelope per line, fsynced before an append returns, concurrent
appends sharing one fsync (group commit), one writer process at a time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ..base import BaseEventJournal, Checked, Checkpoint, EntityRead, EventQuery, Location, Stored, not_open
from ..envelope import DEFAULT_MAX_PAYLOAD_BYTES, EventEnvelope, Snapshot
from ..errors import (
    CheckpointConflictError,
    ConcurrencyError,
    ConfigurationError,
    CorruptedEventError,
    InvalidEventError,
)
from ..jsonl import LineCursor
from .commit import GroupCommit
from .index import JournalIndex
from .reader import DurableLines
from .recovery import WriteMarker, WriterLock, recover_tail
from .scan import scan_entity, scan_query
from .snapshots import read_snapshot_file, write_snapshot_file
from .subscribe import file_size, follow

DEFAULT_PATH = "storage/events/credits.jsonl"


class FileEventJournal(BaseEventJournal):
    """Events in a JSONL file. ``read_only=True`` opens without the writer lock (for tools
    and readers in other processes), reads nothing at open and indexes the file as reads reach
    it, keeping 16–32 bytes per event; everything else needs the lock.

    ``fsync_on_loop=False`` (default) writes and fsyncs in a helper thread, so the event loop
    never blocks on the disk; ``True`` does it on the loop: lower latency for a single writer,
    at the price of stalling other coroutines for one fsync per group commit."""

    backend = "file"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        read_only: bool = False,
        fsync_on_loop: bool = False,
    ) -> None:
        super().__init__(max_payload_bytes=max_payload_bytes)
        self.path = Path(path)
        self.read_only = read_only
        self.fsync_on_loop = fsync_on_loop
        self.index = JournalIndex(writer=not read_only)
        self.group_commit: GroupCommit | None = None  # the writer's; None when read-only or closed
        self.is_open = False
        self.corrupted_skipped = 0
        self.torn_tail_path: Path | None = None
        self._lock = WriterLock(self.path)
        self._marker = WriteMarker(self.path)

    def __repr__(self) -> str:
        return f"FileEventJournal({str(self.path)!r}, read_only={self.read_only})"

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        if self.is_open:
            return
        if self.read_only:
            if not self.path.exists():
                raise ConfigurationError(f"file journal {self.path} does not exist")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.take()
        try:
            self.index = JournalIndex(writer=not self.read_only)
            if not self.read_only:  # a read-only journal indexes lazily, as its reads reach the lines
                await asyncio.to_thread(self._recover_and_scan)
                self.group_commit = GroupCommit(self.path, self.index, self._marker, fsync_on_loop=self.fsync_on_loop)
                self.group_commit.open()
        except BaseException:
            self._release()
            raise
        self.is_open = True

    def _recover_and_scan(self) -> None:
        if self.path.exists():
            self.torn_tail_path = recover_tail(self.path, self._marker) or self.torn_tail_path
        self.index.scan(self.path)

    async def close(self) -> None:
        if not self.is_open:
            return
        self.is_open = False  # appends are refused from here on, so the drain below is bounded
        if self.group_commit is not None:
            await self.group_commit.drain()  # never drop appends already staged
        self._release()

    def _release(self) -> None:
        if self.group_commit is not None:
            self.group_commit.close()
            self.group_commit = None
        self._lock.release()

    # -- what readers of this journal's state use ------------------------------------------------

    @property
    def flushed(self) -> asyncio.Event | None:
        """Set after the next durable flush (``None`` for a read-only journal: poll instead)."""
        return self.group_commit.flushed if self.group_commit is not None else None

    def durable_size(self) -> int:
        """Bytes of the file a reader may read: the durable lines. A read-only journal learns them
        from the writer's marker: not the lines of a write still being written or fdatasynced,
        which a crash or a failed fdatasync would take back."""
        if not self.read_only:
            return self.index.size
        return self._marker.durable_size(file_size(self.path))

    def _caught_up(self) -> JournalIndex:
        """The index, up to date with the file (a read-only journal follows the writer)."""
        if self.read_only:
            self.index.catch_up(self.path, self.durable_size())
        return self.index

    # -- primitives ------------------------------------------------------------------------

    def _check_open(self, *, writing: bool) -> None:
        if not self.is_open:
            raise not_open()
        if writing and self.read_only:
            raise ConfigurationError(f"file journal {self.path} was opened read_only")

    def _known_duplicate(self, key: str) -> bool:
        position = self.index.keys.get(key)
        return position is not None and position <= self.index.position  # durable, not merely staged

    async def _locate(self, keys: list[str]) -> dict[str, Location]:
        index = self.index
        wanted = {position: key for key in keys if (position := index.keys.get(key)) is not None}
        if not wanted:
            return {}
        if max(wanted) > index.position and self.group_commit is not None:
            # A first append still being written decides: stored, or failed and undone (not stored).
            await self.group_commit.drain()
            wanted = {position: key for position, key in wanted.items() if index.keys.get(key) == position}
            if not wanted:
                return {}
        return await asyncio.to_thread(self._read_locations, wanted)

    def _read_locations(self, wanted: dict[int, str]) -> dict[str, Location]:
        """Read the events at these positions: one pass from the seek point before the first."""
        found: dict[str, Location] = {}
        lines = LineCursor(self.path, *self.index.start_for(min(wanted) - 1))
        decoder = self.index.decoder(str(self.path))
        last = max(wanted)
        for number, line in lines.lines(self.index.size):
            try:
                event = decoder.decode(number, line)
            except CorruptedEventError:
                continue  # counted at open; not one of these events
            if event is None or event.position not in wanted:
                continue
            found[wanted[event.position]] = (event.position, event.entity_version)  # type: ignore[index]
            if event.position == last:
                break
        return found

    async def _store_one(self, event: Checked, expected_version: int | None) -> Stored:
        results = await self._store_many([event], [expected_version], None)
        return results[0]

    async def _store_many(self, events: list[Checked], expected: list[int | None], checkpoint: Checkpoint | None) -> list[Stored]:
        while True:
            results = self._stage(events, expected, checkpoint)
            if results is not None:
                if checkpoint is not None or any(result is not None for result in results):
                    await self._group_commit().commit()  # something was staged
                return results
            # Only duplicates of keys whose first append is still being written: their outcome
            # is ours (stored, or failed and undone, and then these events are new).
            await self._group_commit().drain()

    def _group_commit(self) -> GroupCommit:
        self._check_open(writing=True)
        if self.group_commit is None:  # not reached: _check_open(writing=True) passed
            raise not_open()
        return self.group_commit

    def _stage(self, events: list[Checked], expected: list[int | None], checkpoint: Checkpoint | None) -> list[Stored] | None:
        """Check and stage the batch; ``None`` when it holds only duplicates not durable yet.
        Synchronous: every check runs against the indexes as they would be after each earlier
        event, and no other append can interleave between the checks and staging."""
        commit = self._group_commit()
        if checkpoint is not None:
            stored = commit.checkpoint_at(checkpoint[0])
            if stored is not None and checkpoint[1] <= stored:
                raise CheckpointConflictError(checkpoint[0], stored, checkpoint[1])
        index = self.index
        batch_versions: dict[str, int] = {}
        new: list[int] = []
        in_flight = False  # a duplicate of a key staged but not durable yet
        for i, ((event, _), want) in enumerate(zip(events, expected, strict=True)):
            position = index.keys.get(event.idempotency_key)
            if position is not None:
                in_flight = in_flight or position > index.position
                continue
            if event.event_id.int in index.event_ints:
                raise InvalidEventError("event_id", "already stored under a different idempotency_key")
            entity = event.entity_id
            if entity is not None:
                actual = batch_versions.get(entity, index.versions.get(entity, 0))
                if want is not None and actual != want:
                    raise ConcurrencyError(entity, want, actual)
                batch_versions[entity] = actual + 1
            new.append(i)
        results: list[Stored] = [None] * len(events)
        if not new and checkpoint is None:
            return None if in_flight else results
        for i in new:  # one flush holds them all: one write() and one fsync, all or none
            results[i] = commit.stage(*events[i])
        if checkpoint is not None:
            commit.stage_checkpoint(*checkpoint)
        return results

    async def _load_checkpoint(self, name: str) -> int | None:
        index = await asyncio.to_thread(self._caught_up)
        return index.checkpoints.get(name)

    async def _last_position(self) -> int:
        if not self.read_only:
            return self.index.position
        return (await asyncio.to_thread(self._caught_up)).position

    def _read_events(self, after: int, skip_corrupted: bool) -> AsyncIterator[EventEnvelope]:
        return DurableLines(self.path, self.index, after, self.durable_size).read(self._skip_or_raise(skip_corrupted))

    def _skip_or_raise(self, skip_corrupted: bool) -> Callable[[CorruptedEventError], None]:
        def corrupt(error: CorruptedEventError) -> None:
            if not skip_corrupted:
                raise error
            self.corrupted_skipped += 1

        return corrupt

    def _read_entity(self, read: EntityRead) -> AsyncIterator[EventEnvelope]:
        return scan_entity(self._read_events(0, True), read)

    def _query_events(self, query: EventQuery) -> AsyncIterator[EventEnvelope]:
        return scan_query(self._read_events(query.after, True), query)

    def _subscribe(self, after: int) -> AsyncIterator[EventEnvelope]:
        return follow(self, after)

    @property
    def snapshot_folder(self) -> Path:
        return self.path.with_name(self.path.name + ".snapshots")

    async def _save_snapshot(self, name: str, position: int, state_json: bytes) -> None:
        await asyncio.to_thread(write_snapshot_file, self.snapshot_folder, name, position, state_json)

    async def _load_snapshot(self, name: str) -> Snapshot | None:
        return await asyncio.to_thread(read_snapshot_file, self.snapshot_folder, name)

    def _metrics(self) -> dict[str, Any]:
        return {
            "total_events": self.index.events,
            "corrupted_skipped": self.corrupted_skipped,
            "corrupted_lines_at_open": self.index.corrupt_lines,
            "fsyncs": self.group_commit.flushes if self.group_commit is not None else 0,
            "path": str(self.path),
            "read_only": self.read_only,
        }
