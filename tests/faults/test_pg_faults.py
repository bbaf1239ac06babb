"""PostgreSQL faults with real servers: restarts (fast and crash-like) under concurrent writers and
a subscriber, a commit whose acknowledgement is lost, pg_terminate_backend storms under load, and
servers that hang, lock or stop. Every wait has a generous bound so a hang fails instead of
blocking the run (liveness bounds, never speed assertions).

Restarts, configuration changes and stopped processes happen on a throwaway cluster of this
module's own (``pgcluster.ThrowawayCluster``), never on the shared server at 127.0.0.1:5432.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import psycopg
import pytest

from eventstore import DatabaseUnavailableError, EventEnvelope, PostgresEventJournal
from eventstore.postgres.schema import upgrade_schema

from ..helpers import event, read_all, unstamped
from .pgcluster import ThrowawayCluster

GUARD = 90  # seconds: liveness bound for anything that could hang (not a timing assertion)
_db_numbers = itertools.count(1)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster() as pg:
        yield pg


@pytest.fixture
def cluster_url(cluster: ThrowawayCluster) -> str:
    """A fresh database with the schema on the throwaway cluster (which is running again if an
    earlier test left it stopped)."""
    if not (cluster.data / "postmaster.pid").exists():
        cluster.start()
    name = f"faults_{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = cluster.url(dbname=name)
    assert upgrade_schema(url), "no migrations applied"
    return url


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class Op:
    """One logical append (a single event or a batch), retried with the same envelopes after
    DatabaseUnavailableError until the store answers."""

    events: list[EventEnvelope]
    batch: bool
    errors: list[str] = field(default_factory=list)
    error_tags: list[int] = field(default_factory=list)
    flags: list[bool] | None = None

    async def run(self, journal: PostgresEventJournal, *, retry_delay: float, deadline: float,
                  tag: callable = lambda: 0) -> list[bool]:
        while True:
            try:
                if self.batch:
                    flags = await journal.append_events(self.events)
                else:
                    flags = [await journal.append_event(self.events[0])]
            except DatabaseUnavailableError as exc:
                self.errors.append(str(exc))
                self.error_tags.append(tag())
                if time.monotonic() > deadline:
                    raise AssertionError(f"no recovery before the deadline: {self.errors[-3:]}") from exc
                if retry_delay:
                    await asyncio.sleep(retry_delay)
                continue
            self.flags = flags
            return flags

    def check_answer(self) -> str:
        """'stored' (this attempt stored it) or 'lost_ack' (an earlier, unanswered attempt did)."""
        assert self.flags is not None
        if all(self.flags):
            return "stored"
        # A batch is atomic: a mix of True and False would mean a partial write.
        assert not any(self.flags), f"partial batch {self.flags}"
        assert self.errors, "a never-stored key was reported as a duplicate"
        return "lost_ack"


def check_store(stored: list[EventEnvelope], ops: list[Op]) -> None:
    """Every attempted event stored exactly once with its content, nothing else, entity
    versions 1..n in position order."""
    attempted = {e.idempotency_key: e for op in ops for e in op.events}
    keys = Counter(e.idempotency_key for e in stored)
    assert [k for k, n in keys.items() if n > 1] == [], "stored more than once"
    assert sorted(keys) == sorted(attempted), "stored set differs from the attempted set"
    for e in stored:
        assert unstamped(e) == attempted[e.idempotency_key]
    positions = [e.position for e in stored]
    assert positions == sorted(set(positions))
    versions: dict[str, list[int]] = defaultdict(list)
    for e in stored:
        if e.entity_id is None:
            assert e.entity_version is None
        else:
            versions[e.entity_id].append(e.entity_version)
    for entity, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), entity


async def admin_fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def wait_until(predicate, what, bound: float = GUARD, step: float = 0.02, watch=()) -> None:
    """Poll ``predicate`` (sync or async); a task of ``watch`` that ended early fails the wait."""
    deadline = time.monotonic() + bound
    while True:
        for task in watch:
            if task.done():
                await task  # its exception, if any, fails the test now
                raise AssertionError(f"{task.get_name()} ended while waiting for {what}")
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            stuck = [f"{t.get_name()}: {awaiting(t)}" for t in watch if not t.done()]
            what = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {what}; tasks still running: {stuck}")
        await asyncio.sleep(step)


def awaiting(task: asyncio.Task) -> str:
    """Where a task waits: its chain of awaited coroutines (for a timeout's message)."""
    where, coro = [], task.get_coro()
    while coro is not None and len(where) < 20:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            where.append(repr(coro)[:80])
            break
        where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(where)


async def backend_pids(conn: asyncpg.Connection, application_name: str = "eventstore") -> list[int]:
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            application_name,
        )
    ]


async def follow(journal: PostgresEventJournal, received: list[EventEnvelope], resumes: list[str]) -> None:
    """Subscribe from 0 until the sentinel; on DatabaseUnavailableError resume after the last
    delivered position."""
    while True:
        last = received[-1].position if received else 0
        try:
            async for e in journal.subscribe(after=last):
                received.append(e)
                if e.payload.get("sentinel"):
                    return
        except DatabaseUnavailableError as exc:
            resumes.append(str(exc))
            await asyncio.sleep(0.1)


def check_delivery(received: list[EventEnvelope], stored: list[EventEnvelope]) -> None:
    positions = [e.position for e in received]
    assert positions == sorted(set(positions)), "repeated or out-of-order position"
    missing = sorted({e.position for e in stored} - set(positions))
    extra = sorted(set(positions) - {e.position for e in stored})
    assert (missing, extra) == ([], [])
    assert received == stored


def random_op(rnd: random.Random, worker: int, n: int) -> Op:
    if rnd.random() < 0.3:
        events = [
            event(payload={"w": worker, "n": n, "b": j}, entity_id=f"e{rnd.randrange(8)}")
            for j in range(rnd.randrange(1, 5))
        ]
        return Op(events, batch=True)
    entity = None if rnd.random() < 0.3 else f"e{rnd.randrange(8)}"
    return Op([event(payload={"w": worker, "n": n}, entity_id=entity)], batch=False)


# -- 1. restarts while appends and a subscription run ----------------------------------------


async def restart_run(cluster: ThrowawayCluster, url: str, rounds: list[tuple[str, float]], writers: int = 6) -> dict:
    """``rounds``: (stop mode, seconds the server stays down) per restart."""
    journal = PostgresEventJournal(url, pool_size=4, max_overflow=4, connect_timeout=5, statement_timeout=20)
    await journal.initialize()
    ops: list[Op] = []
    stop = asyncio.Event()
    received: list[EventEnvelope] = []
    resumes: list[str] = []

    def answered() -> int:
        return sum(1 for op in ops if op.flags is not None)

    async def write(worker: int) -> None:
        rnd = random.Random(worker)
        for n in itertools.count():
            if stop.is_set():
                return
            op = random_op(rnd, worker, n)
            ops.append(op)
            await op.run(journal, retry_delay=0.05, deadline=time.monotonic() + GUARD)

    try:
        consumer = asyncio.create_task(follow(journal, received, resumes))
        tasks = [asyncio.create_task(write(w)) for w in range(writers)]
        await wait_until(lambda: answered() >= 100, "first appends", watch=[consumer, *tasks])
        for mode, down in rounds:
            if down:
                await asyncio.to_thread(cluster.stop, mode)
                await asyncio.sleep(down)
                await asyncio.to_thread(cluster.start)
            else:
                await asyncio.to_thread(cluster.restart, mode)
            after_restart = answered()
            # Recovery without reopening: the same journal keeps answering.
            await wait_until(lambda a=after_restart: answered() >= a + 100, f"appends after a {mode} restart",
                             watch=[consumer, *tasks])
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
        assert await journal.append_event(event(payload={"sentinel": True})) is True
        await asyncio.wait_for(consumer, GUARD)
        stored = await read_all(journal)
    finally:
        stop.set()
        await journal.close()

    sentinel = stored[-1]
    assert sentinel.payload == {"sentinel": True}
    check_store(stored[:-1], ops)
    check_delivery(received, stored)
    answers = Counter(op.check_answer() for op in ops)
    per_call = Counter(len(op.errors) for op in ops)
    assert sum(len(op.errors) for op in ops) >= 1, "the restarts never reached an append in flight"
    for op in ops:
        for message in op.errors:
            assert f"127.0.0.1:{cluster.port}" in message
    return {"ops": len(ops), "events": len(stored), "answers": answers, "errors_per_call": per_call,
            "subscription_resumes": len(resumes)}


async def test_restarts_under_concurrent_appends_and_a_subscription(cluster, cluster_url):
    """A fast restart, a crash-like (immediate) restart and an immediate stop with the server
    down for 2 s, all mid-run: the pool recovers by itself, every event is stored once, the
    subscriber sees each exactly once in order (resuming after DatabaseUnavailableError)."""
    figures = await restart_run(cluster, cluster_url, [("fast", 0), ("immediate", 0), ("immediate", 2.0)])
    print(figures)


@pytest.mark.long
async def test_restart_soak(cluster, cluster_url):
    rounds = [("fast", 0), ("immediate", 0), ("fast", 1.5), ("immediate", 2.5)] * 4
    figures = await restart_run(cluster, cluster_url, rounds, writers=10)
    print(figures)


# -- 2. a lost acknowledgement ---------------------------------------------------------------


async def wait_for_wait_event(admin: asyncpg.Connection, pid: int, wait_event: str) -> None:
    async def waiting() -> bool:
        return await admin.fetchval("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid) == wait_event

    await wait_until(waiting, f"backend {pid} to wait on {wait_event}")


async def commits_wait_for_a_standby(url: str) -> None:
    """After ``synchronous_standby_names`` is set and reloaded: wait until a commit actually waits
    (the checkpointer publishes the setting asynchronously), with a probe that is then dropped."""
    while True:
        probe = await asyncpg.connect(url)
        pid = probe.get_server_pid()
        insert = asyncio.create_task(probe.execute("INSERT INTO lost_ack_probe VALUES (1)"))
        await asyncio.sleep(0.2)
        if insert.done():  # committed without waiting: not in effect yet
            await insert
            await probe.close()
            continue
        admin = await asyncpg.connect(url)
        try:
            await wait_for_wait_event(admin, pid, "SyncRep")
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await asyncio.wait_for(insert, GUARD)
        probe.terminate()
        return


@pytest.mark.parametrize("batch", [False, True], ids=["append_event", "append_events"])
async def test_committed_but_unacknowledged_append_is_stored_once(cluster_url, batch):
    """The server commits, the client never hears back: with synchronous replication required and
    no standby, the commit is written locally and then waits (wait_event SyncRep); terminating the
    backend there keeps the commit (PostgreSQL: "the transaction has already committed locally")
    and closes the connection without an answer. The caller gets DatabaseUnavailableError; the
    retry with the same envelope answers False, and the event is stored once."""
    admin = await asyncpg.connect(cluster_url)
    await admin.execute("SET synchronous_commit = local; CREATE TABLE lost_ack_probe (x int)")
    events = [event(payload={"i": i}, entity_id="acct-1") for i in range(3 if batch else 1)]
    keys = [e.idempotency_key for e in events]
    try:
        async with PostgresEventJournal(cluster_url, pool_size=1, max_overflow=0, connect_timeout=5) as journal:
            assert await journal.append_event(event(entity_id="acct-1")) is True  # the journal's one connection is open
            (pid,) = await backend_pids(admin)
            await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            await admin.execute("SELECT pg_reload_conf()")
            await commits_wait_for_a_standby(cluster_url)

            call = asyncio.create_task(journal.append_events(events) if batch else journal.append_event(events[0]))
            await wait_for_wait_event(admin, pid, "SyncRep")  # written and committed locally, unanswered
            assert await admin.fetchval("SELECT count(*) FROM credit_events WHERE idempotency_key = ANY($1)", keys) == 0
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(DatabaseUnavailableError, match=f"127.0.0.1:{journal.url.port}"):
                await asyncio.wait_for(call, GUARD)

            await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            await admin.execute("SELECT pg_reload_conf()")
            # The commit survived the lost connection.
            assert await admin.fetchval("SELECT count(*) FROM credit_events WHERE idempotency_key = ANY($1)", keys) == len(keys)

            # The retry reaches the server (a failed call leaves no trace in the key cache) and is refused as
            # a duplicate; appends after it are stored (they would hang on SyncRep if the reset were not in
            # effect, so this also bounds the wait for the reset).
            retry = journal.append_events(events) if batch else journal.append_event(events[0])
            assert await asyncio.wait_for(retry, GUARD) == ([False] * len(events) if batch else False)
            assert await asyncio.wait_for(journal.append_event(event(entity_id="acct-1")), GUARD) is True
            stored = await read_all(journal)
            assert journal.get_metrics()["duplicates"] == len(events)
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
    assert Counter(e.idempotency_key for e in stored)[keys[0]] == 1
    assert [unstamped(e) for e in stored[1:-1]] == events
    assert [e.entity_version for e in stored] == list(range(1, len(events) + 3))


@pytest.mark.parametrize("batch", [False, True], ids=["append_event", "append_events"])
async def test_append_killed_before_commit_is_rolled_back_and_the_retry_stores_it(database_url, batch):
    """The other branch of the ambiguity: the backend dies while the INSERT runs (a BEFORE INSERT
    trigger sleeps), so nothing is committed; the retry with the same envelope stores it (True)."""
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        """
        CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payload ? 'slow' THEN PERFORM pg_sleep(600); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER slow_insert BEFORE INSERT ON credit_events FOR EACH ROW EXECUTE FUNCTION slow_insert();
        """
    )
    events = [event(payload={"i": i}, entity_id="acct-1") for i in range(3 if batch else 1)]
    events[-1] = event(payload={"i": len(events) - 1, "slow": True}, entity_id="acct-1")
    keys = [e.idempotency_key for e in events]
    try:
        async with PostgresEventJournal(database_url, pool_size=1, max_overflow=0) as journal:
            assert await journal.append_event(event(entity_id="acct-1")) is True
            (pid,) = await backend_pids(admin)
            call = asyncio.create_task(journal.append_events(events) if batch else journal.append_event(events[0]))
            await wait_for_wait_event(admin, pid, "PgSleep")
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(DatabaseUnavailableError, match="127.0.0.1"):
                await asyncio.wait_for(call, GUARD)
            assert await admin.fetchval("SELECT count(*) FROM credit_events WHERE idempotency_key = ANY($1)", keys) == 0
            await admin.execute("DROP TRIGGER slow_insert ON credit_events")
            retry = journal.append_events(events) if batch else journal.append_event(events[0])
            assert await asyncio.wait_for(retry, GUARD) == ([True] * len(events) if batch else True)
            stored = await read_all(journal)
    finally:
        await admin.close()
    assert [unstamped(e) for e in stored[1:]] == events
    assert [e.entity_version for e in stored] == list(range(1, len(events) + 2))


# -- 3. pg_terminate_backend storms under load ------------------------------------------------


async def terminate_storm(url: str, rounds: int, writers: int = 16) -> dict:
    """``writers`` tasks append through one journal (and a subscriber follows) while every
    backend of the journal is terminated, ``rounds`` times. A round waits until every writer has
    finished an append that started after the previous round, so an error is caused by the round
    current when it is raised: no call may see two errors from one round (one error per call in
    flight, the next call reconnects)."""
    journal = PostgresEventJournal(url, pool_size=6, max_overflow=6, connect_timeout=10, statement_timeout=30)
    await journal.initialize()
    admin = await asyncpg.connect(url)
    ops: list[Op] = []
    received: list[EventEnvelope] = []
    resumes: list[str] = []
    started = 0  # rounds begun (an error is tagged with this)
    completed = 0  # rounds whose terminations are done
    fresh = [0] * writers  # per writer: the `completed` value when its last successful append began
    stop = asyncio.Event()
    killed: list[int] = []

    async def write(worker: int) -> None:
        rnd = random.Random(1000 + worker)
        for n in itertools.count():
            if stop.is_set():
                return
            op = random_op(rnd, worker, n)
            ops.append(op)
            began = completed
            await op.run(journal, retry_delay=0, deadline=time.monotonic() + GUARD, tag=lambda: started)
            fresh[worker] = began

    try:
        consumer = asyncio.create_task(follow(journal, received, resumes))
        tasks = [asyncio.create_task(write(w)) for w in range(writers)]
        watch = [consumer, *tasks]
        await wait_until(lambda: len(ops) >= 200, "first appends", watch=watch)
        for r in range(1, rounds + 1):
            started = r
            killed.append(await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'eventstore%'"
            ))
            completed = r
            await wait_until(
                lambda r=r: min(fresh) >= r,
                lambda r=r: f"every writer to append after round {r} (per writer: {fresh}, {len(ops)} ops)",
                watch=watch,
            )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
        assert await journal.append_event(event(payload={"sentinel": True})) is True
        await asyncio.wait_for(consumer, GUARD)
        stored = await read_all(journal)
        metrics = journal.get_metrics()
    finally:
        stop.set()
        await admin.close()
        await journal.close()

    assert min(killed) >= 1
    check_store(stored[:-1], ops)
    check_delivery(received, stored)
    answers = Counter(op.check_answer() for op in ops)
    for op in ops:
        assert all(tag >= 1 for tag in op.error_tags), f"an error without a termination: {op.errors}"
        assert len(set(op.error_tags)) == len(op.error_tags), f"two errors from one round: {op.errors}"
        for message in op.errors:
            assert "127.0.0.1" in message and "password" not in message
    errors = sum(len(op.errors) for op in ops)
    assert errors >= 1, "no termination ever hit a call in flight"
    assert metrics["appended"] == len(stored)
    assert metrics["pool_size"] <= 12
    return {"rounds": rounds, "backends_killed": sum(killed), "ops": len(ops), "events": len(stored),
            "errors": errors, "errors_per_call": Counter(len(op.errors) for op in ops), "answers": answers,
            "subscription_resumes": len(resumes)}


async def test_terminate_backend_storm_under_load(database_url):
    figures = await terminate_storm(database_url, rounds=12)
    print(figures)


@pytest.mark.long
async def test_terminate_backend_storm_soak(database_url):
    figures = await terminate_storm(database_url, rounds=80, writers=24)
    print(figures)


async def test_more_appenders_than_connections_all_progress_and_reads_get_a_connection(database_url):
    """Regression (found by the storm test): the append lane kept every connection it ever
    touched, so with 16 appenders on 3+3 connections some appends waited forever in the pool
    queue, and so did reads."""
    async with PostgresEventJournal(database_url, pool_size=3, max_overflow=3) as journal:
        counts = [0] * 16
        stop = asyncio.Event()

        async def write(i: int) -> None:
            while not stop.is_set():
                assert await journal.append_event(event(payload={"w": i})) is True
                counts[i] += 1

        tasks = [asyncio.create_task(write(i)) for i in range(16)]
        try:
            await wait_until(lambda: min(counts) >= 5, lambda: f"every appender to progress: {counts}", watch=tasks)
            # A read under full append load gets a connection (a liveness bound, not a speed one).
            assert len(await asyncio.wait_for(read_all(journal), GUARD)) >= 80
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
        assert journal.get_metrics()["append_lane"] <= 3


# -- 4. a hung, locked or stopped server does not hang the service ---------------------------


async def test_connect_to_a_server_that_never_answers_times_out():
    """A TCP listener that accepts and never says a word: initialize() raises
    DatabaseUnavailableError naming host:port after about connect_timeout, and lets go of
    every socket it opened."""
    open_sockets = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_sockets
        open_sockets += 1
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            open_sockets -= 1
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        journal = PostgresEventJournal(f"postgresql://postgres:s3cret@127.0.0.1:{port}/db", pool_size=2,
                                       connect_timeout=1.0)
        with pytest.raises(DatabaseUnavailableError) as info:
            await asyncio.wait_for(journal.initialize(), GUARD)
        assert f"127.0.0.1:{port}" in str(info.value) and "s3cret" not in str(info.value)
        await wait_until(lambda: open_sockets == 0, "the client to close its sockets")
        with pytest.raises(DatabaseUnavailableError):  # and again: nothing was left half-open
            await asyncio.wait_for(journal.initialize(), GUARD)
    finally:
        server.close()
        await server.wait_closed()


async def test_append_blocked_by_a_lock_fails_after_statement_timeout_then_works(database_url):
    """Another session holds ACCESS EXCLUSIVE on credit_events: appends and reads give up after
    statement_timeout with an error that says so, instead of waiting forever; once the lock is
    gone the same journal works and the timed-out envelope is stored once."""
    locker = await asyncpg.connect(database_url)
    try:
        async with PostgresEventJournal(database_url, pool_size=2, max_overflow=1, statement_timeout=1.0) as journal:
            assert await journal.append_event(event()) is True
            await locker.execute("BEGIN; LOCK TABLE credit_events IN ACCESS EXCLUSIVE MODE")
            blocked = event(entity_id="acct-1")
            with pytest.raises(DatabaseUnavailableError, match="statement timeout") as info:
                await asyncio.wait_for(journal.append_event(blocked), GUARD)
            assert "127.0.0.1" in str(info.value)
            with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
                await asyncio.wait_for(journal.append_events([event(), event()]), GUARD)
            with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
                await asyncio.wait_for(read_all(journal), GUARD)
            await locker.execute("ROLLBACK")
            assert await journal.append_event(blocked) is True  # the timed-out attempt was rolled back
            assert await journal.append_event(blocked) is False
            stored = await read_all(journal)
    finally:
        await locker.close()
    assert [e.idempotency_key for e in stored].count(blocked.idempotency_key) == 1
    assert len(stored) == 2


async def test_a_stopped_backend_process_cannot_hang_an_append(cluster_url):
    """The journal's server processes are frozen (SIGSTOP: the socket stays open, nothing
    answers, the server-side statement_timeout cannot fire): the client-side bound
    (statement_timeout + 5 s) ends the call with DatabaseUnavailableError, and the next append
    runs on a fresh connection."""
    async with PostgresEventJournal(cluster_url, pool_size=2, max_overflow=1, statement_timeout=1.0) as journal:
        assert await journal.append_event(event()) is True
        admin = await asyncpg.connect(cluster_url)
        frozen = await backend_pids(admin)
        await admin.close()
        assert frozen
        try:
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            hung = event()
            with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:\d+"):
                await asyncio.wait_for(journal.append_event(hung), GUARD)
            # The pool replaced its connections: this append does not meet a frozen backend.
            assert await asyncio.wait_for(journal.append_event(event()), GUARD) is True
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        # Thawed, a backend may still run the append waiting in its socket and commit it: the
        # unanswered call is ambiguous, and the retry with the same envelope settles it.
        admin = await asyncpg.connect(cluster_url)
        try:
            await wait_until(lambda: _gone(admin, frozen), "the thawed backends to exit")
            before = await admin.fetchval("SELECT count(*) FROM credit_events WHERE idempotency_key = $1",
                                          hung.idempotency_key)
        finally:
            await admin.close()
        assert await asyncio.wait_for(journal.append_event(hung), GUARD) is (before == 0)
        stored = await read_all(journal)
        assert [e.idempotency_key for e in stored].count(hung.idempotency_key) == 1
        assert len(stored) == 3


async def _gone(admin: asyncpg.Connection, pids: list[int]) -> bool:
    return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids)


async def test_a_stopped_server_fails_promptly_then_the_same_journal_recovers(cluster, cluster_url):
    """pg_ctl stop while the journal is open (with a live subscription): the next append, read
    and the subscription raise DatabaseUnavailableError naming host:port within the liveness
    bound; after pg_ctl start the same journal appends again and the subscription, resumed from
    its last position, gets everything once."""
    where = f"127.0.0.1:{cluster.port}"
    journal = PostgresEventJournal(cluster_url, pool_size=2, max_overflow=1, connect_timeout=2.0)
    await journal.initialize()
    try:
        for i in range(5):
            assert await journal.append_event(event(payload={"i": i})) is True
        subscription = journal.subscribe()
        received = [await asyncio.wait_for(anext(subscription), GUARD) for _ in range(5)]
        await asyncio.to_thread(cluster.stop, "fast")

        stranded = event(payload={"i": 5})
        for _attempt in range(3):  # every call fails cleanly while the server is down, none hangs
            with pytest.raises(DatabaseUnavailableError, match=where):
                await asyncio.wait_for(journal.append_event(stranded), GUARD)
        with pytest.raises(DatabaseUnavailableError, match=where):
            await asyncio.wait_for(journal.append_events([event(), event()]), GUARD)
        with pytest.raises(DatabaseUnavailableError, match=where):
            await asyncio.wait_for(read_all(journal), GUARD)
        with pytest.raises(DatabaseUnavailableError, match=where):
            await asyncio.wait_for(anext(subscription), GUARD)

        await asyncio.to_thread(cluster.start)
        assert await asyncio.wait_for(journal.append_event(stranded), GUARD) is True
        assert await journal.append_event(event(payload={"i": 6})) is True
        resumed = journal.subscribe(after=received[-1].position)
        received += [await asyncio.wait_for(anext(resumed), GUARD) for _ in range(2)]
        await resumed.aclose()
        stored = await read_all(journal)
    finally:
        await journal.close()
    assert [e.payload["i"] for e in stored] == list(range(7))
    check_delivery(received, stored)
