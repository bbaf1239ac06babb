"""What lets one writer process own a file journal and survive a crash: the writer lock, the
write marker, and the recovery that moves a torn tail (or a cut-short write) to a sidecar file."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import msgspec

from ..errors import InvalidEventError, JournalLockedError
from ..jsonl import WRITE_MARKER, decode_line, durable_size, read_write_marker, write_marker_path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriterLock:
    """An exclusive ``flock`` on ``<journal>.lock``, holding the holder's description for the
    error a second writer gets. The OS drops it when the process dies, SIGKILL included."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.path = journal_path.with_name(journal_path.name + ".lock")
        self._fd: int | None = None

    def take(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise JournalLockedError(
                    f"file journal {self.journal_path} is open for writing by {holder}; "
                    "stop that writer or open this one with read_only=True"
                ) from None
            raise
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class WriteMarker:
    """``<journal>.writing``: where the write in progress begins and ends, ``(start, end)``, set
    before each ``write()``; ``(end, end)`` once it is fdatasynced. A SIGKILL can stop a large
    ``write()`` after some whole lines; recovery then moves those lines aside too, so the lines
    of one flush (an ``append_events`` batch among them) are all kept or all cut off. Readers in
    other processes read no further than ``start``: the lines after it are not durable yet (a
    failed fdatasync truncates them and their positions are handed out again).
    Not fsynced: it lives in the page cache, which outlives a killed process (not a power cut)."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.path = write_marker_path(journal_path)
        self._fd: int | None = None

    def unfinished_write_start(self, size: int) -> int | None:
        """Where the last write began, when the file ends inside it (the write was cut short)."""
        marked = read_write_marker(self.journal_path)
        if marked is None:
            return None
        start, end = marked
        return start if start < size < end else None

    def durable_size(self, size: int) -> int:
        """How much of a file of ``size`` bytes a reader in another process may read (jsonl.durable_size)."""
        return durable_size(self.journal_path, size)

    def open(self) -> None:
        """Start from an empty marker (recovery has read the old one)."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def record(self, start: int, end: int) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, WRITE_MARKER.pack(start, end), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def recover_tail(journal_path: Path, marker: WriteMarker) -> Path | None:
    """Move an incomplete or unreadable last line, and every line of a cut-short write, to
    ``<journal>.torn-<time>`` (fsynced before the journal is truncated); return the sidecar's path."""
    with open(journal_path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        tail_start = _last_line_start(handle, size)
        unfinished = marker.unfinished_write_start(size)
        if unfinished is not None:
            tail_start = min(tail_start, unfinished)
        handle.seek(tail_start)
        tail = handle.read()
        if unfinished is None and tail.endswith(b"\n"):
            try:
                decode_line(tail[:-1])
                return None  # the last line is whole and readable
            except (msgspec.DecodeError, msgspec.ValidationError, InvalidEventError):
                pass
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        sidecar = journal_path.with_name(f"{journal_path.name}.torn-{stamp}")
        with open(sidecar, "xb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(journal_path.parent)
        handle.truncate(tail_start)
        handle.flush()
        os.fsync(handle.fileno())
        return sidecar


def _last_line_start(handle: BinaryIO, size: int) -> int:
    """Offset where the last line starts (the line after the last-but-one newline)."""
    position = size - 1  # ignore a final newline: it ends the last line
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
