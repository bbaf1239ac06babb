"""The event envelope, its validation, and the one JSON encoder/decoder pair both backends reuse."""

from __future__ import annotations

import math
import sys
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from .errors import InvalidEventError

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
#: The deepest payload nesting accepted. PostgreSQL's jsonb parser recurses per level,
#: so an unbounded depth would be refused by one backend and stored by the other.
MAX_PAYLOAD_DEPTH = 256
#: Integers past this many bits are refused: CPython will not print them as decimal
#: (int_max_str_digits), so the file backend could store what it cannot read back.
MAX_INT_BITS = 3000
MAX_EVENT_TYPE = 255  # module-qualified type names are often longer than 50
MAX_ENTITY_ID = 255
MAX_ACTOR_ID = 100
MAX_IDEMPOTENCY_KEY = 255
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
#: asyncpg sends exactly these two instants as -infinity/infinity (and reads those back naive), so an
#: event stamped with one would fall outside every time range in PostgreSQL: both backends refuse them.
_INFINITE_INSTANTS = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))

# The rules a decoder checks at C speed, as msgspec constraints: a journal line or any JSON decoded
# into an EventEnvelope that breaks one is refused by the decoder itself. Constructing an envelope
# in Python checks nothing: validate_event does, with the same bounds and a message per field.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE)]
EntityId = Annotated[str, msgspec.Meta(max_length=MAX_ENTITY_ID)]
ActorId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACTOR_ID)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)]
SchemaVersion = Annotated[int, msgspec.Meta(ge=1, le=_INT32_MAX)]
Position = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]  # 0: a checkpoint line (eventstore.jsonl)
EntityVersion = Annotated[int, msgspec.Meta(ge=1, le=_INT32_MAX)]


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """One event. ``position`` and ``entity_version`` are set by the store on append."""

    event_id: uuid.UUID
    event_type: EventType
    entity_id: EntityId | None = None
    payload: dict[str, Any]
    actor_id: ActorId
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    idempotency_key: IdempotencyKey
    schema_version: SchemaVersion = 1
    timestamp: AwareDatetime
    position: Position | None = None
    entity_version: EntityVersion | None = None

    @classmethod
    def new(
        cls,
        event_type: str,
        payload: dict[str, Any],
        *,
        actor_id: str,
        entity_id: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        schema_version: int = 1,
        timestamp: datetime | None = None,
    ) -> EventEnvelope:
        """Build an envelope, filling ``event_id``, ``timestamp`` (now, UTC), ``correlation_id``
        and ``idempotency_key`` (``str(event_id)``) when not given. Only ``None`` means "not given"."""
        event_id = uuid.uuid4()
        return cls(
            event_id=event_id,
            event_type=event_type,
            entity_id=entity_id,
            payload=payload,
            actor_id=actor_id,
            correlation_id=uuid.uuid4() if correlation_id is None else correlation_id,
            causation_id=causation_id,
            idempotency_key=str(event_id) if idempotency_key is None else idempotency_key,
            schema_version=schema_version,
            timestamp=datetime.now(UTC) if timestamp is None else timestamp,
        )


class Appended(msgspec.Struct, frozen=True):
    """Where an appended event is: its ``position`` and ``entity_version``. ``stored=False``: the
    ``idempotency_key`` was already stored, and these are the first event's position and version."""

    position: int
    entity_version: int | None
    stored: bool


class Snapshot(msgspec.Struct, frozen=True):
    """A projection's state as of ``position``; ``created_at`` is timezone-aware UTC."""

    name: str
    position: int
    state: Any
    created_at: datetime


# One encoder and decoder for the whole process: JSONL lines, jsonb payloads, snapshots.
ENCODER = msgspec.json.Encoder()
ENVELOPE_DECODER = msgspec.json.Decoder(EventEnvelope)
PAYLOAD_DECODER = msgspec.json.Decoder()


def _check_text(field: str, value: object, *, min_len: int, max_len: int | None, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise InvalidEventError(field, f"must be a string, got {type(value).__name__}")
    if len(value) < min_len:
        raise InvalidEventError(field, "must not be empty" if min_len == 1 else f"shorter than {min_len} characters")
    if max_len is not None and len(value) > max_len:
        raise InvalidEventError(field, f"longer than {max_len} characters ({len(value)})")
    check_string_content(field, value)


def check_string_content(field: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidEventError(field, "contains a NUL character (\\u0000), which PostgreSQL cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(field, "contains a lone surrogate, which is not valid UTF-8") from None


def _check_uuid(field: str, value: object, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, uuid.UUID):
        raise InvalidEventError(field, f"must be a uuid.UUID, got {type(value).__name__}")


def _clean_text(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_payload(payload: dict[str, Any]) -> bool:
    """True when every value is plain JSON (exact built-in types), every string storable, every
    number finite and in range, the nesting within bounds: the common case, checked without
    building a path per value. Anything else (a problem, or a subclass such as an IntEnum) is
    left to the walk of :func:`check_payload_values`, which names where it is."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        container, depth = pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return False
        if type(container) is dict:
            for key in container:
                if type(key) is not str or not _clean_text(key):
                    return False
            values = container.values()
        else:
            values = container
        for value in values:
            kind = type(value)
            if kind is str:
                if not _clean_text(value):
                    return False
            elif kind is int:
                if value.bit_length() > MAX_INT_BITS:
                    return False
            elif kind is float:
                if not math.isfinite(value):
                    return False
            elif kind is dict or kind is list:
                push((value, depth + 1))
            elif value is not None and kind is not bool:
                return False
    return True


def check_payload_values(payload: dict[str, Any], root: str = "payload") -> None:
    """Walk the payload once: JSON types only, finite numbers, no NUL, bounded depth."""
    if _clean_payload(payload):
        return
    stack: list[tuple[Any, str, int]] = [(payload, root, 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            check_string_content(where, value)
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise InvalidEventError(where, f"integer larger than {MAX_INT_BITS} bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidEventError(where, f"{value!r} is not a JSON number (NaN and Infinity are refused)")
        elif isinstance(value, dict):
            if depth > MAX_PAYLOAD_DEPTH:
                raise InvalidEventError(root, f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidEventError(where, f"object key {key!r} is not a string")
                check_string_content(f"{where} key {key[:40]!r}", key)
                stack.append((item, f"{where}.{key[:40]}", depth + 1))
        elif isinstance(value, list | tuple):
            if depth > MAX_PAYLOAD_DEPTH:
                raise InvalidEventError(root, f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
            for index, item in enumerate(value):
                stack.append((item, f"{where}[{index}]", depth + 1))
        else:
            raise InvalidEventError(where, f"{type(value).__name__} is not a JSON type")


def validate_event(event: object, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> tuple[EventEnvelope, bytes]:
    """Check every envelope rule; return the event with its timestamp in UTC and the payload's JSON.

    Both backends call this before writing anything, so both refuse the same input with the
    same message. The payload is encoded exactly once here and the bytes are reused by the caller.
    """
    if not isinstance(event, EventEnvelope):
        raise InvalidEventError("event", f"must be an EventEnvelope, got {type(event).__name__}")
    _check_uuid("event_id", event.event_id)
    _check_text("event_type", event.event_type, min_len=1, max_len=MAX_EVENT_TYPE)
    _check_text("entity_id", event.entity_id, min_len=0, max_len=MAX_ENTITY_ID, nullable=True)
    _check_text("actor_id", event.actor_id, min_len=1, max_len=MAX_ACTOR_ID)
    _check_uuid("correlation_id", event.correlation_id)
    _check_uuid("causation_id", event.causation_id, nullable=True)
    _check_text("idempotency_key", event.idempotency_key, min_len=1, max_len=MAX_IDEMPOTENCY_KEY)
    version = event.schema_version
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEventError("schema_version", f"must be an integer, got {type(version).__name__}")
    if not 1 <= version <= _INT32_MAX:
        raise InvalidEventError("schema_version", f"must be between 1 and {_INT32_MAX}, got {version}")
    timestamp = event.timestamp
    if not isinstance(timestamp, datetime):
        raise InvalidEventError("timestamp", f"must be a datetime, got {type(timestamp).__name__}")
    offset = timestamp.utcoffset()
    if offset is None:
        raise InvalidEventError("timestamp", "is naive; give it a timezone (UTC recommended)")
    payload = event.payload
    if not isinstance(payload, dict):
        raise InvalidEventError("payload", f"must be a JSON object (dict), got {type(payload).__name__}")
    check_payload_values(payload)
    payload_json = encode_payload(payload, max_payload_bytes)
    utc = timestamp
    if timestamp.tzinfo is not UTC:
        try:
            utc = timestamp.astimezone(UTC)
        except OverflowError:
            raise InvalidEventError("timestamp", "is out of range once converted to UTC") from None
        event = msgspec.structs.replace(event, timestamp=utc)
    if utc in _INFINITE_INSTANTS:
        raise InvalidEventError(
            "timestamp", f"{utc.isoformat()} is reserved: PostgreSQL's driver stores it as -infinity/infinity"
        )
    return event, payload_json


def encode_payload(payload: dict[str, Any], max_payload_bytes: int) -> bytes:
    """The payload's JSON, encoded once, within ``max_payload_bytes``: the last rule of
    :func:`validate_event`, and all that is left of it for an event :func:`check_decoded` passed."""
    try:
        payload_json = ENCODER.encode(payload)
    except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover - the walk catches these first
        raise InvalidEventError("payload", f"cannot be encoded as JSON: {exc}") from None
    if len(payload_json) > max_payload_bytes:
        raise InvalidEventError(
            "payload", f"{len(payload_json)} bytes of JSON exceeds max_payload_bytes={max_payload_bytes}"
        )
    return payload_json


def check_entity_version(event: EventEnvelope) -> None:
    """A stored ``entity_version`` (a journal line's, or an import's) belongs to an entity and fits
    PostgreSQL's INTEGER column."""
    version = event.entity_version
    if version is None:
        return
    if event.entity_id is None:
        raise InvalidEventError("entity_version", f"is {version} but the event has no entity_id")
    if not 1 <= version <= _INT32_MAX:
        raise InvalidEventError("entity_version", f"must be between 1 and {_INT32_MAX}, got {version}")


#: JSON shorter than this cannot nest a payload deeper than MAX_PAYLOAD_DEPTH (that takes that
#: many brackets each way) nor hold an integer past MAX_INT_BITS (over 900 digits).
_SHORT_JSON = 2 * (MAX_PAYLOAD_DEPTH + 1)
#: 2**MAX_INT_BITS has this many digits: a line with fewer in all holds no integer past the bound.
_BIG_INT_DIGITS = len(str(2**MAX_INT_BITS))
_DIGITS = b"0123456789"
_BACKSLASH = ord("\\")


def check_decoded(event: EventEnvelope, json: bytes) -> None:
    """The rules of :func:`validate_event` that the decoder's constraints leave over, for an event
    decoded from ``json`` (a journal line): a NUL, an instant out of range in UTC, a version
    without an entity, a payload too deep or an integer too large. Each is checked only where the
    line's bytes could break it (a NUL needs a backslash escape, depth needs that many brackets, a
    large integer that many digits), found by byte scans at C speed, so a reader pays well under
    a microsecond per line. The payload's size is not checked: that is a journal's setting, not a
    rule of the format."""
    timestamp = event.timestamp
    if (
        (_BACKSLASH in json and b"\\u0000" in json)  # an int's search is one memchr
        or timestamp.tzinfo is not UTC
        or timestamp.year in (1, 9999)
        or (event.entity_version is not None and event.entity_id is None)
    ):
        validate_event(event, max_payload_bytes=sys.maxsize)
        check_entity_version(event)
    elif len(json) >= _SHORT_JSON and (
        json.count(b"{") + json.count(b"[") > MAX_PAYLOAD_DEPTH
        or len(json) - len(json.translate(None, _DIGITS)) >= _BIG_INT_DIGITS
    ):
        check_payload_values(event.payload)
