"""Where a PostgreSQL append's time goes: the journal's layers measured one by one, interleaved.

Not part of run_all: run it when the append-latency ratio misses its target.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import BARE_INSERT, bare_args, bare_connection, create_db, drop_db, latency_summary, make_events, url

from eventstore import PostgresEventJournal
from eventstore.envelope import validate_event
from eventstore.postgres.queries import QUERIES

DIRECT_INSERT = BARE_INSERT.replace("bare_events", "credit_events")  # same row, through the xid trigger


async def run(n: int) -> None:
    db = await create_db("diag", bare_table=True)
    try:
        journal = PostgresEventJournal(url(db), pool_size=1, max_overflow=1)
        await journal.initialize()
        conn = await bare_connection(db)
        bare = await conn.prepare(BARE_INSERT)
        func = await conn.prepare(QUERIES.append_event.sql)
        direct = await conn.prepare(DIRECT_INSERT)
        events = [make_events(n, prefix=p) for p in ("j", "f", "d", "b")]
        s: dict[str, list[float]] = {k: [] for k in ("journal", "function", "direct", "bare", "validate", "acquire")}
        clock = time.perf_counter
        pool = journal.connections.pool
        assert pool is not None
        for i in range(n):
            version = i // 100 + 1
            t0 = clock()
            await journal.append_event(events[0][i])
            t1 = clock()
            e = events[1][i]
            await func.fetchrow(e.event_id, e.idempotency_key, e.event_type, e.schema_version, e.timestamp, e.actor_id,
                                e.correlation_id, e.causation_id, bare_args(e, None)[8], e.entity_id, None)
            t2 = clock()
            await direct.fetchrow(*bare_args(events[2][i], version))
            t3 = clock()
            await bare.fetchrow(*bare_args(events[3][i], version))
            t4 = clock()
            validate_event(events[3][i])
            t5 = clock()
            async with pool.acquire():
                pass
            t6 = clock()
            for k, v in zip(s, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                s[k].append(v)
        labels = {"journal": "PostgresEventJournal.append_event", "function": "credit_events_append() on a bare conn",
                  "direct": "bare INSERT into credit_events (xid trigger)", "bare": "bare INSERT into bare_events",
                  "validate": "validate_event() alone", "acquire": "pool.acquire()+release alone"}
        for k, label in labels.items():
            q = latency_summary(s[k][100:])
            print(f"{label:48} p50 {q['p50'] * 1e6:8.1f} µs   p99 {q['p99'] * 1e6:8.1f} µs")
        await conn.close()
        await journal.close()
    finally:
        await drop_db(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(run(parser.parse_args().events))


if __name__ == "__main__":
    main()
