"""What a duplicate append (a retry of a stored idempotency key) costs.

PostgreSQL: the same journal instance re-appending keys it stored (idempotency cache hit, no
round trip) vs a fresh instance with ``idempotency_cache_size=0`` (a round trip to the
append function, which returns no row) vs the raw limit: the bare prepared INSERT … ON
CONFLICT (idempotency_key) DO NOTHING of a row already in ``bare_events``.
File: FileEventJournal re-appending stored keys (an in-memory set) for comparison.
``append()`` of a duplicate also looks up where the original is: one more round trip in
PostgreSQL (``locate_keys``), a read of at most one seek block of the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from typing import Any

from common import (
    BARE_INSERT,
    bare_args,
    bare_connection,
    compare,
    create_db,
    drop_db,
    latency_summary,
    machine_facts,
    make_events,
    print_table,
    timed,
    url,
    write_result,
)

from eventstore import FileEventJournal, PostgresEventJournal


async def run(n: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = make_events(n)
    db = await create_db("dup", bare_table=True)
    us: dict[str, dict[str, float]] = {}
    try:
        async with PostgresEventJournal(url(db), pool_size=1, max_overflow=0) as journal:
            for e in events:
                assert await journal.append_event(e)
            hits = await timed([lambda e=e: journal.append_event(e) for e in events])
        async with PostgresEventJournal(url(db), pool_size=1, max_overflow=0, idempotency_cache_size=0) as fresh:
            assert not await fresh.append_event(events[0])  # warm the connection's prepared statement
            trips = await timed([lambda e=e: fresh.append_event(e) for e in events])
        async with PostgresEventJournal(url(db), pool_size=1, max_overflow=0, idempotency_cache_size=0) as locating:
            assert (await locating.append(events[0])).position == 1  # warm both prepared statements
            located = await timed([lambda e=e: locating.append(e) for e in events])
        conn = await bare_connection(db)
        try:
            stmt = await conn.prepare(BARE_INSERT)
            rows = [bare_args(e, i + 1) for i, e in enumerate(events)]
            for r in rows:
                await stmt.fetchrow(*r)
            bare = await timed([lambda r=r: stmt.fetchrow(*r) for r in rows])
        finally:
            await conn.close()
        async with FileEventJournal(os.path.join(temp, "dup.jsonl")) as fj:
            for e in events:
                await fj.append_event(e)
            file_hits = await timed([lambda e=e: fj.append_event(e) for e in events])
            file_located = await timed([lambda e=e: fj.append(e) for e in events])
    finally:
        await drop_db(db)
    for name, samples in (("cache_hit", hits), ("round_trip", trips), ("bare", bare), ("file", file_hits),
                          ("located", located), ("file_located", file_located)):
        us[name] = {q: v * 1e6 if q != "n" else v for q, v in latency_summary(samples).items()}
    rows_out = [
        compare("PG duplicate, cache hit p50", us["cache_hit"]["p50"], "bare duplicate INSERT",
                us["bare"]["p50"], "µs", lower_is_better=True),
        compare("PG duplicate, round trip (cache 0) p50", us["round_trip"]["p50"], "bare duplicate INSERT",
                us["bare"]["p50"], "µs", lower_is_better=True),
        compare("PG duplicate, round trip (cache 0) p99", us["round_trip"]["p99"], "bare duplicate INSERT",
                us["bare"]["p99"], "µs", lower_is_better=True),
        compare("PG duplicate, cache hit p50", us["cache_hit"]["p50"], "journal round trip",
                us["round_trip"]["p50"], "µs", lower_is_better=True),
        compare("File duplicate (in-memory index) p50", us["file"]["p50"], "PG cache hit",
                us["cache_hit"]["p50"], "µs", lower_is_better=True),
        # append() of a duplicate also finds where the original is: one more round trip in PostgreSQL.
        compare("PG duplicate via append(), located (cache 0) p50", us["located"]["p50"], "append_event round trip",
                us["round_trip"]["p50"], "µs", lower_is_better=True),
        compare("File duplicate via append(), located p50", us["file_located"]["p50"], "append_event (index only)",
                us["file"]["p50"], "µs", lower_is_better=True),
    ]
    return rows_out, {"latency_us": us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(args.events, temp))
    print_table(f"Duplicate appends, {args.events} stored keys re-appended", rows)
    write_result("duplicates", rows, {"events": args.events}, machine, extra)


if __name__ == "__main__":
    main()
