"""Every read query uses the index it was written for, on a table big enough that a plan choice
matters: EXPLAIN of the exact SQL text the journal sends, with the journal's jsonb codec."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from eventstore.envelope import ENCODER
from eventstore.postgres.queries import QUERIES
from eventstore.postgres.rows import init_connection

ROWS = 120_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)

# One hot entity with 30,000 versions and 1,500 with 60 each, 40 common event types and a rare one, 10 events per
# correlation, a rare payload feature for containment, one second between timestamps.
LOAD = f"""
INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id, correlation_id,
                           payload, entity_id, entity_version)
SELECT md5('event' || g)::uuid,
       'key-' || g,
       CASE WHEN g % 997 = 0 THEN 'credits.audited' ELSE 'credits.type' || (g % 40) END,
       timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second',
       'loader',
       md5('correlation' || (g / 10))::uuid,
       jsonb_build_object('amount', g % 100, 'account', jsonb_build_object('id', g),
                          'tags', CASE WHEN g % 997 = 0 THEN '["audit", "vip"]'::jsonb ELSE '["std"]'::jsonb END),
       CASE WHEN g % 4 = 0 THEN 'hot' ELSE 'agent-' || (g % 2000) END,
       CASE WHEN g % 4 = 0 THEN g / 4 + 1 ELSE g / 2000 + 1 END
  FROM generate_series(0, {ROWS - 1}) AS g
"""


def correlation(n: int) -> uuid.UUID:
    import hashlib

    return uuid.UUID(hashlib.md5(f"correlation{n}".encode()).hexdigest())


# (query, arguments in declared order, the index that must drive it, or a tuple of acceptable ones)
HW = ROWS  # the settled high-water mark: every row
MAX_VERSION = 2**31 - 1
CASES = [
    ("read_events_page", (50_000, HW, 1000), "idx_credit_events_sequence"),
    ("read_events_page", (50_000, 50_500, 1000), "idx_credit_events_sequence"),
    ("read_entity_page", ("hot", 0, MAX_VERSION, 1000), "credit_events_entity_version_key"),
    # A 60-event stream: fetched by either index (a bitmap of a few dozen rows, then sorted).
    ("read_entity_page", ("agent-7", 0, MAX_VERSION, 1000), ("credit_events_entity_version_key", "idx_credit_events_entity_time")),
    ("read_entity_page", ("hot", 100, 200, 1000), "credit_events_entity_version_key"),
    # The latest event of a 30,000-event stream: one probe at the end of its index range.
    ("read_entity_page_backwards", ("hot", 0, MAX_VERSION, 1), "credit_events_entity_version_key"),
    ("read_entity_page_backwards", ("agent-7", 10, 50, 1000), ("credit_events_entity_version_key", "idx_credit_events_entity_time")),
    ("read_entity_range_page", ("agent-7", T0 + timedelta(hours=3), T0 + timedelta(hours=5), 0, MAX_VERSION, 1000),
     "idx_credit_events_entity_time"),
    ("read_entity_range_page", ("agent-7", None, T0 + timedelta(hours=2), 0, MAX_VERSION, 1000), "idx_credit_events_entity_time"),
    # Newest first inside a window: either index bounds it to the entity's few rows.
    ("read_entity_range_page_backwards", ("agent-7", T0 + timedelta(hours=3), None, 0, MAX_VERSION, 10),
     ("idx_credit_events_entity_time", "credit_events_entity_version_key")),
    ("query_by_correlation_page", (correlation(4321), 0, HW, None, None, None, None, 1000), "idx_credit_events_correlation_id"),
    ("query_by_correlation_page",
     (correlation(4321), 0, HW, ["credits.type1", "credits.type2"], T0, T0 + timedelta(days=9), ENCODER.encode({"amount": 11}), 1000),
     "idx_credit_events_correlation_id"),
    ("query_by_payload_page", (ENCODER.encode({"tags": ["audit"]}), 0, HW, None, None, None, 1000),
     "idx_credit_events_payload_gin"),
    ("query_by_payload_page", (ENCODER.encode({"account": {"id": 777}}), 0, HW, ["credits.type17"], T0, None, 1000),
     "idx_credit_events_payload_gin"),
    ("query_by_type_page", ("credits.audited", 0, HW, None, None, 1000), "idx_credit_events_type_id"),
    # A list of types: one index scan per type, not one query per type.
    ("query_by_types_page", (["credits.audited", "credits.rare"], 0, HW, None, None, 1000), "idx_credit_events_type_id"),
    ("query_by_time_page", (T0 + timedelta(hours=10), T0 + timedelta(hours=11), 0, HW, 1000), "idx_credit_events_timestamp"),
    ("query_by_time_page", (None, T0 + timedelta(minutes=30), 0, HW, 1000), "idx_credit_events_timestamp"),
    ("locate_keys", (["key-7", "key-70000"],), "credit_events_idempotency_key_key"),
]


def walk(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from walk(child)


@pytest.fixture
async def loaded(database_url):
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)
    try:
        await conn.execute(LOAD)
        await conn.execute("ANALYZE credit_events")
        yield conn
    finally:
        await conn.close()


async def test_every_read_query_uses_its_index(loaded):
    conn = loaded
    assert await conn.fetchval("SELECT count(*) FROM credit_events") == ROWS
    failures = []
    for mode in ("force_custom_plan", "force_generic_plan"):
        # asyncpg prepares each statement; PostgreSQL may switch a prepared statement to a
        # generic plan after five executions, so both kinds of plan must use the index.
        await conn.execute(f"SET plan_cache_mode = {mode}")
        for name, args, index in CASES:
            sql = getattr(QUERIES, name).sql
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))[0]["Plan"]
            nodes = list(walk(plan))
            indexes = {n.get("Index Name") for n in nodes}
            seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "credit_events"]
            if not indexes & ({index} if isinstance(index, str) else set(index)) or seq:
                failures.append((mode, name, index, [(n["Node Type"], n.get("Index Name")) for n in nodes]))
    assert failures == [], "\n".join(map(str, failures))


async def test_query_events_is_planned_for_its_values_every_time(loaded, database_url):
    """A cached statement would run a generic plan from its sixth call on; query_events must not."""
    from eventstore import PostgresEventJournal

    async with PostgresEventJournal(database_url, pool_size=1, max_overflow=0) as journal:
        calls = [
            {"event_type": "credits.audited"},
            {"event_type": ["credits.audited", "credits.rare"]},
            {"payload_contains": {"tags": ["audit"]}},
            {"correlation_id": correlation(4321)},
            {"since": T0 + timedelta(hours=10), "until": T0 + timedelta(hours=11)},
        ]
        for kwargs in calls:
            counts = {len([e async for e in journal.query_events(**kwargs, limit=50)]) for _ in range(8)}
            assert len(counts) == 1 and counts.pop() > 0
        assert len([e async for e in journal.query_events(limit=5)]) == 5  # no filter: the cached replay page
        async with journal.connections.acquire() as conn:  # the journal's only connection
            runs = await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
    query_sql = {getattr(QUERIES, name).sql for name in
                 ("query_by_type_page", "query_by_types_page", "query_by_payload_page", "query_by_correlation_page", "query_by_time_page")}
    # Statements of finished calls may already be deallocated; none that remains ran twice.
    assert QUERIES.read_events_page.sql in {r["statement"] for r in runs}, "not looking where the journal prepares"
    ran = [r for r in runs if r["statement"] in query_sql]
    assert [r for r in ran if r["generic_plans"] or r["custom_plans"] > 1] == []


async def test_a_page_of_one_type_reads_only_that_page(loaded):
    """(event_type, id) is keyset-shaped: the first page of a type is one index range in position
    order that stops at LIMIT. Under (event_type) alone the page fetched every row of the type and
    sorted them, or walked the primary key discarding the other types. random_page_cost as
    docs/operations.md advises on SSDs: with the spinning-disk default the planner prefers the
    primary key's physical order for a type of a few percent of a table this small."""
    conn = loaded
    await conn.execute("SET random_page_cost = 1.1")
    for event_type in ("credits.type3", "credits.audited"):
        sql = QUERIES.query_by_type_page.sql
        args = (event_type, 0, HW, None, None, 100)
        plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))[0]["Plan"]
        nodes = list(walk(plan))
        scans = [n for n in nodes if n.get("Relation Name") == "credit_events"]
        assert [n["Index Name"] for n in scans] == ["idx_credit_events_type_id"], nodes
        assert scans[0]["Actual Rows"] <= 100 and scans[0].get("Rows Removed by Filter", 0) == 0, scans[0]
