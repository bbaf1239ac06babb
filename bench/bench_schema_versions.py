"""What a schema change costs an append: the same journal on the latest schema beside the schema
as of an earlier migration (default 0007, before the DBA hardening of 0008-0010: pinned
search_path, the 64-bit lock step, SECURITY DEFINER appends), in one run.

Single appends (``append_event``, one caller, ``--events`` each) and 8-caller throughput, the two
databases interleaved event by event so drift in the machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import nullcontext
from pathlib import Path
from unittest.mock import AsyncMock, patch

from common import (
    compare,
    create_db,
    drop_db,
    latency_summary,
    machine_facts,
    make_events,
    print_table,
    url,
    write_result,
)
from yoyo import get_backend, read_migrations

from eventstore import PostgresEventJournal

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
WARMUP = 100


def apply_up_to(database_url: str, last: str) -> None:
    backend = get_backend(database_url.replace("postgresql://", "postgresql+psycopg://", 1) + "?schema=public")
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id <= last)))


async def throughput(journal: PostgresEventJournal, events: list, callers: int) -> float:
    queue = iter(events)

    async def caller() -> None:
        for event in queue:
            await journal.append_event(event)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(events) / (time.perf_counter() - started)


async def run(n: int, before: str) -> list[dict]:
    latest_db = await create_db("schema_latest")
    before_db = await create_db("schema_before", schema=False)
    try:
        await asyncio.to_thread(apply_up_to, url(before_db), before)
        # The earlier schema cannot be opened by this package (it checks for every migration),
        # so the journal is told the check passed: the statements it sends exist in both.
        journals = {}
        for name, db in (("latest", latest_db), ("before", before_db)):
            journal = PostgresEventJournal(url(db), pool_size=8, max_overflow=0)
            checked = nullcontext() if name == "latest" else patch(
                "eventstore.postgres.journal.require_current_schema", new=AsyncMock())
            with checked:
                await journal.initialize()
            journals[name] = journal
        samples: dict[str, list[float]] = {"latest": [], "before": []}
        events = {name: make_events(n + WARMUP, prefix=name) for name in journals}
        clock = time.perf_counter
        for i in range(n + WARMUP):
            for name in (("latest", "before") if i % 2 else ("before", "latest")):
                t0 = clock()
                await journals[name].append_event(events[name][i])
                if i >= WARMUP:
                    samples[name].append(clock() - t0)
        rates = {}
        for name in ("before", "latest", "before", "latest"):  # twice each, alternating: keep the best
            rate = await throughput(journals[name], make_events(n, prefix=f"{name}-t{time.monotonic_ns()}"), 8)
            rates[name] = max(rates.get(name, 0.0), rate)
        for journal in journals.values():
            await journal.close()
    finally:
        await drop_db(latest_db)
        await drop_db(before_db)
    latest, earlier = latency_summary(samples["latest"]), latency_summary(samples["before"])
    return [
        compare("append_event p50, latest schema", latest["p50"] * 1e6, f"schema at {before}", earlier["p50"] * 1e6, "µs",
                lower_is_better=True),
        compare("append_event p99, latest schema", latest["p99"] * 1e6, f"schema at {before}", earlier["p99"] * 1e6, "µs",
                lower_is_better=True),
        compare("appends/s, 8 callers, latest schema", rates["latest"], f"schema at {before}", rates["before"], "events/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--before", default="0007_fence_waits_for_writers", help="the earlier schema's last migration")
    parser.add_argument("--no-write", action="store_true", help="print only; no file in bench/results/")
    args = parser.parse_args()
    rows = asyncio.run(run(args.events, args.before))
    print_table(f"append cost of the schema: latest vs {args.before} ({args.events} events each)", rows)
    if not args.no_write:
        write_result("schema-versions", rows, {"events": args.events, "before": args.before}, asyncio.run(machine_facts()))


if __name__ == "__main__":
    main()
