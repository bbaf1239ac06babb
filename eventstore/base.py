"""The journal every backend is: the public methods and their rules, written once.

``BaseEventJournal`` validates, applies the expected-version and duplicate rules, checks read
arguments and counts; a backend implements only the primitives below the line (store checked
events, read pages, open and close), so both backends answer the same input the same way.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from .checks import (
    check_count,
    check_entity_filter,
    check_expected_versions,
    check_query,
    check_range,
    check_snapshot_args,
    encode_state,
    first_expected_versions,
)
from .envelope import DEFAULT_MAX_PAYLOAD_BYTES, EventEnvelope, Snapshot, validate_event
from .errors import ConcurrencyError, ConfigurationError, InvalidEventError

#: An event checked by ``validate_event``: the envelope (timestamp in UTC) and its payload's JSON.
Checked = tuple[EventEnvelope, bytes]
#: Where a stored event landed: (position, entity_version). ``None`` for a duplicate.
Stored = tuple[int, int | None] | None

NOT_OPEN = "the journal is not open (use `async with journal:` or `await journal.initialize()`)"


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The checked filters of one ``query_events`` call; they combine with AND."""

    event_type: str | None = None
    correlation_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    payload_contains: dict[str, Any] | None = None
    after: int = 0
    limit: int | None = None


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
        event, payload_json = validate_event(event, self.max_payload_bytes)
        check_count("expected_version", expected_version, nullable=True)
        self._check_open(writing=True)
        key = event.idempotency_key
        if self._known_duplicate(key):
            self._duplicates += 1
            return False
        if event.entity_id is None and expected_version is not None:
            # An event without an entity belongs to no stream: its "entity" is always at version 0.
            # A retry of a stored one is still a duplicate, as for events with an entity.
            if expected_version != 0:
                if await self._is_stored(key):
                    self._duplicates += 1
                    return False
                raise ConcurrencyError(None, expected_version, 0)
            expected_version = None
        stored = await self._store_one((event, payload_json), expected_version)
        if stored is None:
            self._duplicates += 1
            return False
        self._appended += 1
        return True

    async def append_events(
        self, events: Iterable[EventEnvelope], *, expected_versions: Mapping[str, int] | None = None
    ) -> list[bool]:
        """Store a batch atomically: every new event or none. One flag per event, as ``append_event``;
        an ``idempotency_key`` repeated within the batch stores the first and flags the others ``False``."""
        checked = [validate_event(e, self.max_payload_bytes) for e in events]
        check_expected_versions(expected_versions)
        self._check_open(writing=True)
        if not checked:
            return []
        unique, slots = _distinct(checked)
        expected = first_expected_versions([event for event, _ in unique], expected_versions)
        results = await self._store_many(unique, expected)
        flags = [slot is not None and results[slot] is not None for slot in slots]
        stored = flags.count(True)
        self._appended += stored
        self._duplicates += len(flags) - stored
        return flags

    # -- reads -------------------------------------------------------------------------------

    def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> AsyncIterator[EventEnvelope]:
        """Every event with ``position > after``, in position order, in bounded memory."""
        check_count("after", after)
        self._check_open(writing=False)
        return self._read_events(after, skip_corrupted)

    def read_entity(
        self, entity_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> AsyncIterator[EventEnvelope]:
        """One entity's events in version order; ``since`` inclusive, ``until`` exclusive."""
        check_entity_filter(entity_id)
        check_range(since, until)
        self._check_open(writing=False)
        return self._read_entity(entity_id, since, until)

    def query_events(
        self,
        *,
        event_type: str | None = None,
        correlation_id: uuid.UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        payload_contains: dict[str, Any] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[EventEnvelope]:
        """Events matching every given filter, in position order; at most ``limit`` of them."""
        check_query(event_type, correlation_id, payload_contains, after, limit)
        check_range(since, until)
        self._check_open(writing=False)
        query = EventQuery(
            event_type=event_type, correlation_id=correlation_id, since=since, until=until,
            payload_contains=payload_contains, after=after, limit=limit,
        )
        return _nothing() if limit == 0 else self._query_events(query)

    def subscribe(self, *, after: int = 0) -> AsyncIterator[EventEnvelope]:
        """Every event after ``after``, then each new one as it is stored; never skips or repeats."""
        check_count("after", after)
        self._check_open(writing=False)
        return self._subscribe(after)

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
    async def _is_stored(self, key: str) -> bool:
        """Whether an event with this ``idempotency_key`` is stored."""

    @abc.abstractmethod
    async def _store_one(self, event: Checked, expected_version: int | None) -> Stored:
        """Store one event (``expected_version`` only for an event with an entity) or find it a duplicate."""

    @abc.abstractmethod
    async def _store_many(self, events: list[Checked], expected: list[int | None]) -> list[Stored]:
        """Store distinct events atomically; ``expected[i]`` is the version ``events[i]``'s entity must be at."""

    @abc.abstractmethod
    def _read_events(self, after: int, skip_corrupted: bool) -> AsyncIterator[EventEnvelope]: ...

    @abc.abstractmethod
    def _read_entity(self, entity_id: str, since: datetime | None, until: datetime | None) -> AsyncIterator[EventEnvelope]: ...

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


def _distinct(checked: list[Checked]) -> tuple[list[Checked], list[int | None]]:
    """The batch without repeated idempotency keys, and for each event its index among those
    (``None`` for a repeat, which is flagged a duplicate without reaching the store)."""
    keys: set[str] = set()
    ids: set[int] = set()
    unique: list[Checked] = []
    slots: list[int | None] = []
    for item in checked:
        event = item[0]
        if event.idempotency_key in keys:
            slots.append(None)
            continue
        if event.event_id.int in ids:
            raise InvalidEventError("event_id", "used twice in one batch under different idempotency keys")
        keys.add(event.idempotency_key)
        ids.add(event.event_id.int)
        slots.append(len(unique))
        unique.append(item)
    return unique, slots


async def _nothing() -> AsyncIterator[EventEnvelope]:
    return
    yield  # an async generator that yields nothing
