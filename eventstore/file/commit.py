"""Group commit for the file journal: appends made while a flush is in flight are staged and go
out together in the next ``write()`` and ``fdatasync``, so N concurrent appends cost one fsync."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from ..envelope import ENCODER, EventEnvelope
from ..errors import JournalWriteError
from ..jsonl import checkpoint_line
from .index import JournalIndex
from .recovery import WriteMarker, fsync_dir


class _Staged:
    """One append waiting for the next flush: enough to undo it if the write fails."""

    __slots__ = ("key", "event_int", "entity_id", "previous_version", "position")

    def __init__(self, key: str, event_int: int, entity_id: str | None, previous_version: int, position: int) -> None:
        self.key = key
        self.event_int = event_int
        self.entity_id = entity_id
        self.previous_version = previous_version
        self.position = position


class _StagedCheckpoint:
    """A checkpoint waiting for the next flush; it reaches the index once durable."""

    __slots__ = ("name", "position")

    def __init__(self, name: str, position: int) -> None:
        self.name = name
        self.position = position


class GroupCommit:
    """Stages appends (numbering and indexing them at once, so checks made before ``stage`` stay
    true) and flushes them. ``fsync_on_loop`` writes on the event loop instead of a helper thread."""

    def __init__(self, path: Path, index: JournalIndex, marker: WriteMarker, *, fsync_on_loop: bool) -> None:
        self.path = path
        self.index = index
        self.marker = marker
        self.fsync_on_loop = fsync_on_loop
        self.fd: int | None = None
        self.position = index.position  # last position handed out, staged appends included
        self.flushes = 0
        self.flushed = asyncio.Event()  # replaced and set after each durable flush: wakes subscribers
        self._executor: ThreadPoolExecutor | None = None
        self._lines: list[bytes] = []
        self._undo: list[_Staged | _StagedCheckpoint] = []
        self._checkpoints: dict[str, int] = {}  # staged, not yet durable: later appends check against them
        self._done: asyncio.Future[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_scheduled = False

    @property
    def staged(self) -> int:
        """Appends staged for the next flush."""
        return len(self._lines)

    def open(self) -> None:
        created = not self.path.exists()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            fsync_dir(self.path.parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventstore-fsync")
        self.marker.open()

    def close(self) -> None:
        """Release the file; call after :meth:`drain`."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.marker.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.flushed.set()  # subscribers waiting for a flush see the journal closed

    def stage(self, event: EventEnvelope, payload_json: bytes) -> tuple[int, int | None]:
        """Number and index ``event`` and queue its line; return its position and version.
        Synchronous, so no other append interleaves between the caller's checks and this."""
        index = self.index
        entity = event.entity_id
        previous = index.versions.get(entity, 0) if entity is not None else 0
        self.position += 1
        version = previous + 1 if entity is not None else None
        index.keys[event.idempotency_key] = self.position
        index.event_ints.add(event.event_id.int)
        if entity is not None:
            index.versions[entity] = previous + 1
        # The payload was encoded once by validate_event; Raw splices those bytes in.
        line = ENCODER.encode(
            msgspec.structs.replace(event, payload=msgspec.Raw(payload_json), position=self.position, entity_version=version)
        )
        self._lines.append(line + b"\n")
        self._undo.append(_Staged(event.idempotency_key, event.event_id.int, entity, previous, self.position))
        return self.position, version

    def checkpoint_at(self, name: str) -> int | None:
        """Checkpoint ``name`` as it will be once everything staged is durable."""
        staged = self._checkpoints.get(name)
        return staged if staged is not None else self.index.checkpoints.get(name)

    def stage_checkpoint(self, name: str, position: int) -> None:
        """Queue checkpoint ``name`` at ``position`` in the same write as the events staged with it."""
        self._checkpoints[name] = position
        self._lines.append(checkpoint_line(name, position))
        self._undo.append(_StagedCheckpoint(name, position))

    async def commit(self) -> None:
        """Wait until everything staged so far is durable (or failed and undone)."""
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
        done = self._done
        if self._flush_task is None and not self._flush_scheduled:
            if self.fsync_on_loop:
                # call_soon, so appends made in this loop iteration join the same write.
                self._flush_scheduled = True
                loop.call_soon(self._flush_on_loop)
            else:
                # A task, so appends made in this loop iteration join the same flush.
                self._flush_task = loop.create_task(self._flusher())
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait for every staged append to be flushed. Bounded once nothing new is staged."""
        while self._flush_task is not None or self._flush_scheduled:
            if self._flush_task is not None:
                await asyncio.shield(self._flush_task)
            else:
                await asyncio.sleep(0)

    def _take(self) -> tuple[list[bytes], list[_Staged | _StagedCheckpoint], asyncio.Future[None] | None]:
        taken = self._lines, self._undo, self._done
        self._lines, self._undo, self._done = [], [], None
        return taken

    def _flush_on_loop(self) -> None:
        self._flush_scheduled = False
        if not self._lines:
            return
        lines, undo, done = self._take()
        data = b"".join(lines)
        try:
            self._write_durably(data)
        except OSError as exc:
            self._fail(undo, done, exc)
            return
        self._made_durable(undo, data, done)

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._lines:
                lines, undo, done = self._take()
                data = b"".join(lines)
                try:
                    await loop.run_in_executor(self._executor, self._write_durably, data)
                except OSError as exc:
                    self._fail(undo, done, exc)
                    continue
                self._made_durable(undo, data, done)
        finally:
            self._flush_task = None

    def _made_durable(self, flushed_lines: list[_Staged | _StagedCheckpoint], data: bytes, done: asyncio.Future[None] | None) -> None:
        index = self.index
        events = 0
        position = index.position
        for staged in flushed_lines:
            if isinstance(staged, _Staged):
                events += 1
                position = staged.position
            else:
                index.checkpoints[staged.name] = staged.position
                if self._checkpoints.get(staged.name) == staged.position:
                    del self._checkpoints[staged.name]  # no later one staged
        index.made_durable(len(flushed_lines), events, len(data), position)
        self.flushes += 1
        self.flushed, flushed = asyncio.Event(), self.flushed
        flushed.set()  # wakes live subscribers
        if done is not None and not done.done():
            done.set_result(None)

    def _write_durably(self, data: bytes) -> None:
        fd = self.fd
        if fd is None:
            raise OSError(9, "the journal file is closed")
        durable_size = self.index.size
        view = memoryview(data)
        try:
            end = durable_size + len(data)
            self.marker.record(durable_size, end)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
            self.marker.record(end, end)  # durable up to here: read-only readers may read it
        except OSError:
            # Cut off whatever part of the batch reached the file: the batch is all or nothing.
            try:
                os.ftruncate(fd, durable_size)
            except OSError:
                pass
            raise

    def _fail(self, undo: list[_Staged | _StagedCheckpoint], done: asyncio.Future[None] | None, exc: OSError) -> None:
        # Appends staged after the failed batch were checked against its events: undo them too.
        undo = undo + self._undo
        later = self._done
        self._lines, self._undo, self._done = [], [], None
        self._checkpoints.clear()  # every staged one failed
        index = self.index
        for staged in reversed(undo):
            if isinstance(staged, _StagedCheckpoint):
                continue  # never reached the index
            index.keys.pop(staged.key, None)
            index.event_ints.discard(staged.event_int)
            if staged.entity_id is not None:
                if staged.previous_version:
                    index.versions[staged.entity_id] = staged.previous_version
                else:
                    index.versions.pop(staged.entity_id, None)
        self.position = index.position
        error = JournalWriteError(
            exc.errno or 0, f"could not write file journal {self.path}: {exc.strerror or exc}; nothing of this append was stored"
        )
        for future in (done, later):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: callers that were cancelled never will
