"""Full replay, events/s and peak RSS growth, each reader in its own subprocess.

PostgreSQL: PostgresEventJournal.read_events (fully decoded EventEnvelopes) vs a bare asyncpg
keyset fetch of the same columns (prepared ``WHERE id > $1 ORDER BY id LIMIT 1000``; asyncpg's
own types, jsonb left as text, no envelope). File: FileEventJournal.read_events (read_only)
vs a bare loop of msgspec ``Decoder(EventEnvelope).decode`` over the lines of 1 MiB chunks of
the same file. RSS growth is the reader process's peak RSS (VmHWM, reset when
the reader starts; ru_maxrss where /proc is missing) minus its RSS at that moment. With eventsourcing installed, its recorder's select_notifications (payload
decoded by msgspec) over a table of the same size is measured as a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from common import (
    compare,
    create_db,
    current_rss_kib,
    drop_db,
    machine_facts,
    peak_rss_kib,
    print_table,
    reset_peak_rss,
    url,
    write_result,
)

from eventstore.envelope import ENCODER, ENVELOPE_DECODER, PAYLOAD_DECODER, EventEnvelope

PAYLOAD_SQL = "jsonb_build_object('account', 'acct-' || (g % 100), 'amount', g % 997, 'currency', 'EUR', 'note', 'bench')"
LOAD_SQL = f"""INSERT INTO credit_events (event_id, idempotency_key, event_type, schema_version, "timestamp",
    actor_id, correlation_id, causation_id, payload, entity_id, entity_version)
SELECT gen_random_uuid(), 'key-' || g, 'CreditGranted', 1, timestamptz '2026-01-01Z' + g * interval '1 ms',
       'bench', gen_random_uuid(), NULL, {PAYLOAD_SQL}, 'e-' || (g % 100), (g - 1) / 100 + 1
  FROM generate_series($1::bigint, $2::bigint) AS g"""
PEER_LOAD_SQL = f"""INSERT INTO stored_events (originator_id, originator_version, topic, state)
SELECT gen_random_uuid(), 1, 'CreditGranted', convert_to(({PAYLOAD_SQL})::text, 'UTF8')
  FROM generate_series($1::bigint, $2::bigint) AS g"""
KEYSET_SQL = """SELECT id, event_id, event_type, entity_id, payload, actor_id, correlation_id, causation_id,
       idempotency_key, schema_version, "timestamp", entity_version
  FROM credit_events WHERE id > $1 ORDER BY id LIMIT 1000"""


async def load_pg(db: str, sql: str, n: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url(db))
    try:
        for start in range(1, n + 1, 100_000):
            await conn.execute(sql, start, min(n, start + 99_999))
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def write_file(path: str, n: int) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with open(path, "wb") as out:
        for g in range(1, n + 1):
            event = EventEnvelope.new(
                "CreditGranted", {"account": f"acct-{g % 100}", "amount": g % 997, "currency": "EUR", "note": "bench"},
                actor_id="bench", entity_id=f"e-{g % 100}", timestamp=base + timedelta(milliseconds=g),
            )
            event = EventEnvelope(**{**{f: getattr(event, f) for f in event.__struct_fields__},
                                     "position": g, "entity_version": (g - 1) // 100 + 1})
            out.write(ENCODER.encode(event) + b"\n")


# -- children: one reader each, in a fresh process -----------------------------------------------

async def child(kind: str, target: str) -> dict[str, Any]:
    rss0 = reset_peak_rss()
    count = 0
    extra: dict[str, float] = {}
    opened = time.perf_counter()
    if kind == "pg_journal":
        from eventstore import PostgresEventJournal

        journal = PostgresEventJournal(url(target), pool_size=1, max_overflow=0)
        await journal.initialize()
        start = time.perf_counter()
        async for _ in journal.read_events():
            count += 1
        await journal.close()
    elif kind == "pg_bare":
        import asyncpg

        conn = await asyncpg.connect(url(target))
        stmt = await conn.prepare(KEYSET_SQL)
        start, last = time.perf_counter(), 0
        while rows := await stmt.fetch(last):
            count += len(rows)
            last = rows[-1][0]
        await conn.close()
    elif kind == "file_journal":
        from eventstore import FileEventJournal

        # A read-only open reads nothing: the first read indexes the file as it goes. The rate is
        # that of a second read (index built); the first read is reported beside it.
        journal = FileEventJournal(target, read_only=True)
        await journal.initialize()
        events = journal.read_events()
        await anext(events)
        extra["first_event_seconds"] = time.perf_counter() - opened
        extra["first_event_rss_growth_mib"] = (current_rss_kib() - rss0) / 1024
        async for _ in events:
            pass
        extra["first_read_seconds"] = time.perf_counter() - opened
        start = time.perf_counter()
        async for _ in journal.read_events():
            count += 1
        await journal.close()
    elif kind == "file_bare":
        # Measured faster here than Decoder.decode_lines (which keeps a chunk's structs alive at once).
        start, rest, decode = time.perf_counter(), b"", ENVELOPE_DECODER.decode
        with open(target, "rb") as handle:
            while chunk := handle.read(1 << 20):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if not count:
                    decode(lines[0])
                    extra["first_event_seconds"] = time.perf_counter() - start
                    extra["first_event_rss_growth_mib"] = (current_rss_kib() - rss0) / 1024
                for line in lines:
                    decode(line)
                count += len(lines)
    elif kind == "peer":
        from common import PGHOST, PGPORT, PGUSER
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        datastore = PostgresDatastore(target, PGHOST, PGPORT, PGUSER, "", pool_size=1)
        recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
        start, last = time.perf_counter(), 0
        while page := recorder.select_notifications(last, 1000, inclusive_of_start=False):
            for note in page:
                PAYLOAD_DECODER.decode(note.state)
            count += len(page)
            last = page[-1].id
        datastore.close()
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    return {"events": count, "seconds": seconds, "open_seconds": start - opened,
            "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - rss0) / 1024, **extra}


def spawn(kind: str, target: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, target], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    first = (f", first event after {1000 * result['first_event_seconds']:.1f} ms (+{result['first_event_rss_growth_mib']:.1f} MiB)"
             if "first_event_seconds" in result else "")
    print(f"  {kind}: {result['events']:,} events in {result['seconds']:.2f}s (open {result['open_seconds']:.2f}s{first}), "
          f"peak RSS {result['peak_rss_mib']:.1f} MiB (+{result['rss_growth_mib']:.1f})")
    return result


async def run(n: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = os.path.join(temp, "replay.jsonl")
    db = await create_db("replay")
    peer_db = await create_db("replay_peer", schema=False)
    results: dict[str, dict[str, Any]] = {}
    try:
        t = time.perf_counter()
        await load_pg(db, LOAD_SQL, n)
        await asyncio.to_thread(write_file, path, n)
        print(f"  loaded {n:,} events into PostgreSQL and a JSONL file in {time.perf_counter() - t:.1f}s")
        for _round in range(2):  # alternate, keep each reader's faster run
            for kind, target in (("pg_journal", db), ("pg_bare", db), ("file_journal", path), ("file_bare", path)):
                run_ = await asyncio.to_thread(spawn, kind, target)
                if kind not in results or run_["seconds"] < results[kind]["seconds"]:
                    results[kind] = run_
        try:
            from common import PGHOST, PGPORT, PGUSER
            from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

            datastore = PostgresDatastore(peer_db, PGHOST, PGPORT, PGUSER, "", pool_size=1)
            PostgresApplicationRecorder(datastore, events_table_name="stored_events").create_table()
            datastore.close()
            await load_pg(peer_db, PEER_LOAD_SQL, n)
            results["peer"] = await asyncio.to_thread(spawn, "peer", peer_db)
        except ImportError:
            print("  eventsourcing not installed: no peer measured")
    finally:
        await drop_db(db)
        await drop_db(peer_db)
    for r in results.values():
        assert r["events"] == n, r
        r["events_per_s"] = r["events"] / r["seconds"]
    rate = {k: r["events_per_s"] for k, r in results.items()}
    rss = {k: r["rss_growth_mib"] for k, r in results.items()}
    file_journal, file_bare = results["file_journal"], results["file_bare"]
    rows = [
        compare("PostgresEventJournal.read_events", rate["pg_journal"], "bare keyset fetch", rate["pg_bare"], "events/s",
                target=">= 0.8"),
        compare("FileEventJournal.read_events", rate["file_journal"], "bare msgspec decode loop",
                rate["file_bare"], "events/s", target=">= 0.8"),
        compare("FileEventJournal read-only: open and first read (indexing as it goes)", n / file_journal["first_read_seconds"],
                "bare msgspec decode loop", rate["file_bare"], "events/s"),
        compare("FileEventJournal read-only: open to first event", 1000 * file_journal["first_event_seconds"],
                "bare: open, read 1 MiB, decode a line", 1000 * file_bare["first_event_seconds"], "ms",
                lower_is_better=True, target="< 100 ms"),
        compare("FileEventJournal read-only: RSS growth at first event", file_journal["first_event_rss_growth_mib"],
                "bare: open, read 1 MiB, decode a line", file_bare["first_event_rss_growth_mib"], "MiB",
                lower_is_better=True, target="< 20 MiB"),
    ]
    if "peer" in rate:
        rows.append(compare("eventsourcing select_notifications", rate["peer"], "bare keyset fetch",
                            rate["pg_bare"], "events/s"))
    rows += [
        compare("PostgresEventJournal.read_events RSS growth", rss["pg_journal"], "bare keyset fetch",
                rss["pg_bare"], "MiB", lower_is_better=True),
        compare("FileEventJournal open+two reads RSS growth", rss["file_journal"], "bare msgspec decode loop",
                rss["file_bare"], "MiB", lower_is_better=True),
    ]
    return rows, {"readers": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(*args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = asyncio.run(run(args.events, temp))
    print_table(f"Replay of {args.events:,} events, each reader in a fresh subprocess", rows)
    write_result("replay", rows, {"events": args.events}, machine, extra)


if __name__ == "__main__":
    main()
