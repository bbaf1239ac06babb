"""The JSONL journal format, read one way by everyone: the file journal's recovery scan and its
reads, read-only journals, file subscriptions, and the importer.

A journal file is one envelope per line. Lines written by older tools may lack ``position``,
``entity_version`` or ``entity_id``; :class:`LineDecoder` fills them in. A line that repeats an
earlier position or idempotency key is skipped: the first occurrence wins.

A consumer's checkpoint is a line of its own, written in the same ``write()`` as the events it
accompanies: an envelope of type :data:`CHECKPOINT_TYPE` with ``position`` 0, which every line
before it has passed. Every reader, older versions included, skips it as a line that repeats an
earlier position; the writer's scan and read-only journals collect it (``checkpoints``).
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from .envelope import ENCODER, ENVELOPE_DECODER, EventEnvelope, check_decoded
from .errors import CorruptedEventError, InvalidEventError
from .key_hashes import KeyHashes

CHUNK = 1 << 20
CHECKPOINT_TYPE = "$eventstore.checkpoint"  # payload: {"name": ..., "position": ...}
_decode = ENVELOPE_DECODER.decode
#: ``<journal>.writing``: the (start, end) byte offsets of the writer's write in progress, two
#: little-endian u64; ``(end, end)`` once it is fdatasynced (eventstore.file.recovery.WriteMarker).
WRITE_MARKER = struct.Struct("<QQ")


def write_marker_path(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.name + ".writing")


def read_write_marker(journal_path: Path) -> tuple[int, int] | None:
    """``(start, end)``, or ``None`` when no writer left a marker (yet)."""
    try:
        data = write_marker_path(journal_path).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < WRITE_MARKER.size:
        return None
    start, end = WRITE_MARKER.unpack_from(data)
    return start, end


def durable_size(journal_path: Path, size: int) -> int:
    """How much of a journal of ``size`` bytes (taken *before* this call) a reader in another
    process (a read-only journal, the importer, verify) may read: up to the start of the write in
    progress, whose lines a crash would move aside. The whole file when no writer left a marker,
    or when the marker says its last write is done and the file is longer: the writer records the
    marker before each write, so those bytes were appended by something else (a tool, by hand),
    and every reader reads them as the writer's scan does."""
    marked = read_write_marker(journal_path)
    if marked is None:
        return size
    start, end = marked
    if start == end < size:
        return size
    return min(start, size)


class LineCursor:
    """Complete lines of a file from a byte offset on. After each chunk of lines read, ``offset``
    and ``number`` point past its last complete line, so a reader that read to the end can carry
    on later from there (a subscription does, as the writer appends); one that stopped part-way
    resumes at most one chunk early. An incomplete last line (no newline yet) is never yielded."""

    __slots__ = ("path", "offset", "number")

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, number: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.number = number  # line number of the last line read (1-based)

    def lines(self, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
        """``(line_number, line)`` for each complete line between ``offset`` and byte ``limit``."""
        start = self.offset
        number = self.number
        with open(self.path, "rb") as handle:
            handle.seek(start)
            remaining = None if limit is None else limit - start
            consumed = 0  # bytes read so far, the incomplete rest excluded
            rest = b""
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                consumed += len(chunk)
                for line in lines:
                    number += 1
                    yield number, line
                # Per chunk, not per line: the hot replay loop does no bookkeeping of its own.
                self.offset = start + consumed - len(rest)
                self.number = number


def has_top_level_entity_field(line: bytes) -> bool:
    """Whether the line itself carries ``"entity_id"`` (this journal writes it before the payload)."""
    field = line.find(b'"entity_id":')
    return field != -1 and field < line.find(b'"payload":')


class LineDecoder:
    """Lines to events, with the rules every reader of the format shares.

    ``decode`` raises :class:`CorruptedEventError` (naming the line) for a line that is not an
    envelope, and returns ``None`` for a line to skip: one listed in ``skip_lines`` (found repeated
    by the writer's scan) or one that repeats an earlier position or idempotency key. Keys are
    remembered only with ``keys`` given: a dict of key to position (the writer), or a
    :class:`KeyHashes` (read-only journals, the importer), whose hits are confirmed by reading the
    lines before again from ``path``: a decoder given one reads from the first line. Checkpoint
    lines are collected into ``checkpoints`` when given.
    """

    __slots__ = (
        "where", "path", "legacy", "skip_lines", "keys", "checkpoints", "checkpoint_lines", "last_position",
        "versions", "completed", "checked_except",
    )

    def __init__(
        self,
        where: str,
        *,
        legacy: bool = True,
        skip_lines: set[int] | frozenset[int] = frozenset(),
        keys: dict[str, int] | KeyHashes | None = None,
        path: str | os.PathLike[str] | None = None,
        checkpoints: dict[str, int] | None = None,
        checked_except: set[int] | None = None,
    ) -> None:
        if isinstance(keys, KeyHashes) and path is None:
            raise ValueError("a LineDecoder given KeyHashes needs the path, to confirm a hash hit")
        self.where = where
        self.path = path
        self.legacy = legacy  # False when every line is known to carry its own position and version
        self.skip_lines = skip_lines
        self.keys = keys
        self.checkpoints = checkpoints
        self.checkpoint_lines = 0  # checkpoint lines read (when collecting ``checkpoints``)
        self.last_position = 0
        self.versions: dict[str, int] = {}  # filled only while completing legacy lines
        self.completed = False  # whether some line lacked a store-set field
        # Lines already checked by every rule (a journal's index) except these: the rules that
        # msgspec's constraints leave over run again only on them. None: on every line.
        self.checked_except = checked_except

    def restart(self) -> None:
        """Read from the first line again (the writer cut a torn tail the reader had passed)."""
        self.last_position = 0
        self.versions.clear()

    def decode(self, number: int, line: bytes) -> EventEnvelope | None:
        try:
            event = _decode(line)
            checked_except = self.checked_except
            if checked_except is None or number in checked_except:
                check_decoded(event, line)
        except (msgspec.DecodeError, msgspec.ValidationError, InvalidEventError) as exc:
            raise CorruptedEventError(f"{self.where}:{number}", str(exc)) from None
        if number in self.skip_lines:
            return None
        position = event.position
        if position is None or self.legacy:
            completed = complete_line(event, line, self.last_position, self.versions)
            if completed is not event:
                self.completed = True
                event = completed
                position = event.position
        if position <= self.last_position:  # type: ignore[operator]  # complete_line set it
            if self.checkpoints is not None and event.event_type == CHECKPOINT_TYPE:
                read_checkpoint(event, self.checkpoints)
                self.checkpoint_lines += 1
            return None
        keys = self.keys
        if type(keys) is dict:
            if event.idempotency_key in keys:
                return None
            keys[event.idempotency_key] = position  # type: ignore[assignment]
        elif keys is not None and not keys.add(event.idempotency_key) and (  # type: ignore[union-attr]
            keys.exact is not None or self._seen_before(number, event.idempotency_key)  # type: ignore[union-attr]
        ):
            return None
        self.last_position = position  # type: ignore[assignment]
        if self.legacy and event.entity_id is not None and event.entity_version is not None:
            self.versions[event.entity_id] = event.entity_version
        return event

    def _seen_before(self, number: int, key: str) -> bool:
        """A hash hit: read lines 1 to ``number - 1`` again by the same rules, keeping the keys
        themselves, and track them exactly from here on (a file that repeats keys, or two keys
        sharing a hash). Whether ``key`` is one of them; it is added when it is not."""
        keys: KeyHashes = self.keys  # type: ignore[assignment]
        exact = KeyHashes()
        exact.track_exactly(set())
        again = LineDecoder(self.where, legacy=self.legacy, skip_lines=self.skip_lines, keys=exact, path=self.path)
        for earlier, line in LineCursor(self.path).lines():  # type: ignore[arg-type]
            if earlier >= number:
                break
            try:
                again.decode(earlier, line)
            except CorruptedEventError:
                continue
        keys.track_exactly(exact.exact)  # type: ignore[arg-type]
        return not keys.add(key)


def decode_line(line: bytes) -> EventEnvelope:
    """One line's envelope, checked by every rule of the format: the decoder's constraints, then
    what they leave over (:func:`~eventstore.envelope.check_decoded`). Raises msgspec's
    ``DecodeError``/``ValidationError`` or :class:`InvalidEventError`."""
    event = _decode(line)
    check_decoded(event, line)
    return event


def complete_line(event: EventEnvelope, line: bytes, last_position: int, versions: dict[str, int]) -> EventEnvelope:
    """Fill in what lines from older tools leave out: the next position, the entity from
    ``payload["entity_id"]`` when the line has no ``entity_id`` field, the entity's next version."""
    changes: dict[str, Any] = {}
    if event.position is None:
        changes["position"] = last_position + 1
    entity = event.entity_id
    if entity is None:
        candidate = event.payload.get("entity_id")
        # Only when the field is absent: an explicit "entity_id":null stays null.
        if isinstance(candidate, str) and not has_top_level_entity_field(line):
            entity = changes["entity_id"] = candidate
    if entity is not None and event.entity_version is None:
        changes["entity_version"] = versions.get(entity, 0) + 1
    if not changes:
        return event
    return msgspec.structs.replace(event, **changes)


def checkpoint_line(name: str, position: int) -> bytes:
    """The line that stores checkpoint ``name`` at ``position``."""
    marker = uuid.uuid4()
    line = EventEnvelope(
        event_id=marker, event_type=CHECKPOINT_TYPE, payload={"name": name, "position": position},
        actor_id="eventstore", correlation_id=marker, idempotency_key=f"{CHECKPOINT_TYPE}:{marker}",
        timestamp=datetime.now(UTC), position=0,
    )
    return ENCODER.encode(line) + b"\n"


def read_checkpoint(event: EventEnvelope, checkpoints: dict[str, int]) -> None:
    """Record a checkpoint line's (name, position); a later line for a name supersedes an earlier one."""
    name, position = event.payload.get("name"), event.payload.get("position")
    if isinstance(name, str) and isinstance(position, int) and not isinstance(position, bool):
        checkpoints[name] = position
