"""Queries answered by scanning the journal in position order (the file journal has no indexes),
with PostgreSQL's jsonb containment rule, so the file answers exactly as the database does."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from ..base import EntityRead, EventQuery
from ..envelope import EventEnvelope


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


def matches(query: EventQuery, event: EventEnvelope) -> bool:
    """Whether ``event`` passes every filter of ``query`` (``after`` and ``limit`` aside)."""
    return (
        (query.event_types is None or event.event_type in query.event_types)
        and (query.correlation_id is None or event.correlation_id == query.correlation_id)
        and in_range(event.timestamp, query.since, query.until)
        and (query.payload_contains is None or _contains(event.payload, query.payload_contains, "object", "object"))
    )


async def scan_entity(events: AsyncIterator[EventEnvelope], read: EntityRead) -> AsyncIterator[EventEnvelope]:
    """One entity's events from a position-order stream: positions order an entity's versions, so
    a forward read stops at ``up_to_version``; a backward one keeps the last ``limit`` and reverses."""
    entity_id, since, until, low = read.entity_id, read.since, read.until, read.after_version
    high = read.up_to_version
    found: deque[EventEnvelope] = deque(maxlen=read.limit if read.backwards else None)
    count = 0
    async for event in events:
        if event.entity_id != entity_id:
            continue
        version: int = event.entity_version  # type: ignore[assignment]  # set for every event of an entity
        if high is not None and version > high:
            break
        if version <= low or not in_range(event.timestamp, since, until):
            continue
        if read.backwards:
            found.append(event)
            continue
        yield event
        count += 1
        if count == read.limit:
            return
    while found:
        yield found.pop()


async def scan_query(events: AsyncIterator[EventEnvelope], query: EventQuery) -> AsyncIterator[EventEnvelope]:
    found = 0
    async for event in events:
        if matches(query, event):
            yield event
            found += 1
            if found == query.limit:
                return
