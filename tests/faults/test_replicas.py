"""Reads on hot standbys (CONTRACT.md "Reads on hot standbys", postgres/replicas.py), against a
real primary and a real streaming standby (tests/conftest.py ``standby_pair``): a read sees every
append that returned before it began, a standby that lags is waited for up to
``max_replica_lag`` and then passed over, one that is down, promoted or of another cluster serves
nothing, and multi-host URLs are read as libpq reads them."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from eventstore import ConfigurationError, PostgresEventJournal, create_event_journal
from eventstore.dsn import parse_database_url
from eventstore.postgres.replicas import RETRY_AFTER, split_replica_urls

from ..conftest import wait_replayed
from ..helpers import event as new_event

GUARD = 60  # seconds: a hang fails the test instead of blocking the run (not a timing assertion)


def event(entity_id: str, event_type: str = "credits.minted"):
    return new_event(event_type, entity_id=entity_id)


async def open_replicated(primary_url: str, replicas: list[str], **options) -> PostgresEventJournal:
    journal = PostgresEventJournal(primary_url, replica_urls=replicas, pool_size=3, **options)
    await journal.initialize()
    return journal


def replica_state(journal: PostgresEventJournal) -> tuple[str, int, int]:
    """(the standby's state, pages it served, pages read on the primary instead)."""
    metrics = journal.get_metrics()
    replica = metrics["replicas"][0]
    return replica["state"], replica["pages"], metrics["replica_fallback_pages"]


# -- URLs ------------------------------------------------------------------------------------


def test_a_multi_host_url_names_every_host_and_never_its_password():
    url = parse_database_url("postgresql://app:s3cr%40t@db1:5433,db2,[::1]:6000/credits?target_session_attrs=read-write")
    assert url.hosts == (("db1", 5433), ("db2", 5432), ("::1", 6000))
    assert (url.host, url.port, url.database) == ("db1", 5433, "credits")
    assert url.where == "db1:5433,db2:5432,::1:6000/credits"
    assert "s3cr" not in str(url) and "s3cr" not in repr(url)
    assert url.asyncpg_dsn() == "postgresql://app:s3cr%40t@db1:5433,db2,[::1]:6000/credits?target_session_attrs=read-write"
    with pytest.raises(ConfigurationError, match="malformed database URL") as refused:
        parse_database_url("postgresql://app:s3cr3t@db1:5433,db2:x/credits")
    assert "s3cr3t" not in str(refused.value)


def test_replica_urls_are_split_at_each_url_and_read_from_the_environment(monkeypatch):
    two = "postgresql://r1:5432,r2:5432/db?target_session_attrs=standby, postgres://r3/db"
    assert split_replica_urls(two) == ["postgresql://r1:5432,r2:5432/db?target_session_attrs=standby", "postgres://r3/db"]
    assert split_replica_urls(["postgresql://r1/db"]) == ["postgresql://r1/db"]
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://r1/db,postgresql://r2/db")
    assert split_replica_urls(None) == ["postgresql://r1/db", "postgresql://r2/db"]
    assert split_replica_urls([]) == []
    monkeypatch.delenv("DATABASE_REPLICA_URLS")
    assert split_replica_urls(None) == []


async def test_replica_options_are_checked(tmp_path):
    with pytest.raises(ConfigurationError, match="need the postgres backend"):
        await create_event_journal("file", path=tmp_path / "e.jsonl", replica_urls=["postgresql://r1/db"])
    with pytest.raises(ConfigurationError, match="max_replica_lag"):
        PostgresEventJournal("postgresql://p/db", replica_urls=["postgresql://r1/db"], max_replica_lag=-1)
    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        PostgresEventJournal("postgresql://p/db", replica_urls=["mysql://r1/db"])


# -- reads through a standby -------------------------------------------------------------------


async def test_every_read_sees_the_append_that_returned_before_it_through_a_late_standby(replicated_urls, delayed_standby):
    """The standby applies commits 100 ms late; every read still sees the append made just
    before it, served by the standby (which was waited for), never by the primary."""
    primary_url, standby_url = replicated_urls
    delayed_standby(100)
    journal = await open_replicated(primary_url, [standby_url], max_replica_lag=10)
    try:
        async with asyncio.timeout(GUARD):
            for i in range(5):
                stored = await journal.append(event(f"agent-{i}", event_type="credits.minted"))
                assert [e.position async for e in journal.read_entity(f"agent-{i}")] == [stored.position]
                stored = await journal.append(event(f"agent-{i}"))
                assert [e.position async for e in journal.read_events(after=stored.position - 1)] == [stored.position]
                stored = await journal.append(event(f"agent-{i}", event_type="credits.spent"))
                found = [e.position async for e in journal.query_events(event_type="credits.spent", after=stored.position - 1)]
                assert found == [stored.position]
                await journal.save_snapshot(f"balances-{i}", stored.position, {"n": i})
                snapshot = await journal.load_snapshot(f"balances-{i}")
                assert snapshot is not None and snapshot.position == stored.position
        state, pages, fallback = replica_state(journal)
        assert (state, fallback) == ("ok", 0) and pages >= 20
    finally:
        await journal.close()


async def test_a_subscription_through_a_late_standby_skips_and_repeats_nothing(replicated_urls, delayed_standby):
    primary_url, standby_url = replicated_urls
    delayed_standby(30)
    journal = await open_replicated(primary_url, [standby_url], max_replica_lag=10)
    writers = [await open_replicated(primary_url, []) for _ in range(4)]
    try:
        async def write(n: int, writer: PostgresEventJournal) -> list[int]:
            positions = []
            for i in range(40):
                if i % 5 == 0:
                    stored = await writer.append_many([event(f"w{n}-{i}-{j}") for j in range(3)])
                    positions += [s.position for s in stored]
                else:
                    positions.append((await writer.append(event(f"w{n}-{i}"))).position)
            return positions

        received: list[int] = []

        async def follow(expected: int) -> None:
            async for envelope in journal.subscribe(after=0):
                received.append(envelope.position)
                if len(received) == expected:
                    return

        async with asyncio.timeout(GUARD):
            written = sorted(p for ps in await asyncio.gather(*(write(n, w) for n, w in enumerate(writers))) for p in ps)
            await follow(len(written))
        assert received == written  # every position once, in order
        state, pages, fallback = replica_state(journal)
        assert (state, fallback) == ("ok", 0) and pages > 0
    finally:
        for j in [journal, *writers]:
            await j.close()


# -- standbys that cannot serve ----------------------------------------------------------------


async def test_a_paused_standby_delays_reads_up_to_the_bound_then_they_move_to_the_primary(replicated_urls, standby_pair):
    primary_url, standby_url = replicated_urls
    primary, standby = standby_pair
    journal = await open_replicated(primary_url, [standby_url], max_replica_lag=1.0)
    subscriber = await open_replicated(primary_url, [standby_url], max_replica_lag=1.0)
    try:
        first = await journal.append(event("agent-1"))
        assert [e.position async for e in journal.read_events()] == [first.position]
        received: list[int] = []
        arrived = asyncio.Event()

        async def follow() -> None:
            async for envelope in subscriber.subscribe(after=0):
                received.append(envelope.position)
                arrived.set()

        follower = asyncio.create_task(follow())
        async with asyncio.timeout(GUARD):
            await arrived.wait()
        standby.sql("SELECT pg_wal_replay_pause()")
        try:
            second = await journal.append(event("agent-2"))
            async with asyncio.timeout(GUARD):
                started = time.monotonic()
                assert [e.position async for e in journal.read_events()] == [first.position, second.position]
                waited = time.monotonic() - started
                # Passed over now: the next read goes to the primary without waiting again.
                started = time.monotonic()
                assert [e.position async for e in journal.read_entity("agent-2")] == [second.position]
                again = time.monotonic() - started
                while received[-1] != second.position:  # the subscription, too, reads it on the primary
                    arrived.clear()
                    await arrived.wait()
            assert waited >= 1.0 and again < 1.0, (waited, again)
            state, _, fallback = replica_state(journal)
            assert state == "behind" and fallback >= 2
        finally:
            standby.sql("SELECT pg_wal_replay_resume()")
        wait_replayed(primary, standby)
        await asyncio.sleep(RETRY_AFTER + 0.1)
        _, pages_before, fallback_before = replica_state(journal)
        assert [e.position async for e in journal.read_events()] == [first.position, second.position]
        state, pages, fallback = replica_state(journal)
        assert (state, pages, fallback) == ("ok", pages_before + 1, fallback_before)
        assert received == [first.position, second.position]
        follower.cancel()
    finally:
        await subscriber.close()
        await journal.close()


async def test_a_stopped_standby_is_passed_over_and_read_from_again_once_back(replicated_urls, standby_pair, caplog):
    primary_url, standby_url = replicated_urls
    primary, standby = standby_pair
    journal = await open_replicated(primary_url, [standby_url])
    try:
        first = await journal.append(event("agent-1"))
        assert [e.position async for e in journal.read_events()] == [first.position]
        standby.stop("immediate")
        try:
            with caplog.at_level(logging.WARNING, logger="eventstore.replicas"):
                second = await journal.append(event("agent-2"))
                async with asyncio.timeout(GUARD):
                    assert [e.position async for e in journal.read_events()] == [first.position, second.position]
                    assert [e.position async for e in journal.read_entity("agent-1")] == [first.position]
            state, _, fallback = replica_state(journal)
            assert state == "down" and fallback >= 2
            assert "passed over (down)" in caplog.text
        finally:
            standby.start()
        wait_replayed(primary, standby)
        await asyncio.sleep(RETRY_AFTER + 0.1)
        async with asyncio.timeout(GUARD):
            assert [e.position async for e in journal.read_events()] == [first.position, second.position]
        state, _, fallback_after = replica_state(journal)
        assert state == "ok" and fallback_after == fallback
    finally:
        await journal.close()


async def test_a_server_of_another_cluster_is_never_read_from(replicated_urls, database_url, caplog):
    """The shared test server given as a replica: same schema, other system identifier."""
    primary_url, _ = replicated_urls
    with caplog.at_level(logging.WARNING, logger="eventstore.replicas"):
        journal = await open_replicated(primary_url, [database_url])
    try:
        stored = await journal.append(event("agent-1"))
        await asyncio.sleep(RETRY_AFTER + 0.1)
        for _ in range(2):
            assert [e.position async for e in journal.read_events()] == [stored.position]
        state, pages, fallback = replica_state(journal)
        assert (state, pages) == ("another cluster", 0) and fallback == 2
        assert "never read from" in caplog.text
    finally:
        await journal.close()


async def test_a_server_not_in_recovery_serves_no_replica_read(replicated_urls):
    """The primary itself given as a replica (as a promoted standby would be)."""
    primary_url, _ = replicated_urls
    journal = await open_replicated(primary_url, [primary_url])
    try:
        stored = await journal.append(event("agent-1"))
        assert [e.position async for e in journal.read_events()] == [stored.position]
        state, pages, fallback = replica_state(journal)
        assert (state, pages, fallback) == ("not a standby", 0, 1)
    finally:
        await journal.close()


async def test_an_unreachable_replica_does_not_stop_the_journal_and_its_password_is_never_logged(replicated_urls, caplog):
    from .pgcluster import free_port

    primary_url, _ = replicated_urls
    nowhere = f"postgresql://app:hunter2secret@127.0.0.1:{free_port()}/credits"
    with caplog.at_level(logging.WARNING, logger="eventstore.replicas"):
        journal = await open_replicated(primary_url, [nowhere])
        try:
            stored = await journal.append(event("agent-1"))
            assert [e.position async for e in journal.read_events()] == [stored.position]
            assert replica_state(journal)[0] == "down"
            assert journal.get_metrics()["replicas"][0]["database"] == f"127.0.0.1:{nowhere.split(':')[3].split('/')[0]}/credits"
        finally:
            await journal.close()
    assert "passed over (down)" in caplog.text and "hunter2secret" not in caplog.text


async def test_closing_the_journal_ends_a_subscription_through_a_standby_quietly(replicated_urls, standby_pair):
    primary_url, standby_url = replicated_urls
    database = standby_url.rsplit("/", 1)[1]
    journal = await open_replicated(primary_url, [standby_url])
    await journal.append(event("agent-1"))
    received: list[int] = []

    async def follow() -> None:
        async for envelope in journal.subscribe(after=0):
            received.append(envelope.position)

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(GUARD):
        while not received:
            await asyncio.sleep(0.01)
        await journal.close()
        await follower  # returns: no error, no hang
    assert received == [1]
    # The standby's pool is closed, and the subscription's last step did not open it again.
    await asyncio.sleep(0.2)
    count = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND application_name = 'eventstore-replica'"
    assert standby_pair[1].sql(count) == "0"
