"""The journal every backend is: the public methods and their rules, written once.

``BaseEventJournal`` validates, applies the expected-version and duplicate rules, checks read
arguments and counts; a backend implements only the primitives below the line (store checked
events, read pages, open and close), so both backends answer the same input the same way.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from .checks import (
    check_checkpoint,
    check_checkpoint_name,
    check_count,
    check_entity_filter,
    check_entity_range,
    check_expected_versions,
    check_query,
    check_range,
    check_snapshot_args,
    encode_state,
    first_expected_versions,
)
from .envelope import DEFAULT_MAX_PAYLOAD_BYTES, Appended, EventEnvelope, Snapshot, validate_event
from .errors import ConcurrencyError, ConfigurationError, InvalidEventError
from .telemetry import traced_append, traced_read

#: An event checked by ``validate_event``: the envelope (timestamp in UTC) and its payload's JSON.
Checked = tuple[EventEnvelope, bytes]
#: Where an event is: (position, entity_version).
Location = tuple[int, int | None]
#: What storing an event gave: its location, or ``None`` for a duplicate.
Stored = Location | None
#: A consumer's checkpoint: (name, position).
Checkpoint = tuple[str, int]

NOT_OPEN = "the journal is not open (use `async with journal:` or `await journal.initialize()`)"


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The checked filters of one ``query_events`` call; they combine with AND."""

    event_types: tuple[str, ...] | None = None  # any of them
    correlation_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    payload_contains: dict[str, Any] | None = None
    after: int = 0
    limit: int | None = None


class EntityRead(msgspec.Struct, frozen=True, kw_only=True):
    """The checked arguments of one ``read_entity`` call."""

    entity_id: str
    since: datetime | None = None
    until: datetime | None = None
    after_version: int = 0  # exclusive
    up_to_version: int | None = None  # inclusive
    backwards: bool = False
    limit: int | None = None


# The answer to append_event/append_events for a duplicate: they say only that it was not stored,
# so they never pay for finding where the original is.
_UNLOCATED = Appended(position=0, entity_version=None, stored=False)


class BaseEventJournal(abc.ABC):
    """An append-only journal of :class:`EventEnvelope`. ``async with journal:`` initializes and closes."""

    backend: str = "abstract"

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._appended = 0
        self._duplicates = 0

    async def __aenter__(self) -> BaseEventJournal:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- appends -----------------------------------------------------------------------------

    async def append_event(self, event: EventEnvelope, *, expected_version: int | None = None) -> bool:
        """Store ``event`` durably and return ``True``; return ``False`` when its
        ``idempotency_key`` is already stored (nothing written). With ``expected_version=N``
        the entity must be at version N (0 = no events), else :class:`ConcurrencyError`."""
        return (await self._append_one(event, expected_version, locate=False)).stored

    async def append(self, event: EventEnvelope, *, expected_version: int | None = None) -> Appended:
        """``append_event``, saying where the event is: for a duplicate (``stored=False``) the
        position and version of the event already stored under its ``idempotency_key``."""
        return await self._append_one(event, expected_version, locate=True)

    async def append_events(
        self, events: Iterable[EventEnvelope], *, expected_versions: Mapping[str, int] | None = None
    ) -> list[bool]:
        """Store a batch atomically: every new event or none. One flag per event, as ``append_event``;
        an ``idempotency_key`` repeated within the batch stores the first and flags the others ``False``."""
        return [appended.stored for appended in await self._append_batch(events, expected_versions, None, locate=False)]

    async def append_many(
        self,
        events: Iterable[EventEnvelope],
        *,
        expected_versions: Mapping[str, int] | None = None,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[Appended]:
        """``append_events``, saying where each event is (as ``append``). ``checkpoint=(name,
        position)`` stores a consumer's progress in the same atomic write (``events`` may be
        empty); it only moves forward, else :class:`CheckpointConflictError` and nothing is written."""
        return await self._append_batch(events, expected_versions, checkpoint, locate=True)

    @traced_append(batch=False)
    async def _append_one(self, event: EventEnvelope, expected_version: int | None, *, locate: bool) -> Appended:
        event, payload_json = validate_event(event, self.max_payload_bytes)
        check_count("expected_version", expected_version, nullable=True)
        self._check_open(writing=True)
        key = event.idempotency_key
        if self._known_duplicate(key):
            return await self._duplicate(key, locate)
        if event.entity_id is None and expected_version is not None:
            # An event without an entity belongs to no stream: its "entity" is always at version 0.
            # A retry of a stored one is still a duplicate, as for events with an entity.
            if expected_version != 0:
                found = await self._locate([key])
                if key in found:
                    self._duplicates += 1
                    return Appended(*found[key], stored=False)
                raise ConcurrencyError(None, expected_version, 0)
            expected_version = None
        stored = await self._store_one((event, payload_json), expected_version)
        if stored is None:
            return await self._duplicate(key, locate)
        self._appended += 1
        return Appended(stored[0], stored[1], stored=True)

    async def _duplicate(self, key: str, locate: bool) -> Appended:
        self._duplicates += 1
        if not locate:
            return _UNLOCATED
        return Appended(*(await self._locate([key]))[key], stored=False)

    @traced_append(batch=True)
    async def _append_batch(
        self,
        events: Iterable[EventEnvelope],
        expected_versions: Mapping[str, int] | None,
        checkpoint: object,
        *,
        locate: bool,
    ) -> list[Appended]:
        checked = [validate_event(e, self.max_payload_bytes) for e in events]
        check_expected_versions(expected_versions)
        progress = check_checkpoint(checkpoint)
        self._check_open(writing=True)
        if not checked and progress is None:
            return []
        unique, slots = _distinct(checked)
        expected = first_expected_versions([event for event, _ in unique], expected_versions)
        results = await self._store_many(unique, expected, progress)
        # Duplicates (of stored events, or of an earlier event of this batch) are located together.
        duplicates = [unique[slot][0].idempotency_key for slot in dict.fromkeys(slots) if results[slot] is None]
        found = await self._locate(duplicates) if locate and duplicates else {}
        appended: list[Appended] = []
        first: set[int] = set()
        for slot in slots:
            result = results[slot]
            if slot in first or result is None:
                self._duplicates += 1
                if not locate:
                    appended.append(_UNLOCATED)
                else:
                    where = result if result is not None else found[unique[slot][0].idempotency_key]
                    appended.append(Appended(*where, stored=False))
            else:
                first.add(slot)
                self._appended += 1
                appended.append(Appended(*result, stored=True))
        return appended

    async def checkpoint(self, name: str) -> int | None:
        """The position stored for consumer ``name`` by ``append_many(..., checkpoint=...)``, or ``None``."""
        check_checkpoint_name(name)
        self._check_open(writing=False)
        return await self._load_checkpoint(name)

    # -- reads -------------------------------------------------------------------------------

    def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> AsyncIterator[EventEnvelope]:
        """Every event with ``position > after``, in position order, in bounded memory; up to the
        settled high-water mark taken when iteration starts (``last_position``), so a follower that
        pages with ``after=<last position seen>`` never skips an event committed late."""
        check_count("after", after)
        self._check_open(writing=False)
        return traced_read("read_events", self.backend, self._read_events(after, skip_corrupted))

    async def last_position(self) -> int:
        """The settled high-water mark (0 for an empty journal): every event at or below it is
        readable, and no event will ever appear at or below it later."""
        self._check_open(writing=False)
        return await self._last_position()

    def read_entity(
        self,
        entity_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        after_version: int | None = None,
        up_to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """One entity's events in version order (newest first with ``backwards=True``), at most
        ``limit`` of them; ``since`` inclusive, ``until`` exclusive, ``after_version`` exclusive,
        ``up_to_version`` inclusive."""
        check_entity_filter(entity_id)
        check_range(since, until)
        check_entity_range(after_version, up_to_version, backwards, limit)
        self._check_open(writing=False)
        read = EntityRead(
            entity_id=entity_id, since=since, until=until, after_version=after_version or 0,
            up_to_version=up_to_version, backwards=backwards, limit=limit,
        )
        if limit == 0 or (up_to_version is not None and up_to_version <= read.after_version):
            return _nothing()
        return traced_read("read_entity", self.backend, self._read_entity(read))

    def query_events(
        self,
        *,
        event_type: str | Sequence[str] | None = None,
        correlation_id: uuid.UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        payload_contains: dict[str, Any] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Events matching every given filter, in position order, at most ``limit`` of them, up to
        the settled high-water mark taken when iteration starts (as ``read_events``). ``event_type``
        is one type or a list of types (any of them)."""
        event_types = check_query(event_type, correlation_id, payload_contains, after, limit)
        check_range(since, until)
        self._check_open(writing=False)
        query = EventQuery(
            event_types=event_types, correlation_id=correlation_id, since=since, until=until,
            payload_contains=payload_contains, after=after, limit=limit,
        )
        return _nothing() if limit == 0 else traced_read("query_events", self.backend, self._query_events(query))

    def subscribe(self, *, after: int = 0) -> AsyncIterator[EventEnvelope]:
        """Every event after ``after``, then each new one as it is stored; never skips or repeats."""
        check_count("after", after)
        self._check_open(writing=False)
        return traced_read("subscribe", self.backend, self._subscribe(after))

    # -- snapshots and metrics ---------------------------------------------------------------

    async def save_snapshot(self, name: str, position: int, state: Any) -> None:
        """Keep ``state`` as of ``position``; an older position never replaces a newer snapshot."""
        check_snapshot_args(name, position)
        state_json = encode_state(state)
        self._check_open(writing=False)
        await self._save_snapshot(name, position, state_json)

    async def load_snapshot(self, name: str) -> Snapshot | None:
        """The latest readable snapshot of ``name``, or ``None``."""
        check_snapshot_args(name, 0)
        self._check_open(writing=False)
        return await self._load_snapshot(name)

    def get_metrics(self) -> dict[str, Any]:
        """At least ``backend``, ``total_events``, ``appended``, ``duplicates``, ``corrupted_skipped``."""
        return {"backend": self.backend, "appended": self._appended, "duplicates": self._duplicates, **self._metrics()}

    # -- lifecycle (each backend) ------------------------------------------------------------

    @abc.abstractmethod
    async def initialize(self) -> None:
        """Open the journal; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release files, locks and connections; idempotent. Returns promptly while appends are in
        flight: each either completes (durably) or fails with an ``EventStoreError``."""

    # -- primitives (each backend) -----------------------------------------------------------

    @abc.abstractmethod
    def _check_open(self, *, writing: bool) -> None:
        """Raise :class:`ConfigurationError` unless the journal is open (and may write, if ``writing``)."""

    @abc.abstractmethod
    def _known_duplicate(self, key: str) -> bool:
        """Whether ``key`` is known to be stored, without I/O (``False`` when unsure)."""

    @abc.abstractmethod
    async def _locate(self, keys: list[str]) -> dict[str, Location]:
        """Where the events stored under these idempotency keys are (keys not stored are absent)."""

    @abc.abstractmethod
    async def _store_one(self, event: Checked, expected_version: int | None) -> Stored:
        """Store one event (``expected_version`` only for an event with an entity) or find it a duplicate."""

    @abc.abstractmethod
    async def _store_many(self, events: list[Checked], expected: list[int | None], checkpoint: Checkpoint | None) -> list[Stored]:
        """Store distinct events and the checkpoint atomically; ``expected[i]`` is the version
        ``events[i]``'s entity must be at. A checkpoint not past the stored one raises
        :class:`CheckpointConflictError`."""

    @abc.abstractmethod
    async def _load_checkpoint(self, name: str) -> int | None: ...

    @abc.abstractmethod
    async def _last_position(self) -> int: ...

    @abc.abstractmethod
    def _read_events(self, after: int, skip_corrupted: bool) -> AsyncIterator[EventEnvelope]: ...

    @abc.abstractmethod
    def _read_entity(self, read: EntityRead) -> AsyncIterator[EventEnvelope]: ...

    @abc.abstractmethod
    def _query_events(self, query: EventQuery) -> AsyncIterator[EventEnvelope]: ...

    @abc.abstractmethod
    def _subscribe(self, after: int) -> AsyncIterator[EventEnvelope]: ...

    @abc.abstractmethod
    async def _save_snapshot(self, name: str, position: int, state_json: bytes) -> None: ...

    @abc.abstractmethod
    async def _load_snapshot(self, name: str) -> Snapshot | None: ...

    @abc.abstractmethod
    def _metrics(self) -> dict[str, Any]:
        """``total_events``, ``corrupted_skipped`` and the backend's own figures."""


def not_open() -> ConfigurationError:
    return ConfigurationError(NOT_OPEN)


def _distinct(checked: list[Checked]) -> tuple[list[Checked], list[int]]:
    """The batch without repeated idempotency keys, and for each event the index of its key's first
    event among those (a repeat is a duplicate of that one and never reaches the store)."""
    slot_of: dict[str, int] = {}
    ids: set[int] = set()
    unique: list[Checked] = []
    slots: list[int] = []
    for item in checked:
        event = item[0]
        slot = slot_of.get(event.idempotency_key)
        if slot is None:
            if event.event_id.int in ids:
                raise InvalidEventError("event_id", "used twice in one batch under different idempotency keys")
            ids.add(event.event_id.int)
            slot = slot_of[event.idempotency_key] = len(unique)
            unique.append(item)
        slots.append(slot)
    return unique, slots


async def _nothing() -> AsyncIterator[EventEnvelope]:
    return
    yield  # an async generator that yields nothing
