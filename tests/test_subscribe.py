"""subscribe(): catch-up then live, never skipping or repeating a position, in both backends,
under concurrent writers in other pools and processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap

import asyncpg
import pytest

from eventstore import FileEventJournal, PostgresEventJournal

from .helpers import event, read_all

GUARD = 60  # seconds: a hang fails the test instead of blocking the run (not a timing assertion)


async def take(subscription, count: int) -> list:
    got = []
    async for e in subscription:
        got.append(e)
        if len(got) == count:
            break
    return got


async def take_until(subscription, last_position: int) -> list:
    got = []
    async for e in subscription:
        got.append(e)
        if e.position >= last_position:
            break
    return got


def assert_strictly_increasing(events) -> None:
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))


async def test_catch_up_then_live(journal):
    for i in range(5):
        await journal.append_event(event(payload={"i": i}, entity_id="s"))
    reader = asyncio.create_task(take(journal.subscribe(), 12))
    await asyncio.sleep(0.05)
    for i in range(5, 9):
        await journal.append_event(event(payload={"i": i}, entity_id="s"))
    await journal.append_events([event(payload={"i": i}) for i in range(9, 12)])
    got = await asyncio.wait_for(reader, GUARD)
    assert got == await read_all(journal)
    assert [e.payload["i"] for e in got] == list(range(12))


async def test_subscribe_from_the_middle(journal):
    for i in range(6):
        await journal.append_event(event(payload={"i": i}))
    stored = await read_all(journal)
    middle = stored[2].position
    reader = asyncio.create_task(take(journal.subscribe(after=middle), 5))
    await journal.append_event(event(payload={"i": 6}))
    await journal.append_event(event(payload={"i": 6}, idempotency_key=stored[0].idempotency_key))  # duplicate
    await journal.append_event(event(payload={"i": 7}))
    got = await asyncio.wait_for(reader, GUARD)
    assert [e.payload["i"] for e in got] == [3, 4, 5, 6, 7]
    assert got == (await read_all(journal, after=middle))


async def test_journal_close_ends_a_subscription(open_journal):
    journal = await open_journal()
    await journal.append_event(event())

    first = asyncio.Event()

    async def drain():
        got = []
        async for e in journal.subscribe():
            got.append(e)
            first.set()
        return got

    reader = asyncio.create_task(drain())
    await asyncio.wait_for(first.wait(), GUARD)
    await journal.close()
    got = await asyncio.wait_for(reader, GUARD)
    assert len(got) == 1


async def subscription_backends(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'eventstore-subscription'"
        )
    finally:
        await conn.close()


async def wait_for_backends(database_url: str, count: int) -> None:
    for _ in range(GUARD * 20):
        if await subscription_backends(database_url) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} subscription connections")


async def test_break_and_cancel_release_the_connection(database_url):
    async with PostgresEventJournal(database_url, pool_size=2) as journal:
        for _ in range(3):
            await journal.append_event(event())
        async for _e in journal.subscribe():
            assert await subscription_backends(database_url) == 1
            break
        await wait_for_backends(database_url, 0)

        task = asyncio.create_task(take(journal.subscribe(), 100))
        await wait_for_backends(database_url, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_backends(database_url, 0)
        assert not journal.connections.listeners


async def test_a_dropped_connection_resumes_where_it_stopped(database_url):
    async with PostgresEventJournal(database_url, pool_size=2) as journal:
        reader = asyncio.create_task(take(journal.subscribe(), 20))
        for i in range(10):
            await journal.append_event(event(payload={"i": i}))
        await wait_for_backends(database_url, 1)
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'eventstore-subscription'"
            )
        finally:
            await admin.close()
        for i in range(10, 20):
            await journal.append_event(event(payload={"i": i}))
        got = await asyncio.wait_for(reader, GUARD)
        assert got == await read_all(journal)


async def test_a_subscription_that_cannot_reconnect_raises_database_unavailable(database_url):
    from eventstore import DatabaseUnavailableError
    from eventstore.dsn import parse_database_url

    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_event(event())
        subscription = journal.subscribe()
        assert (await anext(subscription)).position == 1
        journal.errors.url = parse_database_url("postgresql://postgres@127.0.0.1:1/nowhere")  # the server "moved away"
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'eventstore-subscription'"
            )
        finally:
            await admin.close()
        with pytest.raises(DatabaseUnavailableError, match="127.0.0.1:1"):
            await asyncio.wait_for(anext(subscription), GUARD)


async def test_a_late_committing_low_position_is_not_skipped(database_url):
    """A transaction takes a low id, sleeps in a row trigger, commits after later ids committed."""
    admin = await asyncpg.connect(database_url)
    await admin.execute(
        """
        CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payload ? 'slow' THEN PERFORM pg_sleep((NEW.payload->>'slow')::float); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER slow_insert BEFORE INSERT ON credit_events FOR EACH ROW EXECUTE FUNCTION slow_insert();
        """
    )
    await admin.close()
    async with PostgresEventJournal(database_url, pool_size=4) as writer, \
            PostgresEventJournal(database_url, pool_size=2) as reader_journal:
        await writer.append_event(event(payload={"i": 0}))
        reader = asyncio.create_task(take(reader_journal.subscribe(), 8))
        slow = asyncio.create_task(writer.append_event(event(payload={"i": 1, "slow": 1.5})))
        slow_batch = asyncio.create_task(writer.append_events([event(payload={"i": 2, "slow": 0.8})]))
        await asyncio.sleep(0.3)  # both hold their ids now
        for i in range(3, 8):
            await writer.append_event(event(payload={"i": i}))
        assert await slow and await slow_batch == [True]
        got = await asyncio.wait_for(reader, GUARD)
        stored = await read_all(writer)
        assert got == stored
        by_position = sorted(stored, key=lambda e: e.position)
        assert [e.payload["i"] for e in by_position][:3] == [0, 1, 2]  # the slow ones hold low positions


async def test_torture_concurrent_writers_and_two_subscribers(database_url):
    """Four journals (four pools) with sixteen writers: ~2000 appends, repeated keys, batches;
    one subscriber from 0 and one from the middle each get exactly the stored events after
    their start, once each, in strictly increasing positions."""
    writers = [PostgresEventJournal(database_url, pool_size=4, max_overflow=0) for _ in range(4)]
    for w in writers:
        await w.initialize()
    keys = [f"key-{i}" for i in range(1800)]

    async def write(journal, worker: int) -> None:
        local = random.Random(worker)
        for n in range(110):
            entity = f"e{local.randrange(20)}"
            if local.random() < 0.2:
                batch = [event(payload={"w": worker, "n": n, "b": j}, idempotency_key=local.choice(keys), entity_id=entity)
                         for j in range(local.randrange(1, 6))]
                await journal.append_events(batch)
            else:
                await journal.append_event(event(payload={"w": worker, "n": n}, idempotency_key=local.choice(keys),
                                                 entity_id=entity))

    async def follow(journal, after: int, into: list) -> None:
        async for e in journal.subscribe(after=after):
            into.append(e)
            if e.payload.get("sentinel"):
                return

    try:
        async with PostgresEventJournal(database_url, pool_size=2) as watcher:
            from_zero: list = []
            from_middle: list = []
            first = asyncio.create_task(follow(watcher, 0, from_zero))
            tasks = [asyncio.create_task(write(writers[i % 4], i)) for i in range(16)]
            while len(await read_all(watcher)) < 500:
                await asyncio.sleep(0.01)
            middle = (await read_all(watcher))[-1].position
            second = asyncio.create_task(follow(watcher, middle, from_middle))
            await asyncio.gather(*tasks)
            await writers[0].append_event(event(payload={"sentinel": True}))
            await asyncio.wait_for(asyncio.gather(first, second), GUARD)
            stored = await read_all(watcher)
    finally:
        for w in writers:
            await w.close()
    assert len(stored) > 1000
    assert_strictly_increasing(from_zero)
    assert_strictly_increasing(from_middle)
    missing = sorted({e.position for e in stored} - {e.position for e in from_zero})
    extra = sorted({e.position for e in from_zero} - {e.position for e in stored})
    assert (missing, extra) == ([], [])
    assert from_zero == stored
    assert from_middle == [e for e in stored if e.position > middle]


async def test_file_subscriber_follows_another_process(tmp_path):
    path = tmp_path / "events.jsonl"
    async with FileEventJournal(path) as writer:
        for i in range(3):
            await writer.append_event(event(payload={"i": i}))
    script = textwrap.dedent(f"""
        import asyncio
        from eventstore import EventEnvelope, FileEventJournal

        async def main():
            async with FileEventJournal({str(path)!r}) as journal:
                for i in range(3, 23):
                    e = EventEnvelope.new("t", {{"i": i}}, actor_id="other")
                    if i % 5 == 0:
                        await journal.append_events([e, EventEnvelope.new("t", {{"i": i, "twin": 1}}, actor_id="other")])
                    else:
                        await journal.append_event(e)
                    await asyncio.sleep(0.01)

        asyncio.run(main())
    """)
    async with FileEventJournal(path, read_only=True) as reader:
        follower = asyncio.create_task(take(reader.subscribe(after=1), 26))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
        assert await asyncio.wait_for(proc.wait(), GUARD) == 0
        got = await asyncio.wait_for(follower, GUARD)
    async with FileEventJournal(path, read_only=True) as check:
        stored = await read_all(check)
    assert len(stored) == 27
    assert got == stored[1:]
    assert_strictly_increasing(got)


def test_cli_tail_prints_jsonl_and_exits_0_on_ctrl_c(tmp_path):
    import json

    path = tmp_path / "events.jsonl"

    async def fill():
        async with FileEventJournal(path) as journal:
            for i in range(3):
                await journal.append_event(event(payload={"i": i}))

    asyncio.run(fill())
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventstore", "tail", "--backend", "file", "--path", str(path), "--after", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "EVENT_JOURNAL_BACKEND": "file"},
        # A shell without job control starts background jobs with SIGINT ignored, and the child
        # would inherit that: give it the disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [line["payload"]["i"] for line in lines] == [1, 2]
        assert [line["position"] for line in lines] == [2, 3]
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(GUARD)
    assert rc == 0, proc.stderr.read()


async def test_a_transaction_in_another_database_does_not_hold_delivery(database_url):
    """Only transactions connected to this database can insert here: a writing transaction left
    open in another database (an xid below every later marker) does not stop delivery."""
    other = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.fetchval("SELECT pg_current_xact_id()")
        async with PostgresEventJournal(database_url, pool_size=2) as journal:
            reader = asyncio.create_task(take(journal.subscribe(), 3))
            for i in range(3):
                await journal.append_event(event(payload={"i": i}))
            got = await asyncio.wait_for(reader, GUARD)
            assert got == await read_all(journal)
        await transaction.rollback()
    finally:
        await other.close()
