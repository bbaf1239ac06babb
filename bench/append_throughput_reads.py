"""Concurrent single-append throughput of PostgresEventJournal (1, 8, 32 asyncio writers) versus a
bare asyncpg INSERT ... ON CONFLICT (idempotency_key) DO NOTHING of the same rows on as many
connections, each on a fresh database; plus subscriber lag while 8 writers append.

    python bench/append_throughput_reads.py [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from eventstore import EventEnvelope, PostgresEventJournal
from eventstore.envelope import ENCODER
from eventstore.postgres.schema import upgrade_schema

BARE_SQL = """
INSERT INTO credit_events (event_id, idempotency_key, event_type, schema_version, "timestamp", actor_id,
                           correlation_id, causation_id, payload, entity_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10)
ON CONFLICT (idempotency_key) DO NOTHING
"""


def make_events(n: int) -> list[EventEnvelope]:
    return [EventEnvelope.new("credits.minted", {"amount": i, "note": "bench"}, actor_id="bench") for i in range(n)]


async def fresh_db(admin_url: str, template: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_db(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_writers(writers: int, events: list, append) -> float:
    chunks = [events[i::writers] for i in range(writers)]

    async def worker(chunk):
        for e in chunk:
            await append(e)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in chunks))
    return len(events) / (time.perf_counter() - start)


async def bench_journal(url: str, writers: int, events: list, measure_lag: bool) -> tuple[float, list[float]]:
    lags: list[float] = []
    async with PostgresEventJournal(url, pool_size=writers, max_overflow=0) as journal:
        follower = None
        if measure_lag:
            async with PostgresEventJournal(url, pool_size=1) as sub_journal:
                acked: dict[str, float] = {}

                async def follow():
                    async for e in sub_journal.subscribe():
                        now = time.perf_counter()
                        lags.append(now - acked.get(e.idempotency_key, now))
                        if len(lags) == len(events):
                            return

                follower = asyncio.create_task(follow())
                await asyncio.sleep(0.2)

                async def append(e):
                    ok = await journal.append_event(e)
                    acked[e.idempotency_key] = time.perf_counter()
                    return ok

                rate = await run_writers(writers, events, append)
                await asyncio.wait_for(follower, 120)
                return rate, lags
        return await run_writers(writers, events, journal.append_event), lags


async def bench_bare(url: str, writers: int, events: list) -> float:
    pool = await asyncpg.create_pool(url, min_size=writers, max_size=writers)
    try:
        async def append(e: EventEnvelope):
            async with pool.acquire() as conn:
                await conn.execute(BARE_SQL, e.event_id, e.idempotency_key, e.event_type, e.schema_version,
                                   e.timestamp, e.actor_id, e.correlation_id, e.causation_id,
                                   ENCODER.encode(e.payload).decode(), e.entity_id)

        return await run_writers(writers, events, append)
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--events", type=int, default=6000)
    args = parser.parse_args()
    template = f"es_reads_bench_tpl_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(args.url)
    await conn.execute(f'CREATE DATABASE "{template}"')
    await conn.close()
    tpl_url = args.url.rsplit("/", 1)[0] + "/" + template
    upgrade_schema(tpl_url)
    try:
        print(f"{'writers':>7} {'journal ev/s':>13} {'bare ev/s':>10} {'ratio':>6}")
        for writers in (1, 8, 32):
            events = make_events(args.events if writers > 1 else args.events // 3)
            name = f"{template}_j{writers}"
            rate_j, _ = await bench_journal(await fresh_db(args.url, template, name), writers, events, False)
            await drop_db(args.url, name)
            name = f"{template}_b{writers}"
            rate_b = await bench_bare(await fresh_db(args.url, template, name), writers, events)
            await drop_db(args.url, name)
            print(f"{writers:>7} {rate_j:>13.0f} {rate_b:>10.0f} {rate_j / rate_b:>6.2f}")
        name = f"{template}_lag"
        events = make_events(args.events)
        rate, lags = await bench_journal(await fresh_db(args.url, template, name), 8, events, True)
        await drop_db(args.url, name)
        lags_ms = sorted(x * 1000 for x in lags)
        print(f"subscriber lag with 8 writers ({rate:.0f} ev/s, after append returned): "
              f"p50 {statistics.median(lags_ms):.2f} ms, p99 {lags_ms[int(len(lags_ms) * 0.99)]:.2f} ms, "
              f"max {lags_ms[-1]:.2f} ms")
    finally:
        await drop_db(args.url, template)


if __name__ == "__main__":
    asyncio.run(main())
