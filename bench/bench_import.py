"""Import speed: migrate_file_to_postgres against a plain COPY of the same rows.

    python bench/bench_import.py [--events 200000] [--batch-size 1000]

Writes N events to a JSONL file (lines as FileEventJournal writes them, ~1/10 without an entity),
creates a scratch database es_bench_import_<pid> with the schema, imports the file into
credit_events (all indexes, triggers, per-entity locks), and COPYs the same rows with asyncpg's
copy_records_to_table into a bare copy of the table (CREATE TABLE … (LIKE credit_events INCLUDING
ALL): same indexes, no triggers). Two rounds, each in a fresh database, the import first in one and
the COPY first in the other; each side starts after a CHECKPOINT. Prints events/s of both over the
rounds, the ratio (also against COPY plus the decoding and validation the import does), and the
peak RSS growth of the import vs that of building the COPY rows and copying them (VmHWM reset
before each). Drops the scratch databases.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from common import (
    compare,
    create_db,
    drop_db,
    machine_facts,
    peak_rss_kib,
    print_table,
    reset_peak_rss,
    url,
    write_result,
)

from eventstore import EventEnvelope, migrate_file_to_postgres
from eventstore.envelope import ENCODER, ENVELOPE_DECODER, validate_event
from eventstore.postgres.rows import init_connection

COLUMNS = ["event_id", "idempotency_key", "event_type", "schema_version", "timestamp", "actor_id",
           "correlation_id", "causation_id", "payload", "entity_id", "entity_version"]


def generate(path: Path, count: int, entities: int = 5000) -> None:
    versions: dict[str, int] = {}
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with open(path, "wb") as out:
        for i in range(count):
            entity = None if i % 10 == 0 else f"agent-{i * 7919 % entities}"
            version = None
            if entity is not None:
                version = versions[entity] = versions.get(entity, 0) + 1
            event_id = uuid.uuid4()
            envelope = EventEnvelope(
                event_id=event_id, event_type="credits.transferred" if i % 3 else "credits.granted",
                entity_id=entity, payload={"from": f"agent-{i % 97}", "to": entity, "amount": i % 1000 + 0.25,
                                           "memo": "bench", "tags": ["a", "b"]},
                actor_id=f"service-{i % 5}", correlation_id=uuid.uuid4(), idempotency_key=str(event_id),
                timestamp=start + timedelta(milliseconds=i), position=i + 1, entity_version=version,
            )
            out.write(ENCODER.encode(envelope) + b"\n")


def records(path: Path) -> list[tuple]:
    rows = []
    with open(path, "rb") as handle:
        for line in handle:
            event, payload = validate_event(ENVELOPE_DECODER.decode(line))
            rows.append((event.event_id, event.idempotency_key, event.event_type, event.schema_version, event.timestamp,
                         event.actor_id, event.correlation_id, event.causation_id, payload, event.entity_id,
                         event.entity_version))
    return rows


async def _import(path: Path, db: str, batch_size: int, events: int) -> tuple[float, float]:
    rss0 = reset_peak_rss()
    started = time.perf_counter()
    inserted = await migrate_file_to_postgres(path, url(db), batch_size=batch_size)
    seconds = time.perf_counter() - started
    assert inserted == events, inserted
    return seconds, (peak_rss_kib() - rss0) / 1024


async def _copy(path: Path, conn: asyncpg.Connection) -> tuple[float, float, float]:
    rss0 = reset_peak_rss()
    started = time.perf_counter()
    rows = records(path)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    await conn.copy_records_to_table("bench_copy", records=rows, columns=COLUMNS)
    return time.perf_counter() - started, build_seconds, (peak_rss_kib() - rss0) / 1024


async def run(events: int, batch_size: int, folder: str, rounds: int = 2) -> tuple[list[dict], dict]:
    path = Path(folder) / "credits.jsonl"
    started = time.perf_counter()
    generate(path, events)
    print(f"  generated {events:,} events ({path.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - started:.1f}s", flush=True)
    seconds = {"import": 0.0, "copy": 0.0, "build_rows": 0.0}
    import_rss = copy_rss = 0.0
    for round_number in range(rounds):
        # A fresh database per round; the two sides take turns going first (the second one meets
        # the first one's dirty pages and WAL).
        db = await create_db("import")
        try:
            conn = await asyncpg.connect(url(db))
            await init_connection(conn)
            await conn.execute("CREATE TABLE bench_copy (LIKE credit_events INCLUDING ALL)")
            for side in ("import", "copy") if round_number % 2 == 0 else ("copy", "import"):
                await conn.execute("CHECKPOINT")
                if side == "import":
                    took, rss = await _import(path, db, batch_size, events)
                    seconds["import"] += took
                    import_rss = max(import_rss, rss)
                else:
                    took, build, rss = await _copy(path, conn)
                    seconds["copy"] += took
                    seconds["build_rows"] += build
                    copy_rss = max(copy_rss, rss)
                print(f"  round {round_number + 1}: {side} {took:.1f}s", flush=True)
            await conn.close()
        finally:
            await drop_db(db)

    total = events * rounds
    import_rate, copy_rate = total / seconds["import"], total / seconds["copy"]
    with_build = total / (seconds["copy"] + seconds["build_rows"])
    print(f"  import {seconds['import']:.1f}s, COPY {seconds['copy']:.1f}s (+{seconds['build_rows']:.1f}s decoding and "
          f"validating the file into rows), {rounds} rounds; peak RSS growth import {import_rss:.0f} MiB, "
          f"COPY {copy_rss:.0f} MiB", flush=True)
    rows_out = [
        compare(f"migrate_file_to_postgres (batch {batch_size})", import_rate, "COPY, rows prebuilt in memory",
                copy_rate, "events/s", target=">= 0.8"),
        compare(f"migrate_file_to_postgres (batch {batch_size})", import_rate, "decode+validate file, then COPY",
                with_build, "events/s"),
        compare("migrate_file_to_postgres peak RSS growth", import_rss, "decode all rows, then COPY", copy_rss, "MiB",
                lower_is_better=True),
    ]
    return rows_out, {"seconds": seconds, "rounds": rounds, "rss_growth_mib": {"import": import_rss, "copy": copy_rss},
                      "file_mib": path.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as folder:
        machine = asyncio.run(machine_facts(folder))
        rows, extra = asyncio.run(run(args.events, args.batch_size, folder))
    print_table(f"Import of {args.events:,} events vs COPY into a table with the same indexes", rows)
    write_result("import", rows, {"events": args.events, "batch_size": args.batch_size}, machine, extra)


if __name__ == "__main__":
    main()
