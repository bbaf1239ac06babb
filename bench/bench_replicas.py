"""What reads on a hot standby buy: the primary's append throughput while replay readers run on
the primary against the same readers on a streaming standby, and the standby's replay rate
against the primary's and against a bare keyset fetch on the standby, same run, alternated.

Both servers are throwaway clusters this run starts (``tests/faults/pgcluster.py``) with
``fsync=on`` and 128 MB of shared buffers each. They share this machine's CPUs: moving readers to
the standby takes their work off the primary's backends and buffer pool, not off the machine,
so on 2 cores the gain is a floor of what separate machines give.

Measured, ``--rounds`` rounds, variants alternated within each:
1. appends/s on the primary (8 callers, one journal, single ``append`` calls) for ``--seconds``,
   with no readers, with 4 readers replaying the whole journal on the primary in a loop, and with
   the same 4 readers on the standby (``replica_urls=[standby]``); the readers run in a process
   of their own, and their events/s are reported beside;
2. one full replay (``read_events()`` of ``--events`` events) on the primary, on the standby, and
   a bare prepared keyset fetch of the same pages on the standby (jsonb left as text)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import compare, machine_facts, make_events, print_table, write_result

from eventstore import PostgresEventJournal
from eventstore.postgres.schema import upgrade_schema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import wait_replayed  # noqa: E402 - the repository's own test helpers
from tests.faults.pgcluster import ThrowawayCluster  # noqa: E402

SETTINGS = "-c fsync=on -c shared_buffers=128MB -c max_connections=100"
BARE_PAGE = "SELECT id, payload::text FROM credit_events WHERE id > $1 ORDER BY id LIMIT 1000"
READERS = 4
CALLERS = 8


async def load(url: str, events: int) -> None:
    async with PostgresEventJournal(url, pool_size=2) as journal:
        batch = make_events(events, entities=1000)
        for start in range(0, events, 1000):
            await journal.append_many(batch[start:start + 1000])


async def replay_loop(primary_url: str, replicas: list[str], seconds: float) -> None:
    """The readers' process: READERS journals replaying the whole journal in a loop for
    ``seconds``; prints the events read and the pages that fell back to the primary."""
    read = 0
    deadline = time.monotonic() + seconds

    async def replay(journal: PostgresEventJournal) -> None:
        nonlocal read
        while time.monotonic() < deadline:
            async for _ in journal.read_events():
                read += 1
                if time.monotonic() >= deadline:
                    return

    readers = [PostgresEventJournal(primary_url, pool_size=2, replica_urls=replicas) for _ in range(READERS)]
    for journal in readers:
        await journal.initialize()
    await asyncio.gather(*(replay(j) for j in readers))
    fallback = sum(j.get_metrics().get("replica_fallback_pages", 0) for j in readers)
    for journal in readers:
        await journal.close()
    print(json.dumps({"read": read, "fallback_pages": fallback}))


async def appends_with_readers(primary_url: str, reader_replicas: list[str] | None, seconds: float) -> dict[str, float]:
    """Appends/s from CALLERS callers while READERS replay in a loop in a process of their own,
    so their decoding does not share the appenders' event loop (None: no readers)."""
    stop = asyncio.Event()
    appended = 0

    async def append(journal: PostgresEventJournal, k: int) -> None:
        nonlocal appended
        n = 0
        while not stop.is_set():
            await journal.append(make_events(1, prefix=f"a{k}-{n}-{time.monotonic_ns()}")[0])
            appended += 1
            n += 1

    reader = None
    if reader_replicas is not None:
        reader = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--reader", primary_url, json.dumps(reader_replicas), str(seconds + 1.0),
            stdout=asyncio.subprocess.PIPE)
    async with PostgresEventJournal(primary_url, pool_size=4) as writer:
        tasks = [asyncio.create_task(append(writer, k)) for k in range(CALLERS)]
        await asyncio.sleep(0.5)  # warm: pools full, statements prepared, readers started
        appended0, t0 = appended, time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*tasks)
    result = {"appends_per_s": (appended - appended0) / elapsed, "read_per_s": 0.0, "fallback_pages": 0}
    if reader is not None:
        out, _ = await reader.communicate()
        assert reader.returncode == 0, "the readers' process failed"
        counts = json.loads(out.decode().strip().splitlines()[-1])
        result["read_per_s"] = counts["read"] / (seconds + 1.0)
        result["fallback_pages"] = counts["fallback_pages"]
    return result


async def replay_rate(primary_url: str, replicas: list[str]) -> float:
    async with PostgresEventJournal(primary_url, pool_size=2, replica_urls=replicas) as journal:
        t0, n = time.perf_counter(), 0
        async for _ in journal.read_events():
            n += 1
        rate = n / (time.perf_counter() - t0)
        assert journal.get_metrics().get("replica_fallback_pages", 0) == 0, "a page fell back to the primary"
    return rate


async def bare_rate(standby_url: str) -> float:
    conn = await asyncpg.connect(standby_url)
    try:
        page = await conn.prepare(BARE_PAGE)
        t0, n, after = time.perf_counter(), 0, 0
        while rows := await page.fetch(after):
            n += len(rows)
            after = rows[-1][0]
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with ThrowawayCluster(settings=SETTINGS) as primary:
        standby = primary.standby()
        try:
            primary.sql("CREATE DATABASE bench")
            primary_url, standby_url = primary.url(dbname="bench"), standby.url(dbname="bench")
            await asyncio.to_thread(upgrade_schema, primary_url)
            await load(primary_url, args.events)
            await asyncio.to_thread(wait_replayed, primary, standby, 300)
            runs: dict[str, list[dict[str, float]]] = {"alone": [], "primary": [], "standby": []}
            replays: dict[str, list[float]] = {"primary": [], "standby": [], "bare": []}
            for _ in range(args.rounds):
                runs["alone"].append(await appends_with_readers(primary_url, None, args.seconds))
                runs["primary"].append(await appends_with_readers(primary_url, [], args.seconds))
                runs["standby"].append(await appends_with_readers(primary_url, [standby_url], args.seconds))
                await asyncio.to_thread(wait_replayed, primary, standby, 300)
                replays["primary"].append(await replay_rate(primary_url, []))
                replays["standby"].append(await replay_rate(primary_url, [standby_url]))
                replays["bare"].append(await bare_rate(standby_url))
        finally:
            standby.cleanup()
    best = {k: max(v, key=lambda r: r["appends_per_s"]) for k, v in runs.items()}
    rate = {k: max(v) for k, v in replays.items()}
    rows = [
        compare(f"appends/s, {READERS} replays on the standby", best["standby"]["appends_per_s"],
                f"{READERS} replays on the primary", best["primary"]["appends_per_s"], "appends/s"),
        compare(f"appends/s, {READERS} replays on the standby", best["standby"]["appends_per_s"],
                "no readers", best["alone"]["appends_per_s"], "appends/s"),
        compare("replay from the standby", rate["standby"], "replay from the primary", rate["primary"], "events/s"),
        compare("replay from the standby", rate["standby"], "bare keyset fetch, standby", rate["bare"], "events/s"),
    ]
    return rows, {"runs": runs, "replays": replays}


def main() -> None:
    if sys.argv[1:2] == ["--reader"]:  # the readers' own process (appends_with_readers)
        asyncio.run(replay_loop(sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events loaded, replayed whole by every reader")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each append run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    machine = asyncio.run(machine_facts())
    rows, extra = asyncio.run(run(args))
    print_table(f"Reads on a hot standby ({args.events:,} events, {CALLERS} appenders, {args.seconds:g} s runs, "
                f"best of {args.rounds} rounds)", rows)
    for name, r in extra["runs"].items():
        for i, one in enumerate(r):
            print(f"  {name:8} round {i + 1}: {one['appends_per_s']:,.0f} appends/s, {one['read_per_s']:,.0f} events/s read, "
                  f"{one['fallback_pages']} pages fell back to the primary")
    write_result("replicas", rows, vars(args), machine, extra)


if __name__ == "__main__":
    main()
