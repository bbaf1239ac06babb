"""How eventsourcing's records are eventstore events, both ways, and how its errors are named.

A ``StoredEvent`` is one envelope: originator id -> ``entity_id`` (as text), topic ->
``event_type``, and the payload ``{"originator_version": v, "state": "<the state's text>"}``. A
state that is not UTF-8 text (compressed or encrypted) is kept as ``"state_base64"`` instead, so
every state reads back byte for byte. A notification id is the event's ``position``.

Versions: eventstore numbers an entity's events 1, 2, 3, ... in the order they are stored, and an
eventsourcing aggregate numbers its events from its initial version (1 by default, 0 for some)
without gaps. So an originator's version is its entity version plus a fixed offset (0 for
aggregates that start at 1): :class:`Offsets` remembers it, learnt from any event read or written.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections import OrderedDict
from typing import Any

from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)

from ...envelope import EventEnvelope
from ...errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptedEventError,
    DatabaseUnavailableError,
    EventStoreError,
    InvalidEventError,
    JournalLockedError,
    JournalWriteError,
    PermissionDeniedError,
    SchemaNotReadyError,
)

VERSION = "originator_version"
STATE = "state"
STATE_BASE64 = "state_base64"


def state_fields(state: bytes) -> dict[str, str]:
    """The payload fields that keep ``state`` exactly: its text when it is UTF-8 (JSON states,
    stored at their own size), else base64 (compressed or encrypted states; JSON has no bytes)."""
    try:
        text = state.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:  # PostgreSQL text cannot hold NUL
        return {STATE_BASE64: base64.b64encode(state).decode("ascii")}
    return {STATE: text}


def to_envelope(stored: StoredEvent, *, actor_id: str, correlation_id: uuid.UUID) -> EventEnvelope:
    return EventEnvelope.new(
        stored.topic,
        {VERSION: stored.originator_version, **state_fields(stored.state)},
        actor_id=actor_id,
        entity_id=str(stored.originator_id),
        correlation_id=correlation_id,
    )


class Decoder:
    """Envelopes back into eventsourcing's records, with originator ids as ``uuid`` or ``text``."""

    def __init__(self, originator_id_type: str) -> None:
        if originator_id_type not in ("uuid", "text"):
            raise ProgrammingError(f"ORIGINATOR_ID_TYPE must be 'uuid' or 'text', got {originator_id_type!r}")
        self._as_uuid = originator_id_type == "uuid"

    def _originator_id(self, event: EventEnvelope) -> uuid.UUID | str:
        entity_id = event.entity_id or ""
        if not self._as_uuid:
            return entity_id
        try:
            return uuid.UUID(entity_id)
        except ValueError:
            raise DataError(
                f"the event at position {event.position} belongs to {entity_id!r}, which is not a UUID "
                "(set ORIGINATOR_ID_TYPE=text for text originator ids)"
            ) from None

    def stored_event(self, event: EventEnvelope) -> StoredEvent:
        version, state = _fields(event)
        return StoredEvent(self._originator_id(event), version, event.event_type, state)

    def notification(self, event: EventEnvelope) -> Notification:
        version, state = _fields(event)
        return Notification(
            originator_id=self._originator_id(event),
            originator_version=version,
            topic=event.event_type,
            state=state,
            id=event.position or 0,
        )


def _fields(event: EventEnvelope) -> tuple[int, bytes]:
    version = event.payload.get(VERSION)
    if isinstance(version, int) and event.entity_id is not None:
        state = decode_state(event.payload)
        if state is not None:
            return version, state
    raise DataError(
        f"the event at position {event.position} ({event.event_type!r}) was not written through "
        "eventstore.integrations.eventsourcing: its payload has no originator_version and state"
    )


def decode_state(fields: dict[str, Any]) -> bytes | None:
    """The state kept by :func:`state_fields` (``None`` if ``fields`` hold none)."""
    try:
        if STATE in fields:
            return fields[STATE].encode()
        return base64.b64decode(fields[STATE_BASE64], validate=True)
    except (KeyError, AttributeError, TypeError, ValueError, binascii.Error):
        return None


def es_version(event: EventEnvelope) -> int:
    """The originator version an event was stored with."""
    return _fields(event)[0]


class Offsets:
    """Per originator, its version minus its entity version: fixed for the entity's life (its
    versions have no gaps), so what is remembered never goes stale, whoever writes meanwhile. The
    least recently used go first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._offsets: OrderedDict[str, int] = OrderedDict()

    def get(self, entity_id: str) -> int | None:
        offset = self._offsets.get(entity_id)
        if offset is not None:
            self._offsets.move_to_end(entity_id)
        return offset

    def learn(self, entity_id: str, version: int, entity_version: int | None) -> None:
        if entity_version is None or entity_id in self._offsets:
            return
        self._offsets[entity_id] = version - entity_version
        if len(self._offsets) > self._capacity:
            self._offsets.popitem(last=False)


def persistence_error(exc: EventStoreError) -> PersistenceError:
    """The eventsourcing error an application expects for an eventstore error (same message)."""
    kind: type[PersistenceError]
    if isinstance(exc, ConcurrencyError):
        kind = IntegrityError
    elif isinstance(exc, (InvalidEventError, CorruptedEventError)):
        kind = DataError
    elif isinstance(exc, (DatabaseUnavailableError, JournalWriteError, JournalLockedError)):
        kind = OperationalError
    elif isinstance(exc, (ConfigurationError, SchemaNotReadyError, PermissionDeniedError)):
        kind = ProgrammingError
    else:
        kind = InterfaceError
    return kind(str(exc))


def check_versions(stored_events: list[StoredEvent]) -> dict[str, int]:
    """Each originator's first version in the batch; its others must follow it one by one."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for stored in stored_events:
        entity_id = str(stored.originator_id)
        version = stored.originator_version
        if not isinstance(version, int) or isinstance(version, bool):
            raise DataError(f"originator_version must be an int, got {version!r}")
        previous = last.get(entity_id)
        if previous is None:
            first[entity_id] = version
        elif version != previous + 1:
            raise IntegrityError(
                f"versions of {entity_id} in one insert must follow each other: {version} after {previous}"
            )
        last[entity_id] = version
    return first

