"""eventsourcing's recorder figures for eventstore.integrations.eventsourcing beside eventsourcing's
own PostgresApplicationRecorder, on the same PostgreSQL server, interleaved in one run.

The shapes are those of eventsourcing's shipped test cases: ``test_performance`` (one event of a
new aggregate per insert, one thread) and ``test_concurrent_throughput`` (jobs of 50 events of a
new aggregate, 4 worker threads); plus single-event inserts from 16 threads, where eventstore
group-commits. Both sides use their factories as an application would (``PERSISTENCE_MODULE``),
with one pool connection per thread available to each. Also the blocking interface's own cost:
``SyncJournal.append`` against the same journal's async ``append`` and an empty hop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import compare, create_db, drop_db, latency_summary, machine_facts, print_table, url, write_result
from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory, StoredEvent

from eventstore import EventEnvelope
from eventstore.sync import open_journal

OURS = "eventstore.integrations.eventsourcing"
NATIVE = "eventsourcing.postgres"


def factories(db: str, threads: int) -> dict[str, InfrastructureFactory[Any]]:
    ours = InfrastructureFactory.construct({
        "PERSISTENCE_MODULE": OURS, "DATABASE_URL": url(db), "EVENT_JOURNAL_POOL_SIZE": str(threads),
    })
    native = InfrastructureFactory.construct({
        "PERSISTENCE_MODULE": NATIVE, "POSTGRES_DBNAME": db, "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "", "POSTGRES_POOL_SIZE": str(threads),
    })
    return {"eventstore": ours, "native": native}


def one_event(recorder: ApplicationRecorder) -> None:
    recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "topic1", b"state1")])


def job(recorder: ApplicationRecorder, events: int) -> None:
    originator = uuid.uuid4()
    recorder.insert_events([StoredEvent(originator, i, "topic", b"state") for i in range(events)])


def latencies(recorders: dict[str, ApplicationRecorder], samples: int, rounds: int = 5) -> dict[str, list[float]]:
    """Seconds per one-event insert, the two recorders taking turns round by round."""
    out: dict[str, list[float]] = {name: [] for name in recorders}
    for recorder in recorders.values():  # warm up, as test_performance does
        for _ in range(20):
            one_event(recorder)
    for _ in range(rounds):
        for name, recorder in recorders.items():
            for _ in range(samples // rounds):
                t0 = time.perf_counter()
                one_event(recorder)
                out[name].append(time.perf_counter() - t0)
    return out


def throughput(work: Callable[[], None], calls: int, threads: int) -> float:
    """Calls per second of ``work`` from ``threads`` threads."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: work(), range(threads)))  # warm up every thread's connection
        t0 = time.perf_counter()
        list(pool.map(lambda _: work(), range(calls)))
        return calls / (time.perf_counter() - t0)


def interleaved_rates(recorders: dict[str, ApplicationRecorder], make: Callable[[ApplicationRecorder], Callable[[], None]],
                      calls: int, threads: int, events_per_call: int, rounds: int = 2) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, recorder in recorders.items():
            rate = throughput(make(recorder), calls, threads) * events_per_call
            best[name] = max(best.get(name, 0.0), rate)
    return best


def hop_costs(db: str, samples: int) -> dict[str, dict[str, float]]:
    """p50/p99 (µs) of an empty hop, SyncJournal.append, and the same journal's async append."""
    journal = open_journal("postgres", database_url=url(db), schema="hop")

    async def nothing() -> None:
        return None

    async def async_appends(n: int) -> list[float]:
        times = []
        for _ in range(n):
            event = EventEnvelope.new("t", {"n": 1}, actor_id="bench", entity_id=str(uuid.uuid4()))
            t0 = time.perf_counter()
            await journal.journal.append(event)
            times.append(time.perf_counter() - t0)
        return times

    def sync_appends(n: int) -> list[float]:
        times = []
        for _ in range(n):
            event = EventEnvelope.new("t", {"n": 1}, actor_id="bench", entity_id=str(uuid.uuid4()))
            t0 = time.perf_counter()
            journal.append(event)
            times.append(time.perf_counter() - t0)
        return times

    def hops(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            journal.run(nothing())
            times.append(time.perf_counter() - t0)
        return times

    try:
        out: dict[str, list[float]] = {"hop": [], "sync": [], "async": []}
        for _ in range(5):
            out["hop"] += hops(samples // 5)
            out["sync"] += sync_appends(samples // 5)
            out["async"] += journal.run(async_appends(samples // 5))
    finally:
        journal.close()
    return {name: {q: v * 1e6 if q != "n" else v for q, v in latency_summary(s).items()} for name, s in out.items()}


def run(samples: int, jobs: int, singles: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    db = asyncio.run(create_db("es_lib", schema=False))
    try:
        from eventstore.postgres.schema import upgrade_schema

        upgrade_schema(url(db), "hop")
        made = factories(db, 16)
        try:
            recorders = {name: f.application_recorder() for name, f in made.items()}
            lat = {name: {q: v * 1e6 if q != "n" else v for q, v in latency_summary(s).items()}
                   for name, s in latencies(recorders, samples).items()}
            jobs50 = interleaved_rates(recorders, lambda r: (lambda: job(r, 50)), jobs, 4, 50)
            single16 = interleaved_rates(recorders, lambda r: (lambda: one_event(r)), singles, 16, 1)
        finally:
            for f in made.values():
                f.close()
        hop = hop_costs(db, samples)
    finally:
        asyncio.run(drop_db(db))
    rows = [
        compare("eventsourcing insert p50 (test_performance)", lat["eventstore"]["p50"], "native recorder",
                lat["native"]["p50"], "µs", target="<= 1.2", lower_is_better=True),
        compare("eventsourcing insert p99", lat["eventstore"]["p99"], "native recorder", lat["native"]["p99"], "µs",
                lower_is_better=True),
        compare("eventsourcing 4 threads x 50-event jobs (events/s)", jobs50["eventstore"], "native recorder",
                jobs50["native"], "events/s", target=">= 1.5"),
        compare("eventsourcing 16 threads x 1-event inserts (events/s)", single16["eventstore"], "native recorder",
                single16["native"], "events/s", target=">= 1.5"),
        compare("SyncJournal.append p50", hop["sync"]["p50"], "async append, same journal", hop["async"]["p50"], "µs",
                lower_is_better=True),
        compare("SyncJournal empty hop p50", hop["hop"]["p50"], "async append, same journal", hop["async"]["p50"], "µs",
                lower_is_better=True),
    ]
    return rows, {"latency_us": lat, "jobs_of_50_events_per_s": jobs50, "single_inserts_16_threads_per_s": single16,
                  "sync_hop_us": hop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="one-event inserts timed per recorder")
    parser.add_argument("--jobs", type=int, default=200, help="50-event jobs per throughput round")
    parser.add_argument("--singles", type=int, default=3000, help="one-event inserts per 16-thread round")
    args = parser.parse_args()
    machine = asyncio.run(machine_facts())
    rows, extra = run(args.samples, args.jobs, args.singles)
    print_table("eventsourcing recorders: eventstore's integration vs eventsourcing's PostgreSQL recorder", rows)
    write_result("eventsourcing", rows, vars(args), machine, extra)


if __name__ == "__main__":
    main()
