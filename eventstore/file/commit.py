"""Group commit for the file journal: appends made while a flush is in flight are staged and go
out together in the next ``write()`` and ``fdatasync``, so N concurrent appends cost one fsync.

The write runs in a helper thread (or on the loop, ``fsync_on_loop``) and hands its outcome back
with one ``call_soon_threadsafe``: no task and no shield between the disk and the callers, so a
lone append pays the thread hop and two loop turns, as a bare ``run_in_executor`` does, plus the
turn that lets appends of the same turn join its write. Each caller waits on a future of its own:
a cancelled caller cancels only that (its append, already staged, is still written)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
        self._waiters: list[asyncio.Future[None]] = []  # the callers of the staged appends
        self._writing = False  # a write is scheduled or in flight; staged appends follow it
        self._idle: asyncio.Future[None] | None = None  # set when writing stops (drain)

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
        """Wait until everything staged so far is durable (or failed and undone). Called only
        after staging something, so a write always has lines."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if not self._writing:
            self._writing = True
            # call_soon, so appends made in this loop iteration join the same write.
            loop.call_soon(self._flush_on_loop if self.fsync_on_loop else self._start_write, loop)
        await waiter

    async def drain(self) -> None:
        """Wait for every staged append to be flushed. Bounded once nothing new is staged."""
        while self._writing:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def _take(self) -> tuple[list[bytes], list[_Staged | _StagedCheckpoint], list[asyncio.Future[None]]]:
        taken = self._lines, self._undo, self._waiters
        self._lines, self._undo, self._waiters = [], [], []
        return taken

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        lines, undo, waiters = self._take()
        data = b"".join(lines)
        try:
            self._write_durably(data)
        except OSError as exc:
            self._fail(undo, waiters, exc)
        else:
            self._made_durable(undo, data, waiters)
        finally:
            self._stop_writing()

    def _start_write(self, loop: asyncio.AbstractEventLoop) -> None:
        lines, undo, waiters = self._take()
        data = b"".join(lines)
        self._executor.submit(self._write_in_thread, loop, data, undo, waiters)  # type: ignore[union-attr]

    def _write_in_thread(self, loop: asyncio.AbstractEventLoop, data: bytes, *batch: Any) -> None:
        error: BaseException | None = None
        try:
            self._write_durably(data)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop: its callers must hear of it
            error = exc
        try:
            loop.call_soon_threadsafe(self._written, data, error, *batch)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _written(self, data: bytes, error: BaseException | None, undo: list[_Staged | _StagedCheckpoint],
                 waiters: list[asyncio.Future[None]]) -> None:
        if error is None:
            self._made_durable(undo, data, waiters)
        else:
            self._fail(undo, waiters, error if isinstance(error, OSError) else OSError(0, repr(error)))
        if self._lines:
            self._start_write(asyncio.get_running_loop())  # staged meanwhile: write them now
        else:
            self._stop_writing()

    def _stop_writing(self) -> None:
        self._writing = False
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _made_durable(self, flushed_lines: list[_Staged | _StagedCheckpoint], data: bytes,
                      waiters: list[asyncio.Future[None]]) -> None:
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
        for waiter in waiters:
            if not waiter.done():  # not cancelled
                waiter.set_result(None)

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
        except BaseException:
            # Cut off whatever part of the batch reached the file: the batch is all or nothing.
            try:
                os.ftruncate(fd, durable_size)
            except OSError:
                pass
            raise

    def _fail(self, undo: list[_Staged | _StagedCheckpoint], waiters: list[asyncio.Future[None]], exc: OSError) -> None:
        # Appends staged after the failed batch were checked against its events: undo them too.
        undo = undo + self._undo
        waiters = waiters + self._waiters
        self._lines, self._undo, self._waiters = [], [], []
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
        for waiter in waiters:
            if not waiter.done():  # not cancelled
                waiter.set_exception(error)
