"""How the cost of an append, an entity read and the indexes grows with the table: at 1M and
10M events (``--sizes``), the library's append beside a bare prepared INSERT into the same
table, same run (docs/scaling.md).

Why: the path to 10⁹ events (docs/scaling.md) depends on how the unique indexes behave as the
table outgrows memory. The schema is what ``upgrade_schema`` builds, in a fresh database this
script creates and drops.

Loading 10M rows through the indexes takes about an hour here (4k rows/s, random uuids), so each
stage drops the secondary indexes and constraints, loads its rows with ``INSERT … SELECT`` (the
rows of bench_schema.py: 20 skewed types, dense versions per entity, ~150-byte payloads), and
builds them again from their own definitions, then VACUUM ANALYZE. Indexes built in one go are
denser than indexes grown by appends (bench_schema.py measured ``(event_type, id)`` at 77 MiB per
1M rows grown, 44 MiB built fresh), so sizes here are the lower bound.

At each size (sequential, one caller, ``--samples`` each, alternated in blocks of 100):
- ``append``: ``PostgresEventJournal.append`` of an event of a new entity (a later stage's rows
  give the existing ones their next versions), its version found by the database;
- bare: a prepared ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`` of the same
  kind of event into the same ``credit_events``, version 1 given;
- ``read_entity``: the whole stream of a random existing entity (streams are longer at the larger
  size: the same entities get more events, so this row shows stream length as much as table size);
- sizes of the table and each index, bytes per row."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from bench_schema import COLUMNS, LOAD_SQL, PLAN_SQL, TYPES, db_url, sizes
from common import compare, latency_summary, machine_facts, print_table, write_result

from eventstore import EventEnvelope, PostgresEventJournal
from eventstore.envelope import ENCODER
from eventstore.postgres.schema import upgrade_schema

CHUNK = 500_000
BARE_INSERT = f"""INSERT INTO credit_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"""


async def secondary_definitions(owner: asyncpg.Connection) -> tuple[list[tuple[str, str]], list[str]]:
    """(unique constraints as (name, definition), CREATE INDEX statements of the other indexes),
    the primary key excepted."""
    constraints = await owner.fetch(
        """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = 'credit_events'::regclass AND contype = 'u' ORDER BY conname""")
    indexes = await owner.fetch(
        """SELECT pg_get_indexdef(i.indexrelid) FROM pg_index AS i
            WHERE i.indrelid = 'credit_events'::regclass AND NOT i.indisprimary
              AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)""")
    return [(r[0], r[1]) for r in constraints], [r[0] for r in indexes]


async def load_stage(owner: asyncpg.Connection, lo: int, hi: int, start: datetime) -> float:
    constraints, indexes = await secondary_definitions(owner)
    t0 = time.perf_counter()
    for name, _ in constraints:
        await owner.execute(f"ALTER TABLE credit_events DROP CONSTRAINT {name}")
    for statement in indexes:
        await owner.execute(f"DROP INDEX {statement.split()[2]}")
    for a in range(lo, hi, CHUNK):
        await owner.execute(LOAD_SQL, a, min(hi, a + CHUNK), TYPES, start)
        print(f"  loaded {min(hi, a + CHUNK):,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    await owner.execute("SET maintenance_work_mem = '1GB'")
    for name, definition in constraints:
        await owner.execute(f"ALTER TABLE credit_events ADD CONSTRAINT {name} {definition}")
    for statement in indexes:
        await owner.execute(statement)
    print(f"  indexes built ({time.perf_counter() - t0:.0f} s)", flush=True)
    await owner.execute("SELECT setval('credit_events_id_seq', (SELECT max(id) FROM credit_events))")
    await owner.execute("VACUUM ANALYZE credit_events")
    return time.perf_counter() - t0


async def measure(url: str, owner: asyncpg.Connection, size: int, entities: int, samples: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    bare = await asyncpg.connect(url)
    insert = await bare.prepare(BARE_INSERT)
    lib: list[float] = []
    raw: list[float] = []
    reads: list[float] = []
    async with PostgresEventJournal(url, pool_size=2) as journal:
        def new_event(entity: str) -> EventEnvelope:
            return EventEnvelope.new(rnd.choice(TYPES), {"agent_id": entity, "amount": rnd.randrange(100000)},
                                     actor_id="bench", entity_id=entity)

        for block in range(0, samples, 100):
            for _ in range(min(100, samples - block)):
                # A new entity, as the bare INSERT's: a later stage's rows give existing ones their next versions.
                entity = f"lib-{rnd.randrange(10**9)}"
                t0 = time.perf_counter()
                await journal.append(new_event(entity))
                lib.append(time.perf_counter() - t0)
            for _ in range(min(100, samples - block)):
                entity = f"bare-{rnd.randrange(10**9)}"
                e = new_event(entity)
                args = (e.event_id, e.idempotency_key, e.event_type, e.schema_version, e.timestamp, e.actor_id,
                        e.correlation_id, e.causation_id, ENCODER.encode(e.payload).decode(), entity, 1)
                t0 = time.perf_counter()
                await insert.fetchval(*args)
                raw.append(time.perf_counter() - t0)
            for _ in range(min(100, samples - block)):
                entity = f"agent-{rnd.randrange(entities):06d}"
                t0 = time.perf_counter()
                async for _ in journal.read_entity(entity):
                    pass
                reads.append(time.perf_counter() - t0)
    await bare.close()
    table = await sizes(owner, "credit_events")
    return {
        "size": size,
        "append_us": {k: v * 1e6 if k != "n" else v for k, v in latency_summary(lib).items()},
        "bare_insert_us": {k: v * 1e6 if k != "n" else v for k, v in latency_summary(raw).items()},
        "read_entity_us": {k: v * 1e6 if k != "n" else v for k, v in latency_summary(reads).items()},
        "sizes": table,
    }


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    name = f"es_bench_scale_{os.getpid()}_{secrets.token_hex(3)}"
    url = db_url(args.database_url, name)
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    stages: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(upgrade_schema, url)
        owner = await asyncpg.connect(url)
        try:
            top = max(args.sizes)
            entities = args.entities or top // 10
            await owner.execute("SELECT setseed(0.42)")
            await owner.execute("CREATE UNLOGGED TABLE bench_plan (g INTEGER, e INTEGER, v INTEGER, ti INTEGER)")
            t0 = time.perf_counter()
            await owner.execute(PLAN_SQL, top, entities)
            print(f"planned {top:,} rows over {entities:,} entities ({time.perf_counter() - t0:.0f} s)", flush=True)
            start = datetime.now(UTC) - timedelta(milliseconds=100 * (top + 1))
            loaded = 0
            for size in sorted(args.sizes):
                print(f"\nstage {size:,} events", flush=True)
                seconds = await load_stage(owner, loaded, size, start)
                loaded = size
                # Entities present at this size: the plan numbers them by first appearance.
                present = await owner.fetchval("SELECT count(DISTINCT e) FROM bench_plan WHERE g <= $1", size)
                stage = await measure(url, owner, size, present, args.samples, seed=size)
                stage["load_seconds"] = seconds
                stages.append(stage)
                print(f"  append p50 {stage['append_us']['p50']:.0f} µs, bare insert p50 {stage['bare_insert_us']['p50']:.0f} µs, "
                      f"read_entity p50 {stage['read_entity_us']['p50']:.0f} µs, indexes "
                      f"{stage['sizes']['indexes_bytes'] / 2**20:,.0f} MiB, table {stage['sizes']['heap_bytes'] / 2**20:,.0f} MiB", flush=True)
            await owner.execute("DROP TABLE bench_plan")
        finally:
            await owner.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    rows = []
    for s in stages:
        label = f"{s['size'] / 1e6:g}M events"
        rows.append(compare(f"append p50, {label}", s["append_us"]["p50"], "bare INSERT, same table", s["bare_insert_us"]["p50"],
                            "µs", lower_is_better=True))
        rows.append(compare(f"append p99, {label}", s["append_us"]["p99"], "bare INSERT, same table", s["bare_insert_us"]["p99"],
                            "µs", lower_is_better=True))
    first, last = stages[0], stages[-1]
    for key, what in (("append_us", "append p50"), ("bare_insert_us", "bare INSERT p50"), ("read_entity_us", "read_entity p50")):
        rows.append(compare(f"{what}, {last['size'] / 1e6:g}M events", last[key]["p50"], f"at {first['size'] / 1e6:g}M",
                            first[key]["p50"], "µs", lower_is_better=True))
    return rows, {"stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1_000_000, 10_000_000])
    parser.add_argument("--entities", type=int, help="distinct entity ids (default: the largest size / 10)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL") or "postgresql://{}@{}:{}/postgres".format(
        os.environ.get("PGUSER", "postgres"), os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")))
    args = parser.parse_args()
    machine = asyncio.run(machine_facts())
    rows, extra = asyncio.run(run(args))
    print_table(f"Cost by table size ({args.samples} samples each)", rows)
    for s in extra["stages"]:
        print(f"\n{s['size']:,} events: indexes (bytes per row)")
        for index, info in s["sizes"]["indexes"].items():
            print(f"  {index:44} {info['bytes'] / 2**20:9,.0f} MiB {info['bytes'] / s['size']:7.1f}")
        print(f"  {'heap':44} {s['sizes']['heap_bytes'] / 2**20:9,.0f} MiB {s['sizes']['heap_bytes'] / s['size']:7.1f}")
    write_result("scale", rows, {k: v for k, v in vars(args).items() if k != "database_url"}, machine, extra)


if __name__ == "__main__":
    main()
