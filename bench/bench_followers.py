"""What a fenced position-order read costs: ``read_events(after=head)`` and ``last_position()`` on
an idle journal and while 8 journals (separate pools) append, against the unfenced keyset page a
follower used to send (a bare prepared ``SELECT … WHERE id > $1 ORDER BY id LIMIT 1000``).
The fence is what makes a follower paging by position miss nothing (docs/ordering.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from common import (
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

from eventstore import PostgresEventJournal

UNFENCED_PAGE = "SELECT id, payload FROM credit_events WHERE id > $1 ORDER BY id LIMIT 1000"


async def measure(journal: PostgresEventJournal, n: int) -> dict[str, list[float]]:
    async def head_read() -> None:
        after = await journal.last_position()
        t0 = time.perf_counter()
        async for _ in journal.read_events(after=after):
            pass
        head_reads.append(time.perf_counter() - t0)

    head_reads: list[float] = []
    async with journal.connections.acquire() as conn:
        stmt = await conn.prepare(UNFENCED_PAGE)
        last = await conn.fetchval("SELECT coalesce(max(id), 0) FROM credit_events")

        async def unfenced() -> None:
            await stmt.fetch(last)

        bare = await timed([unfenced] * n)
    lp = await timed([journal.last_position] * n)
    for _ in range(n):
        await head_read()
    return {"read_events_at_head": head_reads, "last_position": lp, "unfenced_page": bare}


async def run(n: int, writers: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    db = await create_db("followers")
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        async with PostgresEventJournal(url(db), pool_size=2) as journal:
            for e in make_events(2000):
                await journal.append_event(e)
            await journal.read_events(after=0).__anext__()  # warm the statements
            results["idle"] = {k: _us(v) for k, v in (await measure(journal, n)).items()}

            stop = asyncio.Event()
            appended = 0

            async def writer(k: int) -> None:
                nonlocal appended
                async with PostgresEventJournal(url(db), pool_size=2, max_overflow=0) as own:
                    while not stop.is_set():
                        await own.append_event(make_events(1, prefix=f"w{k}-{appended}")[0])
                        appended += 1

            tasks = [asyncio.create_task(writer(k)) for k in range(writers)]
            await asyncio.sleep(0.5)
            started, t0 = appended, time.perf_counter()
            busy = await measure(journal, n)
            rate = (appended - started) / (time.perf_counter() - t0)
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
            results["writers"] = {k: _us(v) for k, v in busy.items()}
    finally:
        await drop_db(db)
    idle, busy_us = results["idle"], results["writers"]
    rows = [
        compare("read_events(after=head), idle, p50", idle["read_events_at_head"]["p50"],
                "unfenced keyset page", idle["unfenced_page"]["p50"], "µs", lower_is_better=True),
        compare("last_position(), idle, p50", idle["last_position"]["p50"],
                "unfenced keyset page", idle["unfenced_page"]["p50"], "µs", lower_is_better=True),
        compare(f"read_events(after=head), {writers} writers, p50", busy_us["read_events_at_head"]["p50"],
                "unfenced keyset page", busy_us["unfenced_page"]["p50"], "µs", lower_is_better=True),
        compare(f"read_events(after=head), {writers} writers, p99", busy_us["read_events_at_head"]["p99"],
                "unfenced keyset page", busy_us["unfenced_page"]["p99"], "µs", lower_is_better=True),
        compare(f"last_position(), {writers} writers, p50", busy_us["last_position"]["p50"],
                "unfenced keyset page", busy_us["unfenced_page"]["p50"], "µs", lower_is_better=True),
    ]
    return rows, {"latency_us": results, "writers": writers, "append_rate_during": round(rate)}


def _us(samples: list[float]) -> dict[str, float]:
    return {q: v * 1e6 if q != "n" else v for q, v in latency_summary(samples).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    machine = asyncio.run(machine_facts())
    rows, extra = asyncio.run(run(args.samples, args.writers))
    print_table(f"Fenced reads at the head, {args.samples} samples each (append rate meanwhile: {extra['append_rate_during']}/s)", rows)
    write_result("followers", rows, {"samples": args.samples, "writers": args.writers}, machine, extra)


if __name__ == "__main__":
    main()
