"""A credit-system event log of N events, loaded fast into PostgreSQL and a JSONL file journal.

Shared by bench_queries.py and bench_snapshots.py. The log is what ``eventstore.credits`` writes:
``agent.created`` for every agent first, then mints, spends and transfers (a debit and a credit
sharing one correlation id), balances never negative, one event per millisecond. Rows are generated
in chunks (never all in memory) into the exact lines FileEventJournal writes; that file is COPYed into a
staging table and turned into ``credit_events`` rows by the server, with the secondary indexes and the unique constraints dropped and rebuilt after the
load (same definitions, read back from the catalog), then VACUUM ANALYZE: the same table and indexes
the journal builds, loaded in seconds instead of minutes. Indexes built in bulk are more compact than
ones grown row by row; the journal and the bare queries read the same ones.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from common import url

from eventstore.credits import AGENT_CREATED, CREDITED, DEBITED, MINTED, SPENT, apply_balance
from eventstore.envelope import ENCODER, EventEnvelope

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 50_000


@dataclass
class CreditLog:
    """What the loaders learned while generating: parameters for queries, balances at cut points."""

    events: int
    agents: list[str]
    correlations: list[uuid.UUID] = field(default_factory=list)  # one transfer's id every so often
    cuts: dict[int, tuple[int, dict[str, int]]] = field(default_factory=dict)  # wanted cut -> (position, state)
    final: dict[str, int] = field(default_factory=dict)

    def timestamp(self, position: int) -> datetime:
        return BASE_TIME + timedelta(milliseconds=position)


def generate(n: int, *, agents: int | None = None, cuts: tuple[int, ...] = (),
             seed: int = 6) -> tuple[CreditLog, Iterator[list[EventEnvelope]]]:
    """The log's facts and an iterator of chunks of envelopes (position and version set); the facts are
    complete once the iterator is exhausted."""
    count = agents or max(10, n // 500)
    log = CreditLog(events=n, agents=[f"agent-{k:05d}" for k in range(count)])
    return log, _chunks(log, n, cuts, random.Random(seed))


def _chunks(log: CreditLog, n: int, cuts: tuple[int, ...], rng: random.Random) -> Iterator[list[EventEnvelope]]:
    count = len(log.agents)
    versions: dict[str, int] = {}
    balances: dict[str, int] = {}
    wanted = sorted(c for c in cuts if 0 < c <= n)
    position = 0
    chunk: list[EventEnvelope] = []

    def emit(event_type: str, agent: str, payload: dict[str, Any], correlation: uuid.UUID | None = None) -> None:
        nonlocal position
        position += 1
        version = versions[agent] = versions.get(agent, 0) + 1
        event_id = uuid.uuid4()
        event = EventEnvelope(
            event_id=event_id, event_type=event_type, entity_id=agent, payload=payload, actor_id="credit-bench",
            correlation_id=correlation or uuid.uuid4(), idempotency_key=str(event_id),
            timestamp=BASE_TIME + timedelta(milliseconds=position), position=position, entity_version=version,
        )
        apply_balance(balances, event)
        while wanted and position >= wanted[0]:
            log.cuts[wanted.pop(0)] = (position, dict(balances))
        chunk.append(event)

    for agent in log.agents:
        if position >= n:
            break
        emit(AGENT_CREATED, agent, {"agent_id": agent, "skill_level": round(rng.random(), 3)})
    names = log.agents
    while position < n:
        r = rng.random()
        agent = names[rng.randrange(count)]
        if r < 0.4 or balances[agent] < 10 or position == n - 1:
            emit(MINTED, agent, {"agent_id": agent, "amount": rng.randint(10, 100)})
        elif r < 0.6:
            emit(SPENT, agent, {"agent_id": agent, "amount": rng.randint(1, balances[agent])})
        else:
            target = names[rng.randrange(count)]
            if target == agent:
                target = names[(names.index(agent) + 1) % count]
            amount = rng.randint(1, balances[agent])
            correlation = uuid.uuid4()
            emit(DEBITED, agent, {"agent_id": agent, "amount": amount, "to": target}, correlation)
            emit(CREDITED, target, {"agent_id": target, "amount": amount, "from": agent}, correlation)
            if position % 997 < 2:
                log.correlations.append(correlation)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    log.final = balances
    if chunk:
        yield chunk


def line(event: EventEnvelope) -> bytes:
    return ENCODER.encode(event) + b"\n"


# The file's lines, parsed by the server: no per-row encoding in Python.
STAGE_SQL = """CREATE UNLOGGED TABLE bench_stage (line jsonb NOT NULL)"""
FROM_STAGE_SQL = """INSERT INTO credit_events (id, event_id, idempotency_key, event_type, schema_version, "timestamp",
    actor_id, correlation_id, causation_id, payload, entity_id, entity_version)
SELECT (line->>'position')::bigint, (line->>'event_id')::uuid, line->>'idempotency_key', line->>'event_type',
       (line->>'schema_version')::int, (line->>'timestamp')::timestamptz, line->>'actor_id',
       (line->>'correlation_id')::uuid, (line->>'causation_id')::uuid, line->'payload', line->>'entity_id',
       (line->>'entity_version')::int
  FROM bench_stage ORDER BY 1"""


async def load(db: str, path: str, n: int, *, agents: int | None = None, cuts: tuple[int, ...] = ()) -> CreditLog:
    """Generate ``n`` events into the JSONL file ``path`` and ``credit_events`` of ``db`` (schema already
    there): the file is COPYed verbatim into an unlogged staging table, turned into rows by one INSERT …
    SELECT with the table's secondary indexes and unique constraints dropped, which are then rebuilt."""
    started = time.perf_counter()
    log, chunks = generate(n, agents=agents, cuts=cuts)
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(b"".join(map(line, chunk)))
    generated = time.perf_counter()
    conn = await asyncpg.connect(url(db))
    try:
        constraints = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                WHERE conrelid = 'credit_events'::regclass AND contype = 'u'""")
        indexes = await conn.fetch(
            """SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
                 FROM pg_index i
                WHERE i.indrelid = 'credit_events'::regclass AND NOT i.indisprimary
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)""")
        for c in constraints:
            await conn.execute(f"ALTER TABLE credit_events DROP CONSTRAINT {c['conname']}")
        for i in indexes:
            await conn.execute(f"DROP INDEX {i['name']}")
        await conn.execute(STAGE_SQL)
        # CSV with quote and delimiter bytes that never occur in a JSON line: each line is taken verbatim.
        await conn.copy_to_table("bench_stage", source=path, format="csv", quote="\x01", delimiter="\x02")
        await conn.execute(FROM_STAGE_SQL)
        await conn.execute("DROP TABLE bench_stage")
        loaded = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for c in constraints:
            await conn.execute(f"ALTER TABLE credit_events ADD CONSTRAINT {c['conname']} {c['def']}")
        for i in indexes:
            await conn.execute(i["def"])
        await conn.execute("SELECT setval(pg_get_serial_sequence('credit_events', 'id'), $1)", n)
        await conn.execute("VACUUM ANALYZE credit_events")
    finally:
        await conn.close()
    print(f"  {n:,} credit events ({len(log.agents)} agents): generated into the file in {generated - started:.1f}s, "
          f"into PostgreSQL in {loaded - generated:.1f}s, indexes + VACUUM ANALYZE {time.perf_counter() - loaded:.1f}s",
          flush=True)
    return log
