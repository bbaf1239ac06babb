"""read_entity and query_events: the same answers from both backends, on the same events."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from eventstore import FileEventJournal, InvalidEventError, PostgresEventJournal
from eventstore.envelope import ENCODER
from eventstore.file.scan import json_contains

from .helpers import event, unstamped

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CORR_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
CORR_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")

PAYLOADS = [
    {"amount": 5, "tags": ["vip", "eu"], "meta": {"source": "api", "region": {"code": "de"}}},
    {"amount": 7, "tags": ["eu"], "meta": {"source": "batch"}},
    {"amount": 5.0, "tags": [], "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]},
    {"amount": True, "flag": None, "nested": [[1, 2], [3]]},
    {"amount": 1, "items": [{"sku": "a", "qty": 3}], "tags": ["vip"]},
    {"text": "naïve 日本", "meta": {"source": "api"}},
]


def sample_events() -> list:
    events = []
    for i in range(30):
        events.append(
            event(
                ["credits.minted", "credits.spent", "credits.moved"][i % 3],
                PAYLOADS[i % len(PAYLOADS)],
                entity_id=[f"agent-{i % 4}", None][i % 5 == 4],
                correlation_id=[CORR_A, CORR_B][i % 2] if i % 3 else None,
                # Out of order on purpose: an entity's versions do not follow its timestamps.
                timestamp=T0 + timedelta(minutes=(i * 7) % 30),
            )
        )
    return events


async def fill(journal, events) -> None:
    await journal.append_events(events[:10])
    for e in events[10:]:
        await journal.append_event(e)


async def collect(iterator) -> list:
    return [e async for e in iterator]


def expected_entity(stored, entity, since=None, until=None):
    return [
        e for e in stored
        if e.entity_id == entity and (since is None or e.timestamp >= since) and (until is None or e.timestamp < until)
    ]


async def test_read_entity_in_version_order_with_time_range(journal):
    events = sample_events()
    await fill(journal, events)
    stored = await collect(journal.read_events())
    for entity in ("agent-0", "agent-3", "nobody"):
        got = await collect(journal.read_entity(entity))
        assert got == expected_entity(stored, entity)
        assert [e.entity_version for e in got] == list(range(1, len(got) + 1))
    since, until = T0 + timedelta(minutes=7), T0 + timedelta(minutes=21)
    got = await collect(journal.read_entity("agent-1", since=since, until=until))
    assert got == expected_entity(stored, "agent-1", since, until) and got
    # since is inclusive, until exclusive: a window of exactly one instant holds that instant's events.
    exact = await collect(journal.read_entity("agent-0", since=T0, until=T0 + timedelta(microseconds=1)))
    assert exact and all(e.timestamp == T0 for e in exact)
    assert await collect(journal.read_entity("agent-0", since=T0 + timedelta(minutes=7), until=T0 + timedelta(minutes=7))) == []


async def test_read_entity_pages(open_journal):
    journal = await open_journal()
    if isinstance(journal, PostgresEventJournal):
        journal.page_size = 3  # several keyset pages
    events = [event(entity_id="paged", timestamp=T0 + timedelta(seconds=i)) for i in range(11)]
    await fill(journal, events)
    assert [unstamped(e) for e in await collect(journal.read_entity("paged"))] == events
    window = await collect(journal.read_entity("paged", since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=9)))
    assert [unstamped(e) for e in window] == events[2:9]


QUERIES = [
    {},
    {"event_type": "credits.spent"},
    {"correlation_id": CORR_A},
    {"correlation_id": CORR_B, "event_type": "credits.moved"},
    {"since": T0 + timedelta(minutes=10)},
    {"until": T0 + timedelta(minutes=10)},
    {"since": T0 + timedelta(minutes=7), "until": T0 + timedelta(minutes=14)},
    {"payload_contains": {}},
    {"payload_contains": {"amount": 5}},
    {"payload_contains": {"amount": 1}},
    {"payload_contains": {"amount": True}},
    {"payload_contains": {"tags": ["vip"]}},
    {"payload_contains": {"tags": ["eu", "vip", "eu"]}},
    {"payload_contains": {"tags": []}},
    {"payload_contains": {"tags": "vip"}},
    {"payload_contains": {"meta": {"region": {"code": "de"}}}},
    {"payload_contains": {"meta": {"source": "api"}}},
    {"payload_contains": {"region": {"code": "de"}}},
    {"payload_contains": {"items": [{"sku": "a"}]}},
    {"payload_contains": {"items": [{"sku": "b", "qty": 1}]}},
    {"payload_contains": {"nested": [[2]]}},
    {"payload_contains": {"nested": [2]}},
    {"payload_contains": {"flag": None}},
    {"payload_contains": {"text": "naïve 日本"}},
    {"payload_contains": {"meta": {"source": "api"}}, "event_type": "credits.minted", "since": T0 + timedelta(minutes=5)},
    {"payload_contains": {"amount": 5}, "correlation_id": CORR_B, "until": T0 + timedelta(minutes=20)},
    {"event_type": "credits.minted", "since": T0, "until": T0 + timedelta(minutes=15)},
]


def matches(e, q) -> bool:
    return (
        ("event_type" not in q or e.event_type == q["event_type"])
        and ("correlation_id" not in q or e.correlation_id == q["correlation_id"])
        and ("since" not in q or e.timestamp >= q["since"])
        and ("until" not in q or e.timestamp < q["until"])
        and ("payload_contains" not in q or json_contains(e.payload, q["payload_contains"]))
    )


@pytest.mark.parametrize("query", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
async def test_query_events_filters(journal, query):
    await fill(journal, sample_events())
    stored = await collect(journal.read_events())
    want = [e for e in stored if matches(e, query)]
    got = await collect(journal.query_events(**query))
    assert got == want
    # after and limit cut the same answer.
    if want:
        middle = want[len(want) // 2].position
        assert await collect(journal.query_events(**query, after=middle)) == [e for e in want if e.position > middle]
    assert await collect(journal.query_events(**query, limit=2)) == want[:2]
    assert await collect(journal.query_events(**query, limit=0)) == []


async def test_query_events_hand_checked(journal):
    await fill(journal, sample_events())
    vip = await collect(journal.query_events(payload_contains={"tags": ["vip"]}))
    assert {e.payload.get("amount") for e in vip} == {5, 1}
    assert all(type(e.payload["amount"]) is not bool for e in vip)
    nested = await collect(journal.query_events(payload_contains={"meta": {"region": {"code": "de"}}}))
    assert len(nested) == 5 and all(e.payload is not None for e in nested)
    assert await collect(journal.query_events(payload_contains={"region": {"code": "de"}})) == []
    assert await collect(journal.query_events(event_type="credits.none")) == []


async def test_query_events_pages_with_limit(open_journal):
    journal = await open_journal()
    if isinstance(journal, PostgresEventJournal):
        journal.page_size = 4
    events = [event("credits.paged", {"i": i, "even": i % 2 == 0}) for i in range(23)]
    await fill(journal, events)
    got = await collect(journal.query_events(payload_contains={"even": True}, limit=7))
    assert [e.payload["i"] for e in got] == [0, 2, 4, 6, 8, 10, 12]
    got = await collect(journal.query_events(event_type="credits.paged", after=got[-1].position))
    assert [e.payload["i"] for e in got] == list(range(13, 23))


async def test_bad_query_arguments_are_refused_alike(journal):
    with pytest.raises(InvalidEventError, match="since"):
        await collect(journal.read_entity("x", since=datetime(2025, 1, 1)))
    with pytest.raises(InvalidEventError, match="limit"):
        await collect(journal.query_events(limit=-1))
    with pytest.raises(InvalidEventError, match="payload_contains"):
        await collect(journal.query_events(payload_contains=["a"]))
    for bad in (-1, True, "3"):
        with pytest.raises(InvalidEventError, match="after"):
            await collect(journal.read_events(after=bad))


async def test_both_backends_give_identical_answers(tmp_path, database_url):
    events = sample_events()
    async with FileEventJournal(tmp_path / "e.jsonl") as file, PostgresEventJournal(database_url, pool_size=2) as pg:
        await fill(file, events)
        await fill(pg, events)
        assert [unstamped(e) for e in await collect(file.read_events())] == [
            unstamped(e) for e in await collect(pg.read_events())
        ]
        for query in QUERIES:
            for extra in ({}, {"limit": 3}, {"after": 9}):
                a = [unstamped(e) for e in await collect(file.query_events(**query, **extra))]
                b = [unstamped(e) for e in await collect(pg.query_events(**query, **extra))]
                assert a == b, (query, extra)
        for entity in ("agent-0", "agent-2"):
            for since, until in [(None, None), (T0 + timedelta(minutes=3), None), (None, T0 + timedelta(minutes=14))]:
                a = await collect(file.read_entity(entity, since=since, until=until))
                b = await collect(pg.read_entity(entity, since=since, until=until))
                assert [(unstamped(e), e.entity_version) for e in a] == [(unstamped(e), e.entity_version) for e in b]


JSON_VALUES = [
    {}, {"a": 1}, {"a": 1.0}, {"a": True}, {"a": None}, {"a": "1"}, {"a": [1, 2]}, {"a": [2]}, {"a": [[1]]},
    {"a": [1, [1, 2]]}, {"a": {"b": 1}}, {"a": {"b": 1, "c": [1]}}, {"a": {"b": [1, {"c": 2}]}},
    {"a": {"b": [{"c": 2}]}}, {"a": [{"b": 1}, {"c": 2}]}, {"a": [{"b": 1, "c": 2}]}, {"a": []}, {"a": 1, "b": 2},
    {"b": {"a": 1}}, {"a": [1, 1]}, {"a": [True]}, {"a": [None]}, {"a": "x"}, {"a": ["x", "y"]}, {"a": [{}]},
]


async def test_json_contains_agrees_with_postgres(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        pairs = list(itertools.product(JSON_VALUES, repeat=2))
        rows = await conn.fetch(
            "SELECT l.v::jsonb @> r.v::jsonb FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS l(v, r, n), "
            "LATERAL (SELECT l.r AS v) r ORDER BY n",
            [ENCODER.encode(a).decode() for a, _ in pairs], [ENCODER.encode(b).decode() for _, b in pairs],
        )
    finally:
        await conn.close()
    assert [json_contains(a, b) for a, b in pairs] == [row[0] for row in rows]
    assert json_contains(["a", 1], "a") and not json_contains({"a": 1}, "a")
