"""The JSONL file journal: one envelope per line, fsynced before an append returns,
concurrent appends sharing one fsync (group commit), one writer process at a time."""

from __future__ import annotations

import asyncio
import bisect
import errno
import fcntl
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from .base import BaseEventJournal, check_expected_version, first_expected_versions
from .envelope import DEFAULT_MAX_PAYLOAD_BYTES, ENCODER, ENVELOPE_DECODER, EventEnvelope, Snapshot, validate_event
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptedEventError,
    InvalidEventError,
    JournalLockedError,
    JournalWriteError,
)
from .reads import ScanQueries, check_query
from .snapshots import check_snapshot_args, encode_state, read_snapshot_file, write_snapshot_file
from .subscriptions import file_subscribe

DEFAULT_PATH = "storage/events/credits.jsonl"
_CHUNK = 1 << 20
_SEEK_EVERY = 1024


def _has_top_level_entity_field(line: bytes) -> bool:
    field = line.find(b'"entity_id":')
    return field != -1 and field < line.find(b'"payload":')


def iter_lines(
    path: Path | str, limit: int | None = None, *, start: int = 0, first_line: int = 1
) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for every complete line of ``path`` from byte ``start`` up to byte
    ``limit``; an incomplete last line (no newline yet) is not yielded."""
    number = first_line - 1
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = None if limit is None else limit - start
        rest = b""
        while remaining is None or remaining > 0:
            chunk = handle.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                number += 1
                yield number, line


class _Staged:
    """One append waiting for the next flush: enough to undo it if the write fails."""

    __slots__ = ("key", "event_int", "entity_id", "previous_version")

    def __init__(self, key: str, event_int: int, entity_id: str | None, previous_version: int) -> None:
        self.key = key
        self.event_int = event_int
        self.entity_id = entity_id
        self.previous_version = previous_version


class FileEventJournal(ScanQueries, BaseEventJournal):
    """Events in a JSONL file. ``read_only=True`` opens without the writer lock (for tools
    and readers in other processes); everything else needs the lock.

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
        self.path = Path(path)
        self.read_only = read_only
        self._max_payload_bytes = max_payload_bytes
        self._open = False
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._write_marker_fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._keys: set[str] = set()
        self._event_ints: set[int] = set()
        self._versions: dict[str, int] = {}
        self._last_position = 0  # last position handed out, staged appends included
        self._durable_position = 0
        self._durable_size = 0
        self._skip_lines: set[int] = set()
        # Sparse seek index for read_events(after=N): (last position before, byte offset, line number)
        # every _SEEK_EVERY lines, so resuming near the end does not decode the whole file.
        self._seeks: list[tuple[int, int, int]] = [(0, 0, 1)]
        self._line_count = 0  # lines that repeat an idempotency key or position
        self._legacy = False  # some line lacks position/entity fields: readers must fill them in
        self._pending_lines: list[bytes] = []
        self._pending_undo: list[_Staged] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._fsync_on_loop = fsync_on_loop
        self._total_events = 0
        self._appended = 0
        self._duplicates = 0
        self._corrupted_skipped = 0
        self._corrupted_at_open = 0
        self._flushes = 0
        self._flushed = asyncio.Event()  # replaced and set after each durable flush: wakes subscribers
        self.torn_tail_path: Path | None = None

    def __repr__(self) -> str:
        return f"FileEventJournal({str(self.path)!r}, read_only={self.read_only})"

    # -- lifecycle -------------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._open:
            return
        if self.read_only:
            if not self.path.exists():
                raise ConfigurationError(f"file journal {self.path} does not exist")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        try:
            await asyncio.to_thread(self._scan)
            if not self.read_only:
                created = not self.path.exists()
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                if created:
                    _fsync_dir(self.path.parent)
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventstore-fsync")
                # Recovery has read the marker: start from an empty one.
                self._write_marker_fd = os.open(self._write_marker_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except BaseException:
            self._release()
            raise
        self._open = True

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise JournalLockedError(
                    f"file journal {self.path} is open for writing by {holder}; "
                    "stop that writer or open this one with read_only=True"
                ) from None
            raise
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._lock_fd = fd

    def _scan(self) -> None:
        """Rebuild positions, entity versions and the idempotency index from the file; as the
        writer, move a torn or corrupt last line to a sidecar file first."""
        if not self.path.exists():
            return
        if not self.read_only:
            self._recover_tail()
        size = self.path.stat().st_size
        last_position = 0
        offset = 0
        for number, line in iter_lines(self.path, size):
            if number % _SEEK_EVERY == 0:
                self._seeks.append((last_position, offset, number))
            offset += len(line) + 1
            self._line_count = number
            try:
                event = ENVELOPE_DECODER.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._corrupted_at_open += 1
                continue
            event, legacy = self._complete(event, line, last_position, self._versions)
            self._legacy |= legacy
            position = event.position
            assert position is not None
            if position <= last_position or event.idempotency_key in self._keys:
                self._skip_lines.add(number)  # a repeated line: first occurrence wins
                continue
            last_position = position
            self._keys.add(event.idempotency_key)
            self._event_ints.add(event.event_id.int)
            if event.entity_id is not None and event.entity_version is not None:
                self._versions[event.entity_id] = event.entity_version
            self._total_events += 1
        self._last_position = self._durable_position = last_position
        self._durable_size = size

    @staticmethod
    def _complete(
        event: EventEnvelope, line: bytes, last_position: int, versions: dict[str, int]
    ) -> tuple[EventEnvelope, bool]:
        """Fill in what lines from older tools leave out; the bool says whether anything was."""
        changes: dict[str, Any] = {}
        if event.position is None:
            changes["position"] = last_position + 1
        entity = event.entity_id
        if entity is None:
            candidate = event.payload.get("entity_id")
            # Only when the field is absent: an explicit "entity_id":null (which this journal
            # writes before the payload) stays null.
            if isinstance(candidate, str) and not _has_top_level_entity_field(line):
                entity = changes["entity_id"] = candidate
        if entity is not None and event.entity_version is None:
            changes["entity_version"] = versions.get(entity, 0) + 1
        if not changes:
            return event, False
        return msgspec.structs.replace(event, **changes), True

    @property
    def _write_marker_path(self) -> Path:
        return self.path.with_name(self.path.name + ".writing")

    def _unfinished_write_start(self, size: int) -> int | None:
        """Where the last write() began when a killed writer left it incomplete: the lines of
        one flush (an ``append_events`` batch among them) are all kept or all cut off."""
        try:
            marker = self._write_marker_path.read_bytes()
        except FileNotFoundError:
            return None
        if len(marker) < 16:
            return None
        start, end = struct.unpack_from("<QQ", marker)
        return start if start < size < end else None

    def _recover_tail(self) -> None:
        with open(self.path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            tail_start = _last_line_start(handle, size)
            unfinished = self._unfinished_write_start(size)
            if unfinished is not None:  # whole lines of a cut-short write go to the sidecar too
                tail_start = min(tail_start, unfinished)
            handle.seek(tail_start)
            tail = handle.read()
            if unfinished is None and tail.endswith(b"\n"):
                try:
                    ENVELOPE_DECODER.decode(tail[:-1])
                    return  # the last line is whole and readable
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            sidecar = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            with open(sidecar, "xb") as out:
                out.write(tail)
                out.flush()
                os.fsync(out.fileno())
            _fsync_dir(self.path.parent)
            handle.truncate(tail_start)
            handle.flush()
            os.fsync(handle.fileno())
            self.torn_tail_path = sidecar

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
        if self._write_marker_fd is not None:
            os.close(self._write_marker_fd)
            self._write_marker_fd = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def close(self) -> None:
        if not self._open:
            return
        while self._flush_task is not None or self._flush_scheduled:  # never drop staged appends
            if self._flush_task is not None:
                await asyncio.shield(self._flush_task)
            else:
                await asyncio.sleep(0)
        self._open = False
        self._flushed.set()
        self._release()

    # -- appends ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if not self._open:
            raise ConfigurationError("the journal is not initialized (use `async with journal:` or `await journal.initialize()`)")
        if self.read_only:
            raise ConfigurationError(f"file journal {self.path} was opened read_only")

    def _stage(self, event: EventEnvelope, payload_json: bytes) -> None:
        """Assign position and version, index the event, queue its line. Synchronous, so no
        other append can interleave between the checks before it and the indexing here."""
        entity = event.entity_id
        previous = self._versions.get(entity, 0) if entity is not None else 0
        self._last_position += 1
        version = previous + 1 if entity is not None else None
        self._keys.add(event.idempotency_key)
        self._event_ints.add(event.event_id.int)
        if entity is not None:
            self._versions[entity] = previous + 1
        # The payload was encoded once by validate_event; Raw splices those bytes in.
        line = ENCODER.encode(
            msgspec.structs.replace(
                event, payload=msgspec.Raw(payload_json), position=self._last_position, entity_version=version
            )
        )
        self._pending_lines.append(line + b"\n")
        self._pending_undo.append(_Staged(event.idempotency_key, event.event_id.int, entity, previous))

    def _is_new(self, event: EventEnvelope) -> bool:
        if event.idempotency_key in self._keys:
            return False
        if event.event_id.int in self._event_ints:
            raise InvalidEventError("event_id", "already stored under a different idempotency_key")
        return True

    def _check_version(self, entity: str | None, expected: int | None) -> None:
        if expected is None:
            return
        actual = self._versions.get(entity, 0) if entity is not None else 0
        if actual != expected:
            raise ConcurrencyError(entity, expected, actual)

    async def append_event(self, event: EventEnvelope, *, expected_version: int | None = None) -> bool:
        event, payload_json = validate_event(event, self._max_payload_bytes)
        check_expected_version("expected_version", expected_version)
        self._check_writable()
        if not self._is_new(event):
            self._duplicates += 1
            return False
        self._check_version(event.entity_id, expected_version)
        self._stage(event, payload_json)
        await self._commit()
        self._appended += 1
        return True

    async def append_events(
        self, events: Iterable[EventEnvelope], *, expected_versions: Mapping[str, int] | None = None
    ) -> list[bool]:
        checked = [validate_event(e, self._max_payload_bytes) for e in events]
        for entity, version in (expected_versions or {}).items():
            check_expected_version(f"expected_versions[{entity!r}]", version)
        self._check_writable()
        batch = [e for e, _ in checked]
        expected = first_expected_versions(batch, expected_versions)
        # Check the whole batch against the indexes as they would be after each earlier event.
        flags: list[bool] = []
        batch_keys: set[str] = set()
        batch_ids: set[int] = set()
        batch_versions: dict[str, int] = {}
        for event, want in zip(batch, expected, strict=True):
            key = event.idempotency_key
            if key in self._keys or key in batch_keys:
                flags.append(False)
                continue
            if event.event_id.int in self._event_ints or event.event_id.int in batch_ids:
                raise InvalidEventError("event_id", "already stored under a different idempotency_key")
            entity = event.entity_id
            if want is not None:
                actual = (
                    batch_versions.get(entity, self._versions.get(entity, 0)) if entity is not None else 0
                )
                if actual != want:
                    raise ConcurrencyError(entity, want, actual)
            if entity is not None:
                batch_versions[entity] = batch_versions.get(entity, self._versions.get(entity, 0)) + 1
            batch_keys.add(key)
            batch_ids.add(event.event_id.int)
            flags.append(True)
        for (event, payload_json), stored in zip(checked, flags, strict=True):
            if stored:
                self._stage(event, payload_json)
        self._duplicates += flags.count(False)
        if any(flags):
            # Every staged line goes into the same flush: one write() and one fsync, all or none.
            await self._commit()
            self._appended += flags.count(True)
        return flags

    async def _commit(self) -> None:
        """Wait until everything staged so far is durable (or failed and undone)."""
        loop = asyncio.get_running_loop()
        if self._pending_done is None:
            self._pending_done = loop.create_future()
        done = self._pending_done
        if self._flush_task is None and not self._flush_scheduled:
            if self._fsync_on_loop:
                # call_soon, so appends made in this loop iteration join the same write.
                self._flush_scheduled = True
                loop.call_soon(self._flush_on_loop)
            else:
                # A task, so appends made in this loop iteration join the same flush.
                self._flush_task = loop.create_task(self._flusher())
        await asyncio.shield(done)

    def _take_pending(self) -> tuple[list[bytes], list[_Staged], asyncio.Future[None] | None]:
        taken = self._pending_lines, self._pending_undo, self._pending_done
        self._pending_lines, self._pending_undo, self._pending_done = [], [], None
        return taken

    def _flush_on_loop(self) -> None:
        self._flush_scheduled = False
        if not self._pending_lines:
            return
        lines, undo, done = self._take_pending()
        data = b"".join(lines)
        try:
            self._write_durably(data)
        except OSError as exc:
            self._fail_staged(undo, done, exc)
            return
        self._made_durable(lines, data, done)

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending_lines:
                lines, undo, done = self._take_pending()
                data = b"".join(lines)
                try:
                    await loop.run_in_executor(self._executor, self._write_durably, data)
                except OSError as exc:
                    self._fail_staged(undo, done, exc)
                    continue
                self._made_durable(lines, data, done)
        finally:
            self._flush_task = None

    def _made_durable(self, lines: list[bytes], data: bytes, done: asyncio.Future[None] | None) -> None:
        if self._line_count - self._seeks[-1][2] >= _SEEK_EVERY:
            self._seeks.append((self._durable_position, self._durable_size, self._line_count + 1))
        self._durable_size += len(data)
        self._durable_position += len(lines)
        self._line_count += len(lines)
        self._total_events += len(lines)
        self._flushes += 1
        self._flushed, flushed = asyncio.Event(), self._flushed
        flushed.set()  # wakes live subscribers
        if done is not None and not done.done():
            done.set_result(None)

    def _write_durably(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        view = memoryview(data)
        try:
            if self._write_marker_fd is not None:
                # A SIGKILL can stop write() part-way, after some whole lines: the marker tells
                # recovery where this write began and ends (in the page cache, which outlives us).
                end = self._durable_size + len(data)
                os.pwrite(self._write_marker_fd, struct.pack("<QQ", self._durable_size, end), 0)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
        except OSError:
            # Cut off whatever part of the batch reached the file: the batch is all or nothing.
            try:
                os.ftruncate(fd, self._durable_size)
            except OSError:
                pass
            raise

    def _fail_staged(self, undo: list[_Staged], done: asyncio.Future[None] | None, exc: OSError) -> None:
        # Appends staged after the failed batch were checked against its events: undo them too.
        undo = undo + self._pending_undo
        later = self._pending_done
        self._pending_lines, self._pending_undo, self._pending_done = [], [], None
        for staged in reversed(undo):
            self._keys.discard(staged.key)
            self._event_ints.discard(staged.event_int)
            if staged.entity_id is not None:
                if staged.previous_version:
                    self._versions[staged.entity_id] = staged.previous_version
                else:
                    self._versions.pop(staged.entity_id, None)
        self._last_position = self._durable_position
        error = JournalWriteError(
            exc.errno or 0, f"could not write file journal {self.path}: {exc.strerror or exc}; nothing of this append was stored"
        )
        for future in (done, later):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: callers that were cancelled never will

    # -- reads -----------------------------------------------------------------------------

    async def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> AsyncIterator[EventEnvelope]:
        if not self._open:
            raise ConfigurationError("the journal is not initialized (use `async with journal:` or `await journal.initialize()`)")
        if not self.path.exists():
            return
        limit = self._durable_size if not self.read_only else None
        last_position = 0
        versions: dict[str, int] = {}
        legacy = self._legacy
        skip = self._skip_lines
        decode = ENVELOPE_DECODER.decode
        yielded = 0
        start, first_line = 0, 1
        if not legacy:  # lines from older tools need every line before them: no seeking
            index = bisect.bisect_right(self._seeks, after, key=lambda seek: seek[0]) - 1
            _, start, first_line = self._seeks[max(index, 0)]
        for number, line in iter_lines(self.path, limit, start=start, first_line=first_line):
            try:
                event = decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if not skip_corrupted:
                    raise CorruptedEventError(f"{self.path}:{number}", str(exc)) from None
                self._corrupted_skipped += 1
                continue
            if skip and number in skip:
                continue
            if legacy:
                event, _ = self._complete(event, line, last_position, versions)
                if event.entity_id is not None and event.entity_version is not None:
                    versions[event.entity_id] = event.entity_version
            position = event.position
            assert position is not None
            last_position = position
            if position > after:
                yield event
                yielded += 1
                if yielded % 4096 == 0:
                    await asyncio.sleep(0)  # a long replay must not starve the event loop

    def subscribe(self, *, after: int = 0) -> AsyncIterator[EventEnvelope]:
        check_query(None, None, None, after, None)
        if not self._open:
            raise ConfigurationError("the journal is not initialized (use `async with journal:` or `await journal.initialize()`)")
        return file_subscribe(self, after)

    @property
    def snapshot_folder(self) -> Path:
        return self.path.with_name(self.path.name + ".snapshots")

    async def save_snapshot(self, name: str, position: int, state: Any) -> None:
        check_snapshot_args(name, position)
        state_json = encode_state(state)
        await asyncio.to_thread(write_snapshot_file, self.snapshot_folder, name, position, state_json)

    async def load_snapshot(self, name: str) -> Snapshot | None:
        check_snapshot_args(name, 0)
        return await asyncio.to_thread(read_snapshot_file, self.snapshot_folder, name)

    # -- metrics ---------------------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "total_events": self._total_events,
            "appended": self._appended,
            "duplicates": self._duplicates,
            "corrupted_skipped": self._corrupted_skipped,
            "corrupted_lines_at_open": self._corrupted_at_open,
            "fsyncs": self._flushes,
            "path": str(self.path),
            "read_only": self.read_only,
        }


def _last_line_start(handle: Any, size: int) -> int:
    """Offset where the last line starts (the line after the last-but-one newline)."""
    end = size - 1  # ignore a final newline: it ends the last line
    position = end
    block = 64 * 1024
    while position > 0:
        start = max(0, position - block)
        handle.seek(start)
        data = handle.read(position - start)
        index = data.rfind(b"\n")
        if index != -1:
            return start + index + 1
        position = start
    return 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
