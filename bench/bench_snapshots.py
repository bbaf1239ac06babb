"""Snapshot + delta vs full replay of the credit balances projection, both backends, N events (1M in full).

The log is bench/credit_log.py's credit system (agents, mints, spends, transfers), loaded into
PostgreSQL and a JSONL file journal. The projection is ``eventstore.credits.BALANCES`` (agent ->
credits) folded by ``eventstore.projections.project``. Full replay: ``project(…, use_snapshot=False)``,
every event read, decoded into an envelope and folded. Snapshot + delta: a snapshot of the balances as
of position N - D (computed while generating the log, saved with ``save_snapshot`` under its own name
per D), then ``project(…)``: load the snapshot, replay the D events after it. D = 1k, 10k, 100k shows
what the cost depends on: the delta (linear, at the replay rate) plus a fixed part (loading and
converting the snapshot, the first page). Each result is checked against the balances of the whole log.
Full replays keep the faster of ``--rounds`` runs, snapshot runs the median of ``--reps``; the ratio is
snapshot + delta / full replay (the seed claims 100× faster, i.e. <= 0.01).
A restart also opens the journal: PostgresEventJournal.initialize is a connection and a count; the
file journal's open scans the whole file to rebuild its indexes, so for the file backend the restart
figures (open + projection) are shown as well.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any

import credit_log
from common import compare, create_db, drop_db, machine_facts, print_table, url, write_result

from eventstore import FileEventJournal, PostgresEventJournal
from eventstore.credits import BALANCES
from eventstore.projections import project


async def measure(journal: Any, log: credit_log.CreditLog, deltas: list[int], rounds: int,
                  reps: int) -> dict[str, Any]:
    full = []
    for _ in range(rounds):
        result = await project(journal, BALANCES, use_snapshot=False)
        assert result.state == log.final and result.events_applied == log.events, "full replay disagrees"
        full.append(result.seconds)
    out: dict[str, Any] = {"full_seconds": min(full), "full_runs": full, "delta": {}}
    for d in deltas:
        position, state = log.cuts[log.events - d]
        projection = dataclasses.replace(BALANCES, name=f"balances-bench-d{d}")
        await journal.save_snapshot(projection.name, position, state)
        runs = []
        for _ in range(reps):
            result = await project(journal, projection)
            assert result.state == log.final and result.snapshot_position == position, "snapshot path disagrees"
            assert result.events_applied == log.events - position
            runs.append(result.seconds)
        out["delta"][d] = {"seconds": statistics.median(runs), "runs": runs, "events_applied": log.events - position}
    return out


async def run(n: int, deltas: list[int], rounds: int, reps: int, temp: str) -> tuple[list[dict[str, Any]], dict]:
    path = os.path.join(temp, "snapshots.jsonl")
    db = await create_db("snap")
    clock = time.perf_counter
    results: dict[str, dict[str, Any]] = {}
    try:
        log = await credit_log.load(db, path, n, cuts=tuple(n - d for d in deltas))
        t = clock()
        async with PostgresEventJournal(url(db), pool_size=2, max_overflow=0) as journal:
            opened = clock() - t
            results["pg"] = await measure(journal, log, deltas, rounds, reps)
            results["pg"]["open_seconds"] = opened
    finally:
        await drop_db(db)
    t = clock()
    async with FileEventJournal(path) as journal:
        opened = clock() - t
        results["file"] = await measure(journal, log, deltas, rounds, reps)
        results["file"]["open_seconds"] = opened
    for backend, r in results.items():
        print(f"  {backend}: open {r['open_seconds']:.2f}s, full replay {r['full_seconds']:.2f}s "
              f"({n / r['full_seconds']:,.0f} events/s); " + ", ".join(
                  f"snapshot + {d:,}: {v['seconds'] * 1000:.1f} ms" for d, v in r["delta"].items()), flush=True)
    rows = []
    names = {"pg": "PG", "file": "file"}
    for backend, r in results.items():
        for d, v in r["delta"].items():
            rows.append(compare(f"{names[backend]} snapshot + {d:,}-event delta", v["seconds"] * 1000,
                                f"full replay of {n:,}", r["full_seconds"] * 1000, "ms",
                                target="<= 0.01" if d == min(deltas) else None, lower_is_better=True))
    r, d = results["file"], min(deltas)
    rows.append(compare(f"file restart: open + snapshot + {d:,}-event delta",
                        (r["open_seconds"] + r["delta"][d]["seconds"]) * 1000,
                        "open + full replay", (r["open_seconds"] + r["full_seconds"]) * 1000, "ms",
                        lower_is_better=True))
    return rows, {"backends": results, "agents": len(log.agents)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--deltas", default="1000,10000,100000", help="events after the snapshot")
    parser.add_argument("--rounds", type=int, default=1, help="full replays per backend (the faster one counts)")
    parser.add_argument("--reps", type=int, default=5, help="snapshot + delta runs per delta (the median counts)")
    args = parser.parse_args()
    deltas = sorted(d for d in (int(x) for x in args.deltas.split(",")) if 0 < d < args.events)
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(args.events, deltas, args.rounds, args.reps, temp))
    print_table(f"Snapshot + delta vs full replay, balances projection, {args.events:,} events", rows)
    write_result("snapshots", rows, {"events": args.events, "deltas": deltas, "rounds": args.rounds,
                                     "reps": args.reps}, machine, extra)


if __name__ == "__main__":
    main()
