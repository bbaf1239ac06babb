"""Backend-neutral pieces of the read side: argument checks and the JSON containment rule
(PostgreSQL's jsonb ``@>``), so the file journal answers queries exactly as the database does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from .envelope import EventEnvelope, _check_payload_values, _check_string_content
from .errors import InvalidEventError


def check_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if not isinstance(value, datetime):
            raise InvalidEventError(name, f"must be a datetime, got {type(value).__name__}")
        if value.utcoffset() is None:
            raise InvalidEventError(name, "is naive; give it a timezone (UTC recommended)")


def check_query(
    event_type: str | None, correlation_id: uuid.UUID | None, payload_contains: Any, after: int, limit: int | None
) -> None:
    if event_type is not None:
        if not isinstance(event_type, str):
            raise InvalidEventError("event_type", f"must be a string, got {type(event_type).__name__}")
        _check_string_content("event_type", event_type)  # NUL or a lone surrogate: PostgreSQL cannot take it
    if correlation_id is not None and not isinstance(correlation_id, uuid.UUID):
        raise InvalidEventError("correlation_id", f"must be a uuid.UUID, got {type(correlation_id).__name__}")
    if payload_contains is not None:
        if not isinstance(payload_contains, dict):
            raise InvalidEventError("payload_contains", f"must be a JSON object (dict), got {type(payload_contains).__name__}")
        # The payload rules (JSON types, finite numbers, no NUL, bounded depth): the encoder would
        # turn NaN into null and PostgreSQL refuses NUL, while a scan would just find nothing.
        _check_payload_values(payload_contains, "payload_contains")
    for name, value in (("after", after), ("limit", limit)):
        if value is None and name == "limit":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidEventError(name, f"must be an integer >= 0, got {value!r}")


def check_entity_filter(entity_id: object) -> None:
    if not isinstance(entity_id, str):
        raise InvalidEventError("entity_id", f"must be a string, got {type(entity_id).__name__}")
    _check_string_content("entity_id", entity_id)


def in_range(timestamp: datetime, since: datetime | None, until: datetime | None) -> bool:
    """``since`` inclusive, ``until`` exclusive."""
    return (since is None or timestamp >= since) and (until is None or timestamp < until)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def json_contains(container: Any, contained: Any) -> bool:
    """PostgreSQL's ``container @> contained`` for jsonb values: an object contains an object whose
    every key it has with a containing value; an array contains an array whose every scalar
    element equals one of its scalar elements and whose every object/array element is contained
    in one of its elements of the same kind; scalars contain equal scalars of the same kind
    (``true`` is not ``1``). At the top level only, an array contains a scalar it holds."""
    outer, inner = _kind(container), _kind(contained)
    if outer == "array" and inner not in ("array", "object"):
        return any(_kind(item) == inner and item == contained for item in container)
    return _contains(container, contained, outer, inner)


def _contains(container: Any, contained: Any, outer: str, inner: str) -> bool:
    if outer != inner:
        return False
    if inner == "object":
        for key, want in contained.items():
            if key not in container:
                return False
            have = container[key]
            if not _contains(have, want, _kind(have), _kind(want)):
                return False
        return True
    if inner == "array":
        for want in contained:
            want_kind = _kind(want)
            if not any(_contains(have, want, _kind(have), want_kind) for have in container):
                return False
        return True
    return container == contained


class EventFilter:
    """The AND of ``query_events`` filters, for backends that scan."""

    __slots__ = ("event_type", "correlation_id", "since", "until", "payload_contains")

    def __init__(
        self,
        event_type: str | None,
        correlation_id: uuid.UUID | None,
        since: datetime | None,
        until: datetime | None,
        payload_contains: dict[str, Any] | None,
    ) -> None:
        self.event_type = event_type
        self.correlation_id = correlation_id
        self.since = since
        self.until = until
        self.payload_contains = payload_contains

    def __call__(self, event: EventEnvelope) -> bool:
        return (
            (self.event_type is None or event.event_type == self.event_type)
            and (self.correlation_id is None or event.correlation_id == self.correlation_id)
            and in_range(event.timestamp, self.since, self.until)
            and (self.payload_contains is None or _contains(event.payload, self.payload_contains, "object", "object"))
        )


class ScanQueries:
    """``read_entity`` and ``query_events`` as filters over ``read_events``: for journals
    without indexes (the file journal), where a scan is the plan."""

    def read_events(self, *, after: int = 0, skip_corrupted: bool = True) -> AsyncIterator[EventEnvelope]:
        raise NotImplementedError

    async def read_entity(
        self, entity_id: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> AsyncIterator[EventEnvelope]:
        check_entity_filter(entity_id)
        check_range(since, until)
        async for event in self.read_events():  # a scan: positions order an entity's versions
            if event.entity_id == entity_id and in_range(event.timestamp, since, until):
                yield event

    async def query_events(
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
        check_query(event_type, correlation_id, payload_contains, after, limit)
        check_range(since, until)
        if limit == 0:
            return
        matches = EventFilter(event_type, correlation_id, since, until, payload_contains)
        found = 0
        async for event in self.read_events(after=after):
            if matches(event):
                yield event
                found += 1
                if found == limit:
                    return
