"""Failover without losing an acknowledged event (CONTRACT.md "Reads on hot standbys": a
multi-host URL follows the primary after a failover).

A primary with a synchronous standby, both throwaway clusters of this test. Eight writers (each
its own journal) and a subscriber run on ``postgresql://A,B/credits?target_session_attrs=read-write``.
At a random moment the primary's postmaster and backends are SIGKILLed and the standby promoted;
a new synchronous standby is made of the new primary on the dead one's port, so the same URL
keeps naming both nodes, and the next round kills the new primary. Writers retry an append that
failed with the same event (an append in doubt settles as stored or as a duplicate of itself);
the subscriber resumes from its last delivered position when its connection is lost.

At the end, on the last primary: every acknowledged event is stored exactly once, at the
position its append returned; nothing is stored that no writer sent; the subscriber received
every position once, in order. The time from promotion to the first acknowledged append is
printed for each round.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from eventstore import DatabaseUnavailableError, PostgresEventJournal
from eventstore.postgres.schema import upgrade_schema

from ..conftest import wait_replayed
from ..helpers import event
from .pgcluster import ThrowawayCluster

WRITERS = 8
GUARD = 120  # seconds per phase: a hang fails the test instead of blocking the run (not a timing assertion)
STANDBY = "node"  # every standby's application_name, which synchronous_standby_names names


@dataclass
class Ledger:
    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> position its append returned
    sent: set[str] = field(default_factory=set)
    ack_times: list[float] = field(default_factory=list)
    retries: int = 0


def synchronous_standby(primary: ThrowawayCluster, port: int | None = None) -> ThrowawayCluster:
    """A new standby of ``primary`` that every commit waits for, caught up with it."""
    standby = primary.standby(STANDBY, synchronous=True, port=port)
    deadline = time.monotonic() + GUARD
    while primary.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != "1":
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.05)
    # Commits acknowledged before it was synchronous are on it too before the next kill.
    wait_replayed(primary, standby)
    return standby


async def write(journal: PostgresEventJournal, n: int, ledger: Ledger, stop: asyncio.Event, rnd: random.Random) -> None:
    i = 0
    while not stop.is_set():
        size = 3 if rnd.random() < 0.2 else 1
        events = [event(entity_id=f"agent-{rnd.randrange(20)}", idempotency_key=f"w{n}-{i}-{j}") for j in range(size)]
        ledger.sent.update(e.idempotency_key for e in events)
        while True:
            try:
                appended = await (journal.append_many(events) if size > 1 else journal.append(events[0]))
                break
            except DatabaseUnavailableError:
                ledger.retries += 1  # in doubt or refused: the same events again
                await asyncio.sleep(0.02)
        for envelope, where in zip(events, appended if size > 1 else [appended], strict=True):
            ledger.acked[envelope.idempotency_key] = where.position
        ledger.ack_times.append(time.monotonic())
        i += 1


async def subscribe(journal: PostgresEventJournal, received: list[int], resumes: list[int], done: asyncio.Event) -> None:
    while not done.is_set():
        try:
            async for envelope in journal.subscribe(after=received[-1] if received else 0):
                received.append(envelope.position)
        except DatabaseUnavailableError:
            resumes.append(received[-1] if received else 0)
            await asyncio.sleep(0.1)


async def failover_run(rounds: int, seed: int) -> dict:
    rnd = random.Random(seed)
    primary = ThrowawayCluster()
    primary.__enter__()
    nodes = [primary]
    try:
        primary.sql("CREATE DATABASE credits")
        upgrade_schema(primary.url(dbname="credits"))
        standby = synchronous_standby(primary)
        nodes.append(standby)
        url = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/credits?target_session_attrs=read-write"
        ledger, received, resumes = Ledger(), [], []
        stop, done = asyncio.Event(), asyncio.Event()
        journals = [PostgresEventJournal(url, pool_size=2, max_overflow=2, connect_timeout=2) for _ in range(WRITERS + 1)]
        for journal in journals:
            await journal.initialize()
        subscriber = asyncio.create_task(subscribe(journals[-1], received, resumes, done))
        writers = [asyncio.create_task(write(j, n, ledger, stop, random.Random(f"{seed}/{n}"))) for n, j in enumerate(journals[:-1])]
        to_first_append: list[float] = []
        try:
            for _ in range(rounds):
                await asyncio.sleep(rnd.uniform(0.3, 1.5))
                acked_before = len(ledger.acked)
                primary.kill()
                await asyncio.to_thread(standby.promote)
                promoted = time.monotonic()
                # Alone until its own standby is up: commits are not held for a standby that is gone.
                standby.sql("ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()")
                async with asyncio.timeout(GUARD):
                    while not any(t > promoted for t in ledger.ack_times):
                        await asyncio.sleep(0.005)
                to_first_append.append(min(t for t in ledger.ack_times if t > promoted) - promoted)
                primary.cleanup()
                nodes.remove(primary)
                primary, standby = standby, await asyncio.to_thread(synchronous_standby, standby, primary.port)
                nodes.append(standby)
                assert len(ledger.acked) > acked_before, "no append was acknowledged in this round"
        finally:
            stop.set()
            async with asyncio.timeout(GUARD):
                await asyncio.gather(*writers)
        last = max(ledger.acked.values())
        async with asyncio.timeout(GUARD):
            while not received or received[-1] < last:
                await asyncio.sleep(0.01)
        done.set()
        subscriber.cancel()
        for journal in journals:
            await journal.close()

        check = PostgresEventJournal(primary.url(dbname="credits"), pool_size=1)
        await check.initialize()
        try:
            stored = [(e.idempotency_key, e.position) async for e in check.read_events()]
        finally:
            await check.close()
        return {
            "stored": stored, "ledger": ledger, "received": received, "resumes": resumes,
            "to_first_append": to_first_append,
        }
    finally:
        for node in nodes:
            node.cleanup()


def check_failover(result: dict) -> None:
    ledger: Ledger = result["ledger"]
    stored: list[tuple[str, int]] = result["stored"]
    repeated = [key for key, count in Counter(key for key, _ in stored).items() if count > 1]
    assert repeated == []
    where = dict(stored)
    lost = sorted(key for key in ledger.acked if key not in where)
    moved = sorted(key for key, position in ledger.acked.items() if key in where and where[key] != position)
    assert (lost, moved) == ([], []), "acknowledged events lost or not where their append said"
    assert set(where) <= ledger.sent, "stored events that no writer sent"
    assert result["received"] == [position for _, position in stored], "the subscriber skipped or repeated a position"
    seconds = ", ".join(f"{t:.2f}" for t in result["to_first_append"])
    print(f"\n{len(ledger.acked)} events acknowledged over {len(result['to_first_append'])} failovers "
          f"({ledger.retries} retried appends, {len(result['resumes'])} subscription resumes); "
          f"promotion to first acknowledged append: {seconds} s")


async def test_failover_to_a_synchronous_standby_loses_no_acknowledged_event():
    result = await failover_run(rounds=5, seed=1)
    check_failover(result)
    assert len(result["to_first_append"]) == 5


@pytest.mark.long
async def test_failover_soak():
    for seed in range(2, 5):
        check_failover(await failover_run(rounds=8, seed=seed))
