"""Concurrent single appends per second with 1, 8, 32 and 128 writers: tasks in one process, and processes.

PostgreSQL: PostgresEventJournal (pool of min(W, 32) connections; group commit sends the
appends) vs W bare asyncpg connections, each running the prepared INSERT … ON CONFLICT
(idempotency_key) DO NOTHING of the same rows. The server allows 100 connections, so past 64
writers the bare writers share 64 connections (each INSERT takes a free one).
The same in W separate processes, up to 32 (spawned once per W, synchronised by a barrier; each
with one journal of one connection, or one bare connection; rate = all events / first start to
last end); 128 processes would need 128 connections.
Peer: the eventsourcing library's PostgresApplicationRecorder (gap-free by locking the table) in
W threads with a pool of min(W, 64) connections, one event per insert_events call, each thread its
own originator, a quarter of the events (it is the slowest).
File: FileEventJournal (group commit) vs one os.write + os.fdatasync per event from W threads
(kernel-side coalescing of concurrent fdatasyncs counts for the baseline), plus the ceiling
of group commit: W lines per write + one fdatasync, back to back.
Each writer owns one entity stream, so no run waits on another writer's entity lock.
Variants alternate for ``--rounds`` rounds; each keeps its best round.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import (
    BARE_INSERT,
    ENCODER,
    PGHOST,
    PGPORT,
    PGUSER,
    bare_args,
    bare_connection,
    compare,
    create_db,
    drop_db,
    file_line,
    machine_facts,
    make_events,
    print_table,
    url,
    write_result,
)

from eventstore import FileEventJournal, PostgresEventJournal


def split(n: int, writers: int, tag: str) -> list[list[Any]]:
    """``writers`` lists of events; writer k owns entity ``{tag}-k`` (its versions count 1, 2, …)."""
    events = make_events(n - n % writers, entities=writers, prefix=tag)
    return [events[k::writers] for k in range(writers)]


#: The most connections a variant opens: the server's max_connections is 100 here.
BARE_CONNECTIONS = 64
JOURNAL_POOL = 32
MAX_PROCESSES = 32


async def pg_journal(db: str, writers: int, n: int, tag: str) -> float:
    journal = PostgresEventJournal(url(db), pool_size=min(writers, JOURNAL_POOL), max_overflow=0)
    async with journal:
        async def writer(events: list[Any]) -> None:
            for event in events:
                await journal.append_event(event)

        await asyncio.gather(*(writer(p) for p in split(writers * 5, writers, tag + "w")))  # warm-up
        parts = split(n, writers, tag)
        start = time.perf_counter()
        await asyncio.gather(*(writer(p) for p in parts))
        return sum(map(len, parts)) / (time.perf_counter() - start)


async def pg_bare(db: str, writers: int, n: int, tag: str) -> float:
    conns = [await bare_connection(db) for _ in range(min(writers, BARE_CONNECTIONS))]
    try:
        stmts = [await c.prepare(BARE_INSERT) for c in conns]
        free: asyncio.Queue[Any] = asyncio.Queue()
        for stmt in stmts:
            free.put_nowait(stmt)

        async def writer(k: int, events: list[Any]) -> None:
            own = stmts[k] if writers <= len(stmts) else None  # a connection per writer while there are enough
            for version, event in enumerate(events, 1):
                if own is not None:
                    await own.fetchrow(*bare_args(event, version))
                    continue
                stmt = await free.get()
                try:
                    await stmt.fetchrow(*bare_args(event, version))
                finally:
                    free.put_nowait(stmt)

        await asyncio.gather(*(writer(k, p) for k, p in enumerate(split(writers * 5, writers, tag + "w"))))
        parts = split(n, writers, tag)
        start = time.perf_counter()
        await asyncio.gather(*(writer(k, p) for k, p in enumerate(parts)))
        return sum(map(len, parts)) / (time.perf_counter() - start)
    finally:
        for c in conns:
            await c.close()


def peer_threads(db: str, writers: int, n: int, tag: str) -> float | None:
    """eventsourcing's PostgreSQL application recorder from ``writers`` threads, or None if not installed."""
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError:
        return None
    datastore = PostgresDatastore(db, PGHOST, PGPORT, PGUSER, "", pool_size=min(writers, BARE_CONNECTIONS),
                                  max_overflow=0)
    try:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
        recorder.create_table()

        def writer(events: list[Any]) -> None:
            originator = uuid.uuid4()
            for version, event in enumerate(events, 1):
                recorder.insert_events([StoredEvent(originator, version, event.event_type,
                                                    ENCODER.encode(event.payload))])

        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(writer, split(writers * 2, writers, tag + "w")))  # warm-up: opens the pool's connections
            parts = split(n, writers, tag)
            start = time.perf_counter()
            list(pool.map(writer, parts))
            return sum(map(len, parts)) / (time.perf_counter() - start)
    finally:
        datastore.close()


async def _process_writer(db: str, k: int, writers: int, n: int, rounds: int, barrier: Any, results: Any) -> None:
    """One writer process: per round, the journal and the bare INSERT (alternating which goes first), each
    started at the barrier."""
    for r in range(rounds):
        for variant in ("pg_proc", "pg_bare_proc")[:: 1 if r % 2 == 0 else -1]:  # which goes first alternates
            events = make_events(n // writers + 5, entities=1, prefix=f"p{writers}r{r}{variant}{k}")
            if variant == "pg_proc":
                journal = PostgresEventJournal(url(db), pool_size=1, max_overflow=0)
                await journal.initialize()
                for event in events[:5]:  # warm-up: connection, prepared statement
                    await journal.append_event(event)
                barrier.wait()
                start = time.monotonic()
                for event in events[5:]:
                    await journal.append_event(event)
                end = time.monotonic()
                await journal.close()
            else:
                conn = await bare_connection(db)
                stmt = await conn.prepare(BARE_INSERT)
                for version, event in enumerate(events[:5], 1):
                    await stmt.fetchrow(*bare_args(event, version))
                barrier.wait()
                start = time.monotonic()
                for version, event in enumerate(events[5:], 6):  # encoding the row is part of the work
                    await stmt.fetchrow(*bare_args(event, version))
                end = time.monotonic()
                await conn.close()
            results.put((variant, r, start, end, len(events) - 5))
            barrier.wait()


def _process_main(*args: Any) -> None:
    asyncio.run(_process_writer(*args))


def pg_processes(db: str, writers: int, n: int, rounds: int) -> dict[tuple[str, int], float]:
    """Rates of the journal and of bare INSERTs in ``writers`` separate processes, per round."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no event loop inherited
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(db, k, writers, n, rounds, barrier, results))
             for k in range(writers)]
    for p in procs:
        p.start()
    spans: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    try:
        for _ in range(writers * rounds * 2):
            variant, r, start, end, count = results.get(timeout=600)
            spans.setdefault((variant, r), []).append((start, end, count))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return {key: sum(c for _, _, c in v) / (max(e for _, e, _ in v) - min(s for s, _, _ in v))
            for key, v in spans.items()}


async def file_journal(path: str, writers: int, n: int, tag: str) -> float:
    async with FileEventJournal(path) as journal:
        async def writer(events: list[Any]) -> None:
            for event in events:
                await journal.append_event(event)

        parts = split(n, writers, tag)
        start = time.perf_counter()
        await asyncio.gather(*(writer(p) for p in parts))
        return sum(map(len, parts)) / (time.perf_counter() - start)


def file_fsync_each(path: str, writers: int, n: int, tag: str) -> float:
    parts = split(n, writers, tag)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def writer(own: list[Any]) -> None:
        for version, event in enumerate(own, 1):  # encoding the line is part of the work, as in the journal
            os.write(fd, file_line(event, 0, version))
            os.fdatasync(fd)

    try:
        with ThreadPoolExecutor(writers) as pool:
            start = time.perf_counter()
            list(pool.map(writer, parts))
            return sum(map(len, parts)) / (time.perf_counter() - start)
    finally:
        os.close(fd)


def file_group_ceiling(path: str, writers: int, n: int, tag: str) -> float:
    events = make_events(n, entities=writers, prefix=tag)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = time.perf_counter()
        for i in range(0, len(events), writers):
            os.write(fd, b"".join(file_line(e, i + k + 1, None) for k, e in enumerate(events[i:i + writers])))
            os.fdatasync(fd)
        return len(events) / (time.perf_counter() - start)
    finally:
        os.close(fd)


async def run(levels: list[int], n: int, rounds: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    db = await create_db("conc", bare_table=True)
    peer_db = await create_db("conc_peer", schema=False)
    best: dict[tuple[str, int], float] = {}
    try:
        for w in levels:
            for (k, r), v in (await asyncio.to_thread(pg_processes, db, w, n, rounds) if w <= MAX_PROCESSES else {}).items():
                best[(k, w)] = max(best.get((k, w), 0.0), v)
                print(f"  writers={w} round={r}: {k} {v:,.0f}/s", flush=True)
            for r in range(rounds):
                tag = f"w{w}r{r}"
                f = os.path.join(temp, tag)
                measured = {
                    "pg": await pg_journal(db, w, n, tag + "j"),
                    "pg_bare": await pg_bare(db, w, n, tag + "b"),
                    "file": await file_journal(f + "-journal.jsonl", w, n, tag),
                    "file_bare": await asyncio.to_thread(file_fsync_each, f + "-each.jsonl", w, n, tag),
                    "file_ceiling": await asyncio.to_thread(file_group_ceiling, f + "-group.jsonl", w, n, tag),
                }
                peer = await asyncio.to_thread(peer_threads, peer_db, w, max(n // 4, w * 4), tag + "p")
                if peer is not None:
                    measured["peer"] = peer
                for k, v in measured.items():
                    best[(k, w)] = max(best.get((k, w), 0.0), v)
                print(f"  writers={w} round={r}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in measured.items()),
                      flush=True)
    finally:
        await drop_db(db)
        await drop_db(peer_db)
    rows = []
    for w in levels:
        target = {8: ">= 1.5", 32: ">= 2"}.get(w)  # issue 13: group commit beats bare single INSERTs
        conns = f"x{w} conns" if w <= BARE_CONNECTIONS else f"x{w} on {BARE_CONNECTIONS} conns"
        rows.append(compare(f"PostgresEventJournal, {w} writers", best[("pg", w)], f"bare INSERT {conns}",
                            best[("pg_bare", w)], "events/s", target=target))
    for w in (w for w in levels if w <= MAX_PROCESSES):
        target = ">= 0.8" if w >= 8 else None
        rows.append(compare(f"PostgresEventJournal, {w} processes", best[("pg_proc", w)],
                            f"bare INSERT x{w} processes", best[("pg_bare_proc", w)], "events/s", target=target))
    if ("peer", levels[0]) in best:
        for w in levels:
            target = ">= 3" if w >= 8 else None
            rows.append(compare(f"PostgresEventJournal, {w} writers", best[("pg", w)],
                                f"peer: eventsourcing x{w} threads", best[("peer", w)], "events/s", target=target))
        for w in levels:
            rows.append(compare(f"eventsourcing recorder, {w} threads", best[("peer", w)], f"bare INSERT x{w} writers",
                                best[("pg_bare", w)], "events/s"))
    for w in levels:
        rows.append(compare(f"FileEventJournal group commit, {w} writers", best[("file", w)],
                            f"fsync per event x{w} threads", best[("file_bare", w)], "events/s"))
    if levels[0] == 1:
        for w in levels[1:]:
            rows.append(compare(f"FileEventJournal group commit, {w} writers", best[("file", w)],
                                "fsync per event, sequential", best[("file_bare", 1)], "events/s",
                                target=">= 10" if w == 32 else None))
    for w in levels:
        rows.append(compare(f"FileEventJournal group commit, {w} writers", best[("file", w)],
                            f"ceiling: {w} lines per fdatasync", best[("file_ceiling", w)], "events/s"))
    return rows, {"best_events_per_s": {f"{k}@{w}": v for (k, w), v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per variant, writer count and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--writers", default="1,8,32,128")
    args = parser.parse_args()
    levels = [int(x) for x in args.writers.split(",")]
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(levels, args.events, args.rounds, temp))
    print_table(f"Concurrent single appends, {args.events} events per run, best of {args.rounds} rounds", rows)
    write_result("concurrent-appends", rows, {"events": args.events, "rounds": args.rounds, "writers": levels},
                 machine, extra)


if __name__ == "__main__":
    main()
