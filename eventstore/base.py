"""The backend boundary: what every journal does, whatever it stores events in."""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Any

from .envelope import EventEnvelope, Snapshot
from .errors import InvalidEventError


class BaseEventJournal(abc.ABC):
    """An append-only journal of :class:`EventEnvelope`. ``async with journal:`` initializes and closes."""

    backend: str = "abstract"

    async def __aenter__(self) -> BaseEventJournal:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def initialize(self) -> None:
        """Open the journal; idempotent."""

    @abc.abstractmethod
    async def append_event(self, event: EventEnvelope, *, expected_version: int | None = None) -> bool:
        """Store ``event`` durably and return ``True``; return ``False`` when its
        ``idempotency_key`` is already stored (nothing written). With ``expected_version=N``
        the entity must be at version N (0 = no events), else :class:`ConcurrencyError`."""

    @abc.abstractmethod
    async def append_events(
        self, events: Iterable[EventEnvelope], *, expected_versions: Mapping[str, int] | None = None
    ) -> list[bool]:
        """Store a batch atomically: every new event or none. One flag per event, as ``append_event``."""

    @abc.abstractmethod
    def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> AsyncIterator[EventEnvelope]:
        """Every event with ``position > after``, in position order, in bounded memory."""

    @abc.abstractmethod
    def read_entity(
        self, entity_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> AsyncIterator[EventEnvelope]:
        """One entity's events in version order; ``since`` inclusive, ``until`` exclusive."""

    @abc.abstractmethod
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
        """Events matching every given filter, in position order."""

    @abc.abstractmethod
    def subscribe(self, *, after: int = 0) -> AsyncIterator[EventEnvelope]:
        """Every event after ``after``, then each new one as it is stored; never skips or repeats."""

    @abc.abstractmethod
    async def save_snapshot(self, name: str, position: int, state: Any) -> None:
        """Keep ``state`` as of ``position``; an older position never replaces a newer snapshot."""

    @abc.abstractmethod
    async def load_snapshot(self, name: str) -> Snapshot | None:
        """The latest readable snapshot of ``name``, or ``None``."""

    @abc.abstractmethod
    def get_metrics(self) -> dict[str, Any]:
        """At least ``backend``, ``total_events``, ``appended``, ``duplicates``, ``corrupted_skipped``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release files, locks and connections; idempotent."""


def first_expected_versions(
    events: list[EventEnvelope], expected_versions: Mapping[str, int] | None
) -> list[int | None]:
    """Per event, the version its entity must be at: only the batch's first event of an
    entity carries the caller's expectation; later ones follow from the batch itself."""
    if not expected_versions:
        return [None] * len(events)
    seen: set[str] = set()
    result: list[int | None] = []
    for event in events:
        entity = event.entity_id
        if entity is not None and entity in expected_versions and entity not in seen:
            seen.add(entity)
            result.append(expected_versions[entity])
        else:
            result.append(None)
    return result


def check_expected_version(name: str, value: object) -> None:
    """An expected version is a plain integer >= 0 (0: the entity has no events yet)."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidEventError(name, f"must be an integer >= 0, got {value!r}")
