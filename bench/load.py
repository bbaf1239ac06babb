"""Load: N concurrent writers and M subscribers for a fixed time, then a check of everything stored.

PostgreSQL: the writers are tasks spread over separate writer processes, each process holding two
PostgresEventJournal instances (two pools); the subscribers run in the coordinating process, the
first from position 0 before the writers start, the others joining during the run from the last
position the first had seen (catch-up, then live). File: the writers are tasks on the one
FileEventJournal of the coordinating process (one writer process per file by design), the
subscribers subscribe() on it, and a read-only FileEventJournal in another process follows the file.
Each writer mixes single appends to shared entities, appends with expected_version to an entity of
its own, small batches (some repeating an acknowledged key) and retries of acknowledged keys.
Latency is per append call (a batch is one call); appends/s counts newly stored events. Subscriber
lag is delivery time minus the writer's acknowledgement (wall clock, one host), over the events
acknowledged after the subscriber started; it is negative when the subscriber saw an event before
the writer's process got the reply. Afterwards: every acknowledged key stored exactly once, no
stored key that no writer sent, positions strictly increasing, entity versions 1..n, every
subscriber got exactly the stored events after its start, each once, in order; no append failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec

from eventstore import EventEnvelope, FileEventJournal, PostgresEventJournal

SCRIPT = Path(__file__).resolve()
READY_GUARD = 60.0  # seconds for a child process to open its journals
FINISH_GUARD = 120.0  # seconds after the deadline for writers to finish and subscribers to catch up
SHARED_ENTITIES = 64
JSON = msgspec.json


# -- one writer: the same loop for both backends ------------------------------------------------


async def write_loop(journal: Any, wid: int, tag: str, deadline: float, cap: int, seed: int) -> dict[str, Any]:
    """Append until ``deadline`` (wall clock) or ``cap`` events; report what was acknowledged."""
    rng = random.Random(seed * 100_003 + wid)
    acked: list[tuple[str, float]] = []  # (key, wall time of the acknowledgement)
    uncertain: list[str] = []  # keys of calls that raised: stored or not, nobody knows
    latencies: list[float] = []
    violations: list[str] = []
    errors: list[str] = []
    own_entity, own_version = f"{tag}-own-{wid}", 0
    n = calls = 0

    def new(entity: str | None) -> EventEnvelope:
        nonlocal n
        n += 1
        return EventEnvelope.new("load.appended", {"writer": wid, "n": n, "amount": n % 997},
                                 actor_id=f"writer-{wid}", entity_id=entity, idempotency_key=f"{tag}-{wid}-{n}")

    def retry_of(key: str) -> EventEnvelope:  # a new event_id under an acknowledged key
        return EventEnvelope.new("load.appended", {"writer": wid, "retry": key}, actor_id=f"writer-{wid}",
                                 entity_id=f"{tag}-shared-{rng.randrange(SHARED_ENTITIES)}", idempotency_key=key)

    started = time.time()
    while n < cap and time.time() < deadline:
        roll = rng.random()
        batch: list[EventEnvelope] = []
        expected_flags: list[bool] = []
        expected_version = None
        if roll < 0.05 and acked:
            batch, expected_flags = [retry_of(rng.choice(acked)[0])], [False]
        elif roll < 0.15:
            batch = [new(f"{tag}-shared-{rng.randrange(SHARED_ENTITIES)}") for _ in range(rng.randrange(2, 5))]
            expected_flags = [True] * len(batch)
            if acked and rng.random() < 0.3:
                batch.append(retry_of(rng.choice(acked)[0]))
                expected_flags.append(False)
        elif roll < 0.35:
            batch, expected_flags, expected_version = [new(own_entity)], [True], own_version
        else:
            entity = None if roll > 0.95 else f"{tag}-shared-{rng.randrange(SHARED_ENTITIES)}"
            batch, expected_flags = [new(entity)], [True]
        t0 = time.perf_counter()
        try:
            if len(batch) == 1:
                flags = [await journal.append_event(batch[0], expected_version=expected_version)]
            else:
                flags = await journal.append_events(batch)
        except Exception as exc:  # reported, and the run fails: nothing should fail without faults
            errors.append(f"writer {wid}: {type(exc).__name__}: {exc}")
            uncertain.extend(e.idempotency_key for e in batch if e.payload.get("retry") is None)
            if len(errors) > 20:
                break
            continue
        finally:
            calls += 1
        now = time.time()
        latencies.append(time.perf_counter() - t0)
        if flags != expected_flags:
            violations.append(f"writer {wid}: {[e.idempotency_key for e in batch]} flagged {flags}, "
                              f"expected {expected_flags}")
        for event, flag in zip(batch, flags, strict=True):
            if flag and event.payload.get("retry") is None:
                acked.append((event.idempotency_key, now))
        if expected_version is not None and flags == [True]:
            own_version += 1
    return {"wid": wid, "acked": acked, "uncertain": uncertain, "latencies": latencies, "violations": violations,
            "errors": errors, "own": [own_entity, own_version], "calls": calls, "start": started, "end": time.time()}


# -- subscribers -------------------------------------------------------------------------------


class Follower:
    """One subscription: what it got, in order, with the delivery time."""

    def __init__(self, name: str, after: int) -> None:
        self.name = name
        self.after = after
        self.started = time.time()
        self.items: list[tuple[int, str, float, float]] = []  # position, key, delivered, event timestamp
        self.last = after
        self.error: str | None = None

    async def run(self, journal: Any) -> None:
        try:
            async for e in journal.subscribe(after=self.after):
                self.items.append((e.position, e.idempotency_key, time.time(), e.timestamp.timestamp()))
                self.last = e.position
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "after": self.after, "started": self.started, "items": self.items,
                "error": self.error}


async def stagger(followers: list[Follower], tasks: list[asyncio.Task[None]], journal: Any, count: int,
                  go: float, seconds: float) -> None:
    """Start subscribers 1..count-1 spread over the run, each from what subscriber 0 has seen."""
    for k in range(1, count):
        await asyncio.sleep(max(0.0, go + k * seconds / count - time.time()))
        while followers[0].last == 0 and time.time() < go + seconds:  # join after something, to catch up
            await asyncio.sleep(0.01)
        follower = Follower(f"subscriber {k}", followers[0].last)
        followers.append(follower)
        tasks.append(asyncio.create_task(follower.run(journal)))


async def wait_caught_up(followers: list[Follower], target: int, guard: float) -> None:
    limit = time.monotonic() + guard
    while any(f.last < target and f.error is None for f in followers) and time.monotonic() < limit:
        await asyncio.sleep(0.02)
    for f in followers:
        if f.last < target and f.error is None:  # a stalled subscription, told apart from a skipping one
            f.error = f"still at position {f.last} of {target} {guard:g} s after the writers finished"


# -- child processes ---------------------------------------------------------------------------


async def spawn(role: str, config: dict[str, Any]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), role, json.dumps(config),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), READY_GUARD)
    if line.strip() != b"ready":
        raise RuntimeError(f"{role} process did not start (said {line!r}, exit {await proc.wait()})")
    return proc


async def tell(proc: asyncio.subprocess.Process, message: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(message.encode() + b"\n")
    await proc.stdin.drain()


async def finish(proc: asyncio.subprocess.Process, guard: float, out: Path) -> dict[str, Any]:
    code = await asyncio.wait_for(proc.wait(), guard)
    if code != 0:
        raise RuntimeError(f"child process {proc.pid} exited with {code}")
    return JSON.decode(out.read_bytes())


def kill_all(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def pg_writer_process(config: dict[str, Any]) -> None:
    """Child: ``journals`` PostgresEventJournal instances, the writer tasks spread over them."""
    wids: list[int] = config["wids"]
    count = max(1, min(config["journals"], len(wids)))
    groups = [wids[j::count] for j in range(count)]
    journals = [PostgresEventJournal(config["url"], pool_size=len(g), max_overflow=1) for g in groups]
    for journal in journals:
        await journal.initialize()
    try:
        print("ready", flush=True)
        deadline = float((await asyncio.to_thread(sys.stdin.readline)).split()[1])
        results = await asyncio.gather(*(
            write_loop(journals[j], wid, config["tag"], deadline, config["cap"], config["seed"])
            for j, group in enumerate(groups) for wid in group
        ))
    finally:
        for journal in journals:
            await journal.close()
    Path(config["out"]).write_bytes(JSON.encode(results))


async def file_follower_process(config: dict[str, Any]) -> None:
    """Child: a read-only FileEventJournal following the file from position 0 until told where to stop."""
    async with FileEventJournal(config["path"], read_only=True) as journal:
        follower = Follower("read-only follower (other process)", 0)
        task = asyncio.create_task(follower.run(journal))
        print("ready", flush=True)
        target = int((await asyncio.to_thread(sys.stdin.readline)).split()[1])
        await wait_caught_up([follower], target, FINISH_GUARD)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    Path(config["out"]).write_bytes(JSON.encode(follower.summary()))


# -- the two backends --------------------------------------------------------------------------


async def _run_postgres(url: str, writers: int, subscribers: int, seconds: float, processes: int,
                        cap: int, seed: int, tag: str, temp: Path) -> dict[str, Any]:
    plan = [list(range(writers))[p::processes] for p in range(processes)]
    procs: list[asyncio.subprocess.Process] = []
    followers: list[Follower] = []
    tasks: list[asyncio.Task[None]] = []
    watcher = PostgresEventJournal(url, pool_size=2, max_overflow=2)
    await watcher.initialize()
    try:
        for p, wids in enumerate(plan):
            procs.append(await spawn("_pg_writer", {"url": url, "wids": wids, "journals": 2, "tag": tag, "cap": cap,
                                                    "seed": seed, "out": str(temp / f"writer-{p}.json")}))
        followers.append(Follower("subscriber 0", 0))
        tasks.append(asyncio.create_task(followers[0].run(watcher)))
        await asyncio.sleep(0.3)  # subscriber 0 is listening before the first append
        go = time.time()
        for proc in procs:
            await tell(proc, f"go {go + seconds}")
        starter = asyncio.create_task(stagger(followers, tasks, watcher, subscribers, go, seconds))
        results: list[dict[str, Any]] = []
        for p, proc in enumerate(procs):
            results += await finish(proc, seconds + FINISH_GUARD, temp / f"writer-{p}.json")
        await starter
        stored = [(e.position, e.idempotency_key, e.entity_id, e.entity_version)
                  async for e in watcher.read_events()]
        await wait_caught_up(followers, stored[-1][0] if stored else 0, FINISH_GUARD)
    finally:
        kill_all(procs)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await watcher.close()
    layout = f"{writers} writer tasks in {processes} processes x 2 journals (pools); subscribers in the coordinator"
    return {"writer_results": results, "stored": stored, "raw_key_counts": None,
            "followers": [f.summary() for f in followers], "layout": layout}


async def _run_file(path: Path, writers: int, subscribers: int, seconds: float, cap: int, seed: int, tag: str,
                    temp: Path) -> dict[str, Any]:
    procs: list[asyncio.subprocess.Process] = []
    followers: list[Follower] = []
    tasks: list[asyncio.Task[None]] = []
    journal = FileEventJournal(path)
    await journal.initialize()
    try:
        procs.append(await spawn("_file_follower", {"path": str(path), "out": str(temp / "follower.json")}))
        followers.append(Follower("subscriber 0", 0))
        tasks.append(asyncio.create_task(followers[0].run(journal)))
        await asyncio.sleep(0.3)
        go = time.time()
        starter = asyncio.create_task(stagger(followers, tasks, journal, subscribers, go, seconds))
        results = list(await asyncio.gather(*(write_loop(journal, wid, tag, go + seconds, cap, seed)
                                              for wid in range(writers))))
        await starter
        stored = [(e.position, e.idempotency_key, e.entity_id, e.entity_version)
                  async for e in journal.read_events(skip_corrupted=False)]
        target = stored[-1][0] if stored else 0
        await wait_caught_up(followers, target, FINISH_GUARD)
        await tell(procs[0], f"until {target}")
        remote = await finish(procs[0], FINISH_GUARD, temp / "follower.json")
    finally:
        kill_all(procs)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await journal.close()
    # What is physically in the file, line by line: a key written twice would show here.
    raw = Counter(line.idempotency_key for line in JSON.Decoder(EventEnvelope).decode_lines(path.read_bytes()))
    layout = (f"{writers} writer tasks on one journal; {subscribers} subscribers in that process; "
              "1 read-only follower in another process")
    return {"writer_results": results, "stored": stored, "raw_key_counts": raw,
            "followers": [f.summary() for f in followers] + [remote], "layout": layout}


# -- verification and figures ------------------------------------------------------------------


def verify(run: dict[str, Any]) -> list[str]:
    """Every way the run could have lost, doubled, invented or misordered an event; empty when all is well."""
    failures: list[str] = []
    stored: list[tuple[int, str, str | None, int | None]] = run["stored"]
    results = run["writer_results"]
    for r in results:
        failures += r["errors"][:5] + r["violations"][:5]
    positions = [s[0] for s in stored]
    if any(b <= a for a, b in zip(positions, positions[1:])):
        failures.append("stored positions are not strictly increasing")
    counts = run["raw_key_counts"] or Counter(s[1] for s in stored)
    doubled = [k for k, c in counts.items() if c > 1]
    if doubled:
        failures.append(f"{len(doubled)} keys stored more than once, e.g. {doubled[:3]}")
    acked = [key for r in results for key, _ in r["acked"]]
    acked_twice = [k for k, c in Counter(acked).items() if c > 1]
    if acked_twice:
        failures.append(f"{len(acked_twice)} keys acknowledged as new twice, e.g. {acked_twice[:3]}")
    stored_keys = set(counts)
    missing = set(acked) - stored_keys
    if missing:
        failures.append(f"{len(missing)} acknowledged keys not stored, e.g. {sorted(missing)[:3]}")
    invented = stored_keys - set(acked) - {k for r in results for k in r["uncertain"]}
    if invented:
        failures.append(f"{len(invented)} stored keys that no writer had acknowledged, e.g. {sorted(invented)[:3]}")
    versions: dict[str, list[int | None]] = defaultdict(list)
    for _, _, entity, version in stored:
        if entity is not None:
            versions[entity].append(version)
    bad = [e for e, vs in versions.items() if vs != list(range(1, len(vs) + 1))]
    if bad:
        failures.append(f"{len(bad)} entities whose versions are not 1..n in position order, e.g. {bad[:3]}")
    for r in results:
        entity, count = r["own"]
        if len(versions.get(entity, [])) != count:
            failures.append(f"{entity}: {count} appends acknowledged with expected_version, "
                            f"{len(versions.get(entity, []))} stored")
    for f in run["followers"]:
        expected = [(p, k) for p, k, _, _ in stored if p > f["after"]]
        got = [(p, k) for p, k, _, _ in f["items"]]
        if f["error"]:
            failures.append(f"{f['name']}: subscription raised {f['error']}")
        if got != expected:
            got_set, expected_set = set(got), set(expected)
            missing = sorted(expected_set - got_set)
            last = got[-1][0] if got else f["after"]
            failures.append(
                f"{f['name']} (after {f['after']}): got {len(got)} events, expected {len(expected)}: "
                f"{len(missing)} missing (positions {[p for p, _ in missing[:12]]}, "
                f"{sum(p < last for p, _ in missing)} of them below its last delivered position {last}), "
                f"{len(got_set - expected_set)} not stored, "
                f"{len(got) - len(got_set)} repeated, in order: {got == sorted(got_set)}")
    return failures


def ms_summary(samples: list[float], quantiles: tuple[float, ...]) -> dict[str, float]:
    from common import percentile

    s = sorted(samples)
    out = {f"p{q:g}".replace(".", ""): percentile(s, q) * 1000 for q in quantiles}
    out["max"] = (s[-1] * 1000) if s else float("nan")
    out["n"] = len(s)
    return out


def figures(run: dict[str, Any]) -> dict[str, Any]:
    results = run["writer_results"]
    ack = {key: t for r in results for key, t in r["acked"]}
    lag, lag_ts, details = [], [], []
    for f in run["followers"]:
        own = []
        for _, key, delivered, stamp in f["items"]:
            acked_at = ack.get(key)
            if acked_at is not None and acked_at >= f["started"]:
                own.append(delivered - acked_at)
            if stamp >= f["started"]:
                lag_ts.append(delivered - stamp)
        lag += own
        details.append({"name": f["name"], "after": f["after"], "delivered": len(f["items"]),
                        "lag_ms": ms_summary(own, (50, 99))})
    elapsed = max((r["end"] for r in results), default=0) - min((r["start"] for r in results), default=0)
    events = len(ack)
    return {
        "seconds_measured": elapsed,
        "events": events,
        "calls": sum(r["calls"] for r in results),
        "events_per_s": events / elapsed if elapsed else 0.0,
        "calls_per_s": sum(r["calls"] for r in results) / elapsed if elapsed else 0.0,
        "latency_ms": ms_summary([x for r in results for x in r["latencies"]], (50, 99, 99.9)),
        "lag_ms": ms_summary(lag, (50, 99)),
        "lag_from_event_timestamp_ms": ms_summary(lag_ts, (50, 99)),
        "delivered_before_ack": sum(1 for x in lag if x < 0) / len(lag) if lag else 0.0,
        "subscriber_details": details,
    }


async def run_load(backend: str, *, writers: int, subscribers: int, seconds: float, database_url: str | None = None,
                   path: str | os.PathLike[str] | None = None, processes: int | None = None,
                   max_events: int = 2_000_000, seed: int = 0) -> dict[str, Any]:
    """Run the load on one backend and check it. ``database_url`` (postgres) must hold the current
    schema and no events; ``path`` (file) a journal that does not exist yet (default: a temp dir).
    Returns the figures, ``failures`` (empty when every check passed) and ``passed``."""
    if backend not in ("file", "postgres") or writers < 1 or subscribers < 1 or seconds <= 0:
        raise ValueError("backend file|postgres, writers >= 1, subscribers >= 1, seconds > 0")
    cap = max(1, max_events // writers)
    tag = f"load{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="es_load_") as temp_name:
        temp = Path(temp_name)
        if backend == "postgres":
            if not database_url:
                raise ValueError("the postgres backend needs database_url")
            processes = processes or max(1, min(4, writers // 4))
            processes = min(processes, writers)
            run = await _run_postgres(database_url, writers, subscribers, seconds, processes, cap, seed, tag, temp)
        else:
            journal_path = Path(path) if path is not None else temp / "events" / "load.jsonl"
            run = await _run_file(journal_path, writers, subscribers, seconds, cap, seed, tag, temp)
    failures = verify(run)
    return {"backend": backend, "writers": writers, "subscribers": subscribers, "seconds": seconds,
            "layout": run["layout"], "stored": len(run["stored"]), **figures(run),
            "passed": not failures, "failures": failures}


# -- command line ------------------------------------------------------------------------------


def print_table(results: list[dict[str, Any]]) -> None:
    from common import fmt

    print(f"\n{'backend':9} {'W':>3} {'M':>2} {'s':>5} {'events':>8} {'events/s':>9} {'calls/s':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'p999 ms':>8} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}  check")
    for r in results:
        lat, lag = r["latency_ms"], r["lag_ms"]
        print(f"{r['backend']:9} {r['writers']:>3} {r['subscribers']:>2} {r['seconds_measured']:>5.1f} "
              f"{r['events']:>8} {fmt(r['events_per_s']):>9} {fmt(r['calls_per_s']):>8} {fmt(lat['p50']):>7} "
              f"{fmt(lat['p99']):>7} {fmt(lat['p999']):>8} {fmt(lag['p50']):>8} {fmt(lag['p99']):>8} "
              f"{fmt(lag['max']):>8}  {'PASS' if r['passed'] else 'FAIL'}")
    for r in results:
        print(f"{r['backend']} W={r['writers']}: {r['layout']}")
        for d in r["subscriber_details"]:
            print(f"    {d['name']:36} after {d['after']:>7}: {d['delivered']:>8} events, lag p50 "
                  f"{fmt(d['lag_ms']['p50'])} ms, p99 {fmt(d['lag_ms']['p99'])} ms, max {fmt(d['lag_ms']['max'])} ms")
    for r in results:
        for failure in r["failures"]:
            print(f"  FAIL {r['backend']} W={r['writers']}: {failure}")


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    from common import create_db, drop_db

    results = []
    backends = ["file", "postgres"] if args.backend == "both" else [args.backend]
    for writers in [int(x) for x in args.writers.split(",")]:
        for backend in backends:
            print(f"  {backend}: {writers} writers, {args.subscribers} subscribers, {args.seconds:g} s", flush=True)
            if backend == "postgres" and not args.database_url:
                db = await create_db(f"load{writers}")
                try:
                    from common import url

                    result = await run_load(backend, writers=writers, subscribers=args.subscribers,
                                            seconds=args.seconds, database_url=url(db), processes=args.processes,
                                            max_events=args.max_events, seed=args.seed)
                finally:
                    await drop_db(db)
            else:
                result = await run_load(backend, writers=writers, subscribers=args.subscribers, seconds=args.seconds,
                                        database_url=args.database_url, processes=args.processes,
                                        max_events=args.max_events, seed=args.seed)
            print(f"    {result['events']} events, {result['events_per_s']:,.0f}/s, "
                  f"{'PASS' if result['passed'] else 'FAIL'}", flush=True)
            results.append(result)
    return results


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("_pg_writer", "_file_follower"):
        role = pg_writer_process if sys.argv[1] == "_pg_writer" else file_follower_process
        asyncio.run(role(json.loads(sys.argv[2])))
        return
    from common import machine_facts, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["file", "postgres", "both"], default="both")
    parser.add_argument("--writers", default="8", help="writer count, or several: 8,32")
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the writers append, per run")
    parser.add_argument("--processes", type=int, default=None,
                        help="postgres writer processes (default: writers/4, 1 to 4)")
    parser.add_argument("--max-events", type=int, default=2_000_000, help="bound on events per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", default=None,
                        help="an upgraded, empty database (default: a fresh es_bench_* database, dropped after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="es_bench_") as temp:
        machine = asyncio.run(machine_facts(temp))
    results = asyncio.run(_main(args))
    print_table(results)
    params = {"backend": args.backend, "writers": args.writers, "subscribers": args.subscribers,
              "seconds": args.seconds}
    write_result("load", [{k: v for k, v in r.items()} for r in results], params, machine)
    passed = all(r["passed"] for r in results)
    print("PASS" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
