"""Which statement serves a read: the entity page queries by range and direction, and the
query_events plan (the most selective filter with an index leads, the others are checked on
its rows)."""

from __future__ import annotations

from typing import Any

from ..base import EventQuery
from ..envelope import ENCODER
from .queries import QUERIES

READ_PAGE_SQL: str = QUERIES.read_events_page.sql
# (ranged by time, backwards) -> the entity page query
ENTITY_SQL: dict[tuple[bool, bool], str] = {
    (False, False): QUERIES.read_entity_page.sql,
    (False, True): QUERIES.read_entity_page_backwards.sql,
    (True, False): QUERIES.read_entity_range_page.sql,
    (True, True): QUERIES.read_entity_range_page_backwards.sql,
}
MAX_VERSION = 2**31 - 1  # entity_version is an INTEGER

QUERY_SQL: dict[str, str] = {
    "correlation": QUERIES.query_by_correlation_page.sql,
    "payload": QUERIES.query_by_payload_page.sql,
    "type": QUERIES.query_by_type_page.sql,
    "types": QUERIES.query_by_types_page.sql,
    "time": QUERIES.query_by_time_page.sql,
}


def query_plan(query: EventQuery) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    """The query whose leading filter is the most selective one with an index; the other filters
    are checked on its rows. Returns (sql, parameters before ``after, high_water``, parameters after them)."""
    contains = None if query.payload_contains is None else ENCODER.encode(query.payload_contains)
    since, until = query.since, query.until
    types = None if query.event_types is None else list(query.event_types)
    if query.correlation_id is not None:
        return QUERY_SQL["correlation"], (query.correlation_id,), (types, since, until, contains)
    if contains is not None:
        return QUERY_SQL["payload"], (contains,), (types, since, until)
    if types is not None and len(types) == 1:
        return QUERY_SQL["type"], (types[0],), (since, until)
    if types is not None:
        return QUERY_SQL["types"], (types,), (since, until)
    if since is not None or until is not None:
        return QUERY_SQL["time"], (since, until), ()
    return READ_PAGE_SQL, (), ()
