"""Sequential durable append latency: each journal beside the bare write it is built on.

PostgreSQL: PostgresEventJournal.append_event vs a prepared asyncpg INSERT … ON CONFLICT
(idempotency_key) DO NOTHING RETURNING id of the same row into ``bare_events`` (same columns,
constraints and indexes, no triggers). File: FileEventJournal.append_event vs os.write +
os.fdatasync of the same line, and the same write+fdatasync through a one-thread executor as
the journal does it by default (the thread hop's cost); the journal with ``fsync_on_loop=True``
(no hop) beside the inline write+fdatasync. The variants of each backend are interleaved event
by event (the file ones in alternating order, after the PostgreSQL ones, with no PostgreSQL
journal open), so drift in the machine (WAL, page cache, neighbours) and whatever the previous
step left running hit a journal and its bare write alike. With ``eventsourcing`` installed, its
PostgreSQL application recorder is measured too, as a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import (
    BARE_INSERT,
    ENCODER,
    bare_args,
    bare_connection,
    compare,
    create_db,
    drop_db,
    file_line,
    latency_summary,
    machine_facts,
    make_events,
    print_table,
    url,
    write_result,
)

from eventstore import FileEventJournal, PostgresEventJournal

WARMUP = 100


def write_durably(fd: int, line: bytes) -> None:
    os.write(fd, line)
    os.fdatasync(fd)


def peer_recorder(db: str) -> tuple[Any, Callable[[Any, int, bytes], None]] | None:
    """eventsourcing's PostgresApplicationRecorder and a one-event insert, or None if not installed."""
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError:
        return None
    from common import PGHOST, PGPORT, PGUSER

    datastore = PostgresDatastore(db, PGHOST, PGPORT, PGUSER, "", pool_size=1)
    recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
    recorder.create_table()

    def insert(originator: Any, version: int, state: bytes) -> None:
        recorder.insert_events([StoredEvent(originator, version, "CreditGranted", state)])

    return datastore, insert


async def run(n: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = make_events(n + WARMUP)
    db = await create_db("lat", bare_table=True)
    peer_db = await create_db("lat_peer", schema=False)
    samples: dict[str, list[float]] = {k: [] for k in ("pg", "pg_bare", "peer", "file", "file_bare", "file_hop", "file_inline")}
    peer = await asyncio.to_thread(peer_recorder, peer_db)
    # One connection appends, as the bare side's one; the second carries the subscribers' wake-up
    # NOTIFY (sent after appends, at most every 2 ms). With a single connection that NOTIFY
    # would hold it now and then while the next append waits (p50 +15% measured).
    journal = PostgresEventJournal(url(db), pool_size=1, max_overflow=1)
    file_journal = FileEventJournal(os.path.join(temp, "journal.jsonl"))
    inline_journal = FileEventJournal(os.path.join(temp, "inline.jsonl"), fsync_on_loop=True)
    bare_fd = os.open(os.path.join(temp, "bare.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    hop_fd = os.open(os.path.join(temp, "hop.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    executor = ThreadPoolExecutor(1)  # what the journal does to keep fsync off the event loop
    loop = asyncio.get_running_loop()
    conn = await bare_connection(db)
    try:
        await journal.initialize()
        await file_journal.initialize()
        await inline_journal.initialize()
        stmt = await conn.prepare(BARE_INSERT)
        versions: dict[str, int] = {}
        entity_versions = []
        for e in events:
            versions[e.entity_id] = versions.get(e.entity_id, 0) + 1
            entity_versions.append(versions[e.entity_id])
        peer_ids: dict[str, Any] = {}
        clock = time.perf_counter
        for i, (event, version) in enumerate(zip(events, entity_versions, strict=True)):  # PostgreSQL
            keep = i >= WARMUP
            t0 = clock()
            await journal.append_event(event)
            t1 = clock()
            await stmt.fetchrow(*bare_args(event, version))
            t2 = clock()
            if keep:
                samples["pg"].append(t1 - t0)
                samples["pg_bare"].append(t2 - t1)
            if peer is not None:
                originator = peer_ids.setdefault(event.entity_id, event.event_id)
                t = clock()
                peer[1](originator, version, ENCODER.encode(event.payload))
                if keep:
                    samples["peer"].append(clock() - t)
        # The file side runs alone: the PostgreSQL journal's wake-up NOTIFY and pool tasks would run
        # in the loop turns a file append awaits, where the bare write (which awaits nothing) is immune.
        await journal.close()
        for i, (event, version) in enumerate(zip(events, entity_versions, strict=True)):
            keep = i >= WARMUP
            line = file_line(event, i + 1, version)

            async def journal_append(journal: FileEventJournal = file_journal, event: Any = event) -> None:
                await journal.append_event(event)

            async def inline_append(journal: FileEventJournal = inline_journal, event: Any = event) -> None:
                await journal.append_event(event)

            async def hop(line: bytes = line) -> None:
                await loop.run_in_executor(executor, write_durably, hop_fd, line)

            async def bare(line: bytes = line) -> None:
                write_durably(bare_fd, line)

            steps = [("file", journal_append), ("file_hop", hop), ("file_inline", inline_append), ("file_bare", bare)]
            if i % 2:  # alternate the order: whatever the previous step leaves running hits each side alike
                steps.reverse()
            for name, step in steps:
                t = clock()
                await step()
                if keep:
                    samples[name].append(clock() - t)
    finally:
        await conn.close()
        await journal.close()
        await file_journal.close()
        await inline_journal.close()
        os.close(bare_fd)
        os.close(hop_fd)
        executor.shutdown()
        if peer is not None:
            peer[0].close()
        await drop_db(db)
        await drop_db(peer_db)

    ms = {k: {q: v * 1000 if q != "n" else v for q, v in latency_summary(s).items()} for k, s in samples.items() if s}
    rows = []
    for q in ("p50", "p99", "p999"):
        target = "<= 1.10" if q == "p50" else None  # issue 13
        rows.append(compare(f"PostgresEventJournal.append_event {q}", ms["pg"][q], "bare INSERT", ms["pg_bare"][q],
                            "ms", target=target, lower_is_better=True))
    if "peer" in ms:
        for q in ("p50", "p99", "p999"):
            rows.append(compare(f"eventsourcing PG recorder insert {q}", ms["peer"][q], "bare INSERT",
                                ms["pg_bare"][q], "ms", lower_is_better=True))
    for q in ("p50", "p99", "p999"):
        rows.append(compare(f"FileEventJournal.append_event {q}", ms["file"][q], "write+fdatasync",
                            ms["file_bare"][q], "ms", lower_is_better=True))
    # issue 13: each way of writing beside the same bare write, within 15%
    rows.append(compare("FileEventJournal.append_event p50", ms["file"]["p50"], "write+fdatasync in executor",
                        ms["file_hop"]["p50"], "ms", target="<= 1.15", lower_is_better=True))
    for q in ("p50", "p99"):
        rows.append(compare(f"FileEventJournal(fsync_on_loop=True).append_event {q}", ms["file_inline"][q],
                            "write+fdatasync", ms["file_bare"][q], "ms", target="<= 1.15" if q == "p50" else None,
                            lower_is_better=True))
    return rows, {"latency_ms": ms, "peer": "eventsourcing PostgresApplicationRecorder" if peer else
                  "eventsourcing not installed: no peer measured"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(args.events, temp))
    print_table(f"Sequential durable append latency, {args.events} events (after {WARMUP} warm-up)", rows)
    write_result("append-latency", rows, {"events": args.events, "warmup": WARMUP, "interleaved": True},
                 machine, extra)


if __name__ == "__main__":
    main()
