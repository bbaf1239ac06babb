"""Read and query latency on a credit log of N events (1M in the full run), each call beside the same SQL bare.

The log is bench/credit_log.py's (agents created, then mints, spends and two-event transfers; about 500
events per agent), COPYed into ``credit_events`` with the journal's indexes rebuilt and ANALYZEd. Calls:
``read_entity(agent, since=, until=)`` over a window of a tenth of the log (the agent's events in it);
``query_events(event_type=…)`` for a common type (``credits.minted``, first page: ``limit`` = the
journal's page size of 1000) and a rare one (``agent.created``, every one of them, several pages);
``query_events(payload_contains={"agent_id": …})`` (all of one agent's events, GIN index);
``query_events(correlation_id=…)`` (a transfer's two events). Parameters rotate from call to call.
PostgreSQL: PostgresEventJournal (one pooled connection, fully decoded envelopes) vs the raw limit:
the same SQL text the journal sends (``sql/queries.sql``), prepared once on a bare asyncpg connection and
fetched with the same parameters and the same keyset paging, jsonb left as bytes (no decoding, no
envelope). Up to ``--samples`` calls per kind within ``--budget`` seconds. The journal's statements are prepared and cached by asyncpg, so after five executions
PostgreSQL may switch them to a generic plan, which for these optional-filter queries can be far
slower than a plan for the actual values. So there are two raw limits: the bare fetch on a connection
with ``plan_cache_mode = force_custom_plan`` (p50 and p99 rows), and the bare fetch with the default
plan cache (a p50 row). For the cheap index lookups the cached plan wins (no planning per call); for
the type and containment queries the custom plan wins by far: the faster of the two is the limit. Journal and bare calls alternate; p50 and p99 of the
whole answer in ms.
File: FileEventJournal (read_only, opened once) has no indexes, so every call is a scan of the file
(a ``limit`` stops it early) vs a bare loop of msgspec ``Decoder(EventEnvelope).decode`` over the same
file testing the same condition on each decoded envelope (stopping at the same limit); ms per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import asyncpg
import credit_log
from common import (
    bare_connection,
    compare,
    create_db,
    drop_db,
    latency_summary,
    machine_facts,
    print_table,
    url,
    write_result,
)

from eventstore import FileEventJournal, PostgresEventJournal
from eventstore.envelope import ENCODER, ENVELOPE_DECODER, EventEnvelope
from eventstore.postgres.queries import QUERIES

PAGE = 1000  # PostgresEventJournal's default page_size
WARMUP = 6  # calls per kind before sampling: past the fifth execution, where a generic plan may take over
COMMON_TYPE, RARE_TYPE = "credits.minted", "agent.created"
# The bare side reads a table no one writes during the run: no fence, every row (the journal takes its fence once per call).
HIGH_WATER, MAX_VERSION = 2**63 - 1, 2**31 - 1


class Call:
    """One kind of call: how the journal makes it, the bare statement and keyset paging that returns the same
    rows, and the condition a bare file scan tests."""

    def __init__(self, name: str, params: list[Any], journal: Callable[[Any, Any], AsyncIterator[EventEnvelope]],
                 sql: str, args: Callable[[Any, int], tuple[Any, ...]], key: int, limit: int | None,
                 match: Callable[[Any, EventEnvelope], bool]) -> None:
        self.name, self.params, self.journal, self.sql, self.args = name, params, journal, sql, args
        self.key, self.limit, self.match = key, limit, match


def calls(log: credit_log.CreditLog) -> list[Call]:
    n = log.events
    agents = log.agents[:: max(1, len(log.agents) // 50)]
    windows = [(a, log.timestamp(int(n * f)), log.timestamp(int(n * (f + 0.1))))
               for a, f in zip(agents, [k / 20 % 0.9 for k in range(len(agents))], strict=True)]

    def in_window(p: tuple[str, datetime, datetime], e: EventEnvelope) -> bool:
        return e.entity_id == p[0] and p[1] <= e.timestamp < p[2]

    return [
        Call("read_entity(agent, since, until) [10% window, all]", windows,
             lambda j, p: j.read_entity(p[0], since=p[1], until=p[2]),
             QUERIES.read_entity_range_page.sql, lambda p, after: (p[0], p[1], p[2], after, MAX_VERSION, PAGE), 11, None, in_window),
        Call(f"query_events(event_type={COMMON_TYPE!r}, limit={PAGE}) [first page]", [COMMON_TYPE],
             lambda j, p: j.query_events(event_type=p, limit=PAGE),
             QUERIES.query_by_type_page.sql, lambda p, after: (p, after, HIGH_WATER, None, None, PAGE), 0, PAGE,
             lambda p, e: e.event_type == p),
        Call(f"query_events(event_type={RARE_TYPE!r}) [all]", [RARE_TYPE],
             lambda j, p: j.query_events(event_type=p),
             QUERIES.query_by_type_page.sql, lambda p, after: (p, after, HIGH_WATER, None, None, PAGE), 0, None,
             lambda p, e: e.event_type == p),
        Call("query_events(payload_contains={agent_id}) [all]", agents,
             lambda j, p: j.query_events(payload_contains={"agent_id": p}),
             QUERIES.query_by_payload_page.sql, lambda p, after: (ENCODER.encode({"agent_id": p}), after, HIGH_WATER, None, None, None, PAGE),
             0, None, lambda p, e: e.payload.get("agent_id") == p),
        Call("query_events(correlation_id) [all]", log.correlations[:: max(1, len(log.correlations) // 50)],
             lambda j, p: j.query_events(correlation_id=p),
             QUERIES.query_by_correlation_page.sql, lambda p, after: (p, after, HIGH_WATER, None, None, None, None, PAGE), 0, None,
             lambda p, e: e.correlation_id == p),
    ]


async def through_journal(call: Call, journal: Any, param: Any) -> int:
    count = 0
    async for _ in call.journal(journal, param):
        count += 1
    return count


async def bare_fetch(call: Call, stmt: Any, param: Any) -> int:
    """The journal's paging, by hand: fetch pages until one comes back short (or the limit is reached)."""
    count, after = 0, 0
    while True:
        rows = await stmt.fetch(*call.args(param, after))
        count += len(rows)
        if len(rows) < PAGE or (call.limit is not None and count >= call.limit):
            return count
        after = rows[-1][call.key]


def bare_scan(path: str, call: Call, param: Any) -> int:
    """The best plain scan: 1 MiB chunks, msgspec decode of each line, the condition, stop at the limit."""
    found, rest, decode, match, limit = 0, b"", ENVELOPE_DECODER.decode, call.match, call.limit
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if match(param, decode(line)):
                    found += 1
                    if found == limit:
                        return found
    return found


async def run_pg(db: str, kinds: list[Call], samples: int, budget: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    conn = await bare_connection(db)
    custom = await asyncpg.connect(url(db), server_settings={"plan_cache_mode": "force_custom_plan"})
    await custom.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda b: b"\x01" + b, decoder=lambda b: b[1:],
                                format="binary")
    try:
        async with PostgresEventJournal(url(db), pool_size=1, max_overflow=0) as journal:
            clock = time.perf_counter
            for call in kinds:
                stmt, custom_stmt = await conn.prepare(call.sql), await custom.prepare(call.sql)
                ms: dict[str, list[float]] = {"journal": [], "bare": [], "bare_custom": []}
                rows: list[int] = []
                deadline = clock() + budget  # warm-up included
                for i in range(samples + WARMUP):
                    if i >= WARMUP + 3 and clock() > deadline:
                        break  # slow plans: fewer samples, at least 3 (their count is in the result)
                    param = call.params[i % len(call.params)]
                    t0 = clock()
                    got = await through_journal(call, journal, param)
                    t1 = clock()
                    bare = await bare_fetch(call, stmt, param)
                    t2 = clock()
                    best = await bare_fetch(call, custom_stmt, param)
                    t3 = clock()
                    assert got == bare == best, (call.name, param, got, bare, best)
                    if i >= WARMUP:
                        for k, v in zip(ms, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                            ms[k].append(v * 1000)
                        rows.append(got)
                out[call.name] = {f"{k}_ms": latency_summary(v) for k, v in ms.items()}
                out[call.name]["rows_mean"] = sum(rows) / len(rows)
                print(f"  PG {call.name}: p50 journal {out[call.name]['journal_ms']['p50']:.2f} ms, bare "
                      f"{out[call.name]['bare_ms']['p50']:.2f} ms, bare custom plans "
                      f"{out[call.name]['bare_custom_ms']['p50']:.2f} ms; {out[call.name]['rows_mean']:.0f} rows, "
                      f"{len(rows)} samples",
                      flush=True)
    finally:
        await conn.close()
        await custom.close()
    return out


async def run_file(path: str, kinds: list[Call], scans: int) -> tuple[float, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, Any]] = {}
    clock = time.perf_counter
    journal = FileEventJournal(path, read_only=True)
    t = clock()
    await journal.initialize()
    open_seconds = clock() - t
    try:
        for call in kinds:
            reps = scans if call.limit is None else max(scans, 5)  # an early-stopping scan is cheap: sample more
            j_ms: list[float] = []
            b_ms: list[float] = []
            for i in range(reps):
                param = call.params[i % len(call.params)]
                t0 = clock()
                got = await through_journal(call, journal, param)
                t1 = clock()
                bare = await asyncio.to_thread(bare_scan, path, call, param)
                t2 = clock()
                assert got == bare, (call.name, param, got, bare)
                j_ms.append((t1 - t0) * 1000)
                b_ms.append((t2 - t1) * 1000)
            out[call.name] = {"journal_ms": latency_summary(j_ms), "bare_ms": latency_summary(b_ms), "calls": reps}
            print(f"  file {call.name}: journal {out[call.name]['journal_ms']['p50']:.0f} ms, bare scan "
                  f"{out[call.name]['bare_ms']['p50']:.0f} ms", flush=True)
    finally:
        await journal.close()
    return open_seconds, out


async def run(n: int, samples: int, budget: float, scans: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = os.path.join(temp, "queries.jsonl")
    db = await create_db("queries")
    try:
        log = await credit_log.load(db, path, n)
        kinds = calls(log)
        pg = await run_pg(db, kinds, samples, budget)
    finally:
        await drop_db(db)
    open_seconds, file = await run_file(path, kinds, scans)
    rows = []
    for call in kinds:
        for q in ("p50", "p99"):
            rows.append(compare(f"PG {call.name} {q}", pg[call.name]["journal_ms"][q], "same SQL bare, custom plans",
                                pg[call.name]["bare_custom_ms"][q], "ms", lower_is_better=True))
        rows.append(compare(f"PG {call.name} p50", pg[call.name]["journal_ms"]["p50"], "same SQL bare, plan cache on",
                            pg[call.name]["bare_ms"]["p50"], "ms", lower_is_better=True))
    for call in kinds:
        rows.append(compare(f"file {call.name} (a scan) p50", file[call.name]["journal_ms"]["p50"],
                            "bare msgspec decode+filter scan", file[call.name]["bare_ms"]["p50"], "ms",
                            lower_is_better=True))
    return rows, {"pg": pg, "file": file, "file_open_seconds": open_seconds,
                  "agents": len(log.agents), "correlations_sampled": len(kinds[-1].params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100, help="PostgreSQL calls per kind (each: journal + bare)")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds of PostgreSQL sampling per kind at most (slow plans get fewer samples)")
    parser.add_argument("--file-scans", type=int, default=1, help="file calls per kind that scan the whole file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(args.events, args.samples, args.budget, args.file_scans, temp))
    print_table(f"Read/query latency on {args.events:,} events", rows)
    write_result("queries", rows, {"events": args.events, "samples": args.samples, "budget_s": args.budget,
                                   "file_scans": args.file_scans,
                                   "page": PAGE}, machine, extra)


if __name__ == "__main__":
    main()
