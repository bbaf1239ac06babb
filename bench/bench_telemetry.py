"""What OpenTelemetry instrumentation costs an append: sequential append p50, on the file and the
PostgreSQL journal, with the package absent (blocked at import, as when eventstore[otel] is not
installed: the methods are not wrapped at all), with the API but no SDK (no-op providers), and
with the SDK recording every span (a BatchSpanProcessor, as deployed, into an in-memory
exporter) and every metric. Each mode runs in its own process, the
modes taking turns round by round on the same journal files and database. Process-to-process
variance is a few per cent here, so the API-only mode is also measured inside one process: the
decorated append against the undecorated method it wraps, call by call in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from common import compare, create_db, drop_db, machine_facts, print_table, url, write_result

MODES = ("absent", "api-noop", "sdk-in-memory")

CHILD = r"""
import asyncio, json, sys, time, uuid
mode, backend, target, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "absent":
    sys.modules["opentelemetry"] = None
elif mode == "sdk-in-memory":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    provider = TracerProvider(); provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
from eventstore import EventEnvelope, FileEventJournal, PostgresEventJournal, telemetry

async def main():
    journal = FileEventJournal(target) if backend == "file" else PostgresEventJournal(target, pool_size=1, max_overflow=1)
    async with journal:
        times = []
        for i in range(n + 50):
            event = EventEnvelope.new("bench.telemetry", {"i": i}, actor_id="bench", entity_id=str(uuid.uuid4()))
            t0 = time.perf_counter()
            await journal.append_event(event)
            if i >= 50:
                times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"p50_us": times[len(times) // 2] * 1e6, "instrumented": telemetry.TELEMETRY is not None}))

asyncio.run(main())
"""


INTERLEAVED = r"""
import asyncio, json, sys, time, uuid
from eventstore import EventEnvelope, FileEventJournal, PostgresEventJournal
from eventstore.base import BaseEventJournal
backend, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
undecorated = BaseEventJournal._append_one.__wrapped__  # the method as it is without the package

async def main():
    journal = FileEventJournal(target) if backend == "file" else PostgresEventJournal(target, pool_size=1, max_overflow=1)
    async with journal:
        times = {"decorated": [], "undecorated": []}
        for i in range(2 * n + 100):
            event = EventEnvelope.new("bench.telemetry", {"i": i}, actor_id="bench", entity_id=str(uuid.uuid4()))
            t0 = time.perf_counter()
            if i % 2:
                await journal.append_event(event)
            else:
                await undecorated(journal, event, None, locate=False)
            if i >= 100:
                times["decorated" if i % 2 else "undecorated"].append(time.perf_counter() - t0)
    print(json.dumps({k: sorted(v)[len(v) // 2] * 1e6 for k, v in times.items()}))

asyncio.run(main())
"""


def measure(mode: str, backend: str, target: str, n: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, backend, target, str(n)],
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout)


def run(n: int, rounds: int, temp: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    db = asyncio.run(create_db("otel"))
    try:
        targets = {"file": os.path.join(temp, "otel.jsonl"), "postgres": url(db)}
        p50: dict[str, dict[str, list[float]]] = {b: {m: [] for m in MODES} for b in targets}
        for _ in range(rounds):
            for backend, target in targets.items():
                for mode in MODES:
                    result = measure(mode, backend, target, n)
                    assert result["instrumented"] == (mode != "absent")
                    p50[backend][mode].append(result["p50_us"])
        interleaved = {
            backend: json.loads(subprocess.run([sys.executable, "-c", INTERLEAVED, backend, target, str(n)],
                                               capture_output=True, text=True, check=True, timeout=600).stdout)
            for backend, target in targets.items()
        }
    finally:
        asyncio.run(drop_db(db))
    median = {b: {m: sorted(v)[len(v) // 2] for m, v in modes.items()} for b, modes in p50.items()}
    rows = []
    for backend in ("postgres", "file"):
        name = "PG" if backend == "postgres" else "file"
        for mode in MODES[1:]:
            rows.append(compare(f"{name} append p50, OpenTelemetry {mode}", median[backend][mode],
                                "package absent", median[backend]["absent"], "µs", lower_is_better=True))
        rows.append(compare(f"{name} append p50, API only, in one process", interleaved[backend]["decorated"],
                            "the same, undecorated", interleaved[backend]["undecorated"], "µs", lower_is_better=True))
    return rows, {"append_p50_us": median, "rounds": p50, "interleaved_p50_us": interleaved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="appends timed per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per mode and backend (median taken)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
        rows, extra = run(args.events, args.rounds, temp)
    print_table(f"OpenTelemetry's cost per append, {args.events} appends x {args.rounds} rounds", rows)
    write_result("telemetry", rows, vars(args), machine, extra)


if __name__ == "__main__":
    main()
