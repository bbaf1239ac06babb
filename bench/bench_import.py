"""Import speed: migrate_file_to_postgres against a plain COPY of the same rows.

    python bench/bench_import.py [--events 200000] [--batch-size 1000] [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Writes N events to a JSONL file (lines as FileEventJournal writes them, ~1/10 without an entity),
creates the scratch database es_bench_import with the schema, imports the file into
credit_events (all indexes, triggers, per-entity locks), then COPYs the same rows with asyncpg's
copy_records_to_table into a bare copy of the table (CREATE TABLE … (LIKE credit_events INCLUDING
ALL): same indexes, no triggers). Prints events/s of both, the ratio (also against COPY plus the
decoding and validation the import does), and the peak RSS of the import (measured before the
COPY rows are built in memory). Drops the scratch database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventstore import EventEnvelope, migrate_file_to_postgres  # noqa: E402
from eventstore.dsn import parse_database_url  # noqa: E402
from eventstore.envelope import ENCODER, ENVELOPE_DECODER, validate_event  # noqa: E402
from eventstore.postgres import _init_connection  # noqa: E402
from eventstore.schema import upgrade_schema  # noqa: E402

SCRATCH = "es_bench_import"
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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="server to create the scratch database on")
    args = parser.parse_args()

    admin_url = parse_database_url(args.database_url)
    scratch_url = admin_url.parts._replace(path=f"/{SCRATCH}").geturl()
    admin = await asyncpg.connect(admin_url.asyncpg_dsn())
    await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {SCRATCH}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "credits.jsonl"
            started = time.perf_counter()
            generate(path, args.events)
            print(f"generated {args.events:,} events ({path.stat().st_size / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - started:.1f}s")
            upgrade_schema(scratch_url)
            conn = await asyncpg.connect(parse_database_url(scratch_url).asyncpg_dsn())
            await _init_connection(conn)
            await conn.execute("CREATE TABLE bench_copy (LIKE credit_events INCLUDING ALL)")
            await conn.execute("CHECKPOINT")

            started = time.perf_counter()
            inserted = await migrate_file_to_postgres(path, scratch_url, batch_size=args.batch_size)
            import_seconds = time.perf_counter() - started
            import_rss = peak_rss_mib()
            assert inserted == args.events, inserted

            started = time.perf_counter()
            rows = records(path)
            build_seconds = time.perf_counter() - started
            await conn.execute("CHECKPOINT")
            started = time.perf_counter()
            await conn.copy_records_to_table("bench_copy", records=rows, columns=COLUMNS)
            copy_seconds = time.perf_counter() - started
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        await admin.close()

    import_rate = args.events / import_seconds
    copy_rate = args.events / copy_seconds
    print(f"import (migrate_file_to_postgres, batch {args.batch_size}): {import_rate:,.0f} events/s ({import_seconds:.2f}s, "
          "file decode + validation included)")
    print(f"COPY (copy_records_to_table, rows prebuilt in memory): {copy_rate:,.0f} events/s ({copy_seconds:.2f}s)")
    print(f"ratio import/COPY: {import_rate / copy_rate:.2f}")
    with_build = args.events / (copy_seconds + build_seconds)
    print(f"COPY plus decoding and validating the file first ({build_seconds:.2f}s): {with_build:,.0f} events/s; "
          f"ratio import/that: {import_rate / with_build:.2f}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"peak RSS during import: {import_rss:.0f} MiB (whole run: {peak_rss_mib():.0f} MiB)")


if __name__ == "__main__":
    asyncio.run(main())
