"""PostgreSQL-only behaviour: the database refuses to change history, the schema gate, search_path
isolation, connection errors without passwords, the idempotency cache."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventstore import (
    ConcurrencyError,
    ConfigurationError,
    DatabaseUnavailableError,
    PostgresEventJournal,
    SchemaNotReadyError,
    create_event_journal,
)
from eventstore.postgres.schema import downgrade_schema, schema_status, upgrade_schema

from .helpers import event, read_all


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE credit_events SET actor_id = 'mallory'",
        "DELETE FROM credit_events",
        "TRUNCATE credit_events",
    ],
)
async def test_database_refuses_to_change_history(database_url, statement):
    async with PostgresEventJournal(database_url) as journal:
        await journal.append_event(event())
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM credit_events") == 1
    finally:
        await conn.close()


async def test_missing_schema_names_the_fix(empty_database_url):
    with pytest.raises(SchemaNotReadyError, match="eventstore schema upgrade"):
        await PostgresEventJournal(empty_database_url).initialize()


async def test_upgrade_then_downgrade_then_not_ready(empty_database_url):
    assert upgrade_schema(empty_database_url) == [
        "0001_credit_events", "0002_subscription_fence", "0003_snapshots", "0004_roles", "0005_event_type_255",
        "0006_checkpoints", "0007_fence_waits_for_writers", "0008_hardened_functions", "0009_keyset_indexes",
        "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]
    assert upgrade_schema(empty_database_url) == []
    assert all(state.applied for state in schema_status(empty_database_url))
    async with PostgresEventJournal(empty_database_url) as journal:
        assert await journal.append_event(event()) is True
    assert downgrade_schema(empty_database_url) == [
        "0014_single_statement_append", "0013_set_based_entity_locks", "0012_set_based_batch_append", "0011_group_append", "0010_definer_appends_and_schema_roles", "0009_keyset_indexes", "0008_hardened_functions", "0007_fence_waits_for_writers", "0006_checkpoints", "0005_event_type_255", "0004_roles", "0003_snapshots", "0002_subscription_fence", "0001_credit_events"]
    with pytest.raises(SchemaNotReadyError):
        await PostgresEventJournal(empty_database_url).initialize()


async def test_schema_option_isolates_stores_in_one_database(empty_database_url):
    for schema in ("tenant_a", "tenant_b"):
        upgrade_schema(empty_database_url, schema)
    async with PostgresEventJournal(empty_database_url, schema="tenant_a") as a, \
            PostgresEventJournal(empty_database_url, schema="tenant_b") as b:
        await a.append_event(event(payload={"tenant": "a"}))
        assert [e.payload for e in await read_all(a)] == [{"tenant": "a"}]
        assert await read_all(b) == []
    with pytest.raises(SchemaNotReadyError):
        await PostgresEventJournal(empty_database_url, schema="tenant_c").initialize()


async def test_unreachable_server_names_host_and_port_but_never_the_password():
    url = "postgresql+asyncpg://app:s3cr3t-pw@127.0.0.1:1/nowhere"
    journal = PostgresEventJournal(url, connect_timeout=2)
    with pytest.raises(DatabaseUnavailableError) as info:
        await journal.initialize()
    assert "127.0.0.1:1" in str(info.value) and "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in repr(journal) and "s3cr3t-pw" not in str(journal.get_metrics())


async def test_wrong_password_message_has_no_password(database_url):
    await_conn = await asyncpg.connect(database_url)
    try:
        await await_conn.execute("DROP ROLE IF EXISTS es_pw_test")
        await await_conn.execute("CREATE ROLE es_pw_test LOGIN PASSWORD 'right-one'")
    finally:
        await await_conn.close()
    bad = database_url.replace("postgresql://postgres@", "postgresql://es_pw_test:Wr0ng-Secret@")
    try:
        journal = PostgresEventJournal(bad, connect_timeout=3)
        try:
            await journal.initialize()
        except Exception as exc:  # trust auth may let it in; either way no password may leak
            assert "Wr0ng-Secret" not in str(exc)
        else:
            await journal.close()
    finally:
        conn = await asyncpg.connect(database_url)
        await conn.execute("DROP ROLE IF EXISTS es_pw_test")
        await conn.close()


@pytest.mark.parametrize("url", ["mysql://x@h/db", "postgresql://user@host:notaport/db", "", "sqlite:///x.db"])
async def test_bad_urls_are_configuration_errors_listing_what_is_accepted(url):
    with pytest.raises(ConfigurationError) as info:
        PostgresEventJournal(url)
    assert "postgresql" in str(info.value) or "URL" in str(info.value)


async def test_factory_accepts_asyncpg_urls_and_env(database_url, monkeypatch):
    monkeypatch.setenv("EVENT_JOURNAL_BACKEND", "postgres")
    monkeypatch.setenv("DATABASE_URL", database_url.replace("postgresql://", "postgresql+asyncpg://"))
    journal = await create_event_journal(pool_size=2, max_overflow=1)
    try:
        assert isinstance(journal, PostgresEventJournal)
        assert await journal.append_event(event()) is True
        metrics = journal.get_metrics()
        assert metrics["pool_max_size"] == 3 and metrics["pool_size"] >= 2
    finally:
        await journal.close()
    with pytest.raises(ConfigurationError, match="file, postgres"):
        await create_event_journal("cassandra")
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        await create_event_journal("postgres")


async def test_a_database_url_without_a_backend_means_postgres(database_url, tmp_path, monkeypatch):
    """One resolution rule (the CLI uses it too): an explicit backend, else PostgreSQL when a URL is
    given, else $EVENT_JOURNAL_BACKEND, else the file."""
    monkeypatch.delenv("EVENT_JOURNAL_BACKEND", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EVENT_JOURNAL_PATH", str(tmp_path / "env.jsonl"))
    async with await create_event_journal(database_url=database_url, pool_size=1) as journal:
        assert isinstance(journal, PostgresEventJournal)
    async with await create_event_journal("file", database_url=database_url) as journal:
        assert journal.backend == "file" and journal.get_metrics()["path"] == str(tmp_path / "env.jsonl")
    monkeypatch.setenv("DATABASE_URL", database_url)  # from the environment it does not choose the backend
    async with await create_event_journal() as journal:
        assert journal.backend == "file"


async def test_known_duplicate_costs_no_round_trip_and_cache_is_bounded(database_url):
    async with PostgresEventJournal(database_url, idempotency_cache_size=10) as journal:
        stored = [event() for _ in range(30)]
        for e in stored:
            await journal.append_event(e)
        assert journal.get_metrics()["idempotency_cache_size"] == 10
        assert await journal.append_event(stored[-1]) is False
        assert journal.get_metrics()["idempotency_cache_hits"] == 1
        assert await journal.append_event(stored[0]) is False  # evicted: the database answers
        assert journal.get_metrics()["idempotency_cache_hits"] == 1
        assert journal.get_metrics()["duplicates"] == 2


async def test_version_conflicts_across_separate_pools_are_never_swallowed(database_url):
    journals = [PostgresEventJournal(database_url, pool_size=4) for _ in range(3)]
    for j in journals:
        await j.initialize()
    try:
        async def attempt(j: PostgresEventJournal, i: int) -> bool:
            try:
                return await j.append_event(event(entity_id="shared", payload={"i": i}), expected_version=0)
            except ConcurrencyError:
                return False
        results = await asyncio.gather(*(attempt(journals[i % 3], i) for i in range(30)))
        assert results.count(True) == 1
        assert [e.entity_version for e in await read_all(journals[0])] == [1]
    finally:
        for j in journals:
            await j.close()


async def test_pool_never_exceeds_pool_size_plus_overflow(database_url):
    async with PostgresEventJournal(database_url, pool_size=2, max_overflow=3) as journal:
        await asyncio.gather(*(journal.append_event(event(entity_id=f"e{i}")) for i in range(100)))
        conn = await asyncpg.connect(database_url)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventstore' AND datname = current_database()"
            )
        finally:
            await conn.close()
        assert 2 <= count <= 5


async def test_terminated_backends_cost_at_most_one_error_per_call_then_recover(database_url):
    async with PostgresEventJournal(database_url, pool_size=3, max_overflow=0) as journal:
        await asyncio.gather(*(journal.append_event(event()) for _ in range(6)))
        admin = await asyncpg.connect(database_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'eventstore' AND datname = current_database()"
            )
        finally:
            await admin.close()
        assert killed >= 1
        retry = event()
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(await journal.append_event(retry))
            except DatabaseUnavailableError as exc:
                assert "127.0.0.1" in str(exc)
                outcomes.append("unavailable")
        # At most one failure, then the stored-once answer of an idempotent retry.
        assert outcomes.count("unavailable") <= 1 and outcomes.count(True) == 1
        assert len(await read_all(journal)) == 7


async def test_replay_read_ahead_is_released_when_the_reader_stops_early(database_url):
    async with PostgresEventJournal(database_url, pool_size=2, max_overflow=0, page_size=10) as journal:
        await journal.append_events([event(payload={"i": i}) for i in range(55)])
        seen = []
        async for e in journal.read_events():
            seen.append(e.payload["i"])
            if len(seen) == 15:
                break  # a page is being fetched ahead right now
        assert seen == list(range(15))
        assert [e.payload["i"] async for e in journal.read_events(after=50)] == [50, 51, 52, 53, 54]
        assert len([e async for e in journal.read_events()]) == 55  # pages of 10, ahead by one
    assert journal.get_metrics()["pool_size"] == 0  # closed without waiting on a stray fetch


async def test_unix_socket_urls_reach_the_server_for_schema_and_journal():
    """libpq's spelling of a socket (empty host, ?host=/dir) must survive the URL rewriting."""
    from .faults.pgcluster import ThrowawayCluster

    with ThrowawayCluster() as pg:
        url = f"postgresql://postgres@/postgres?host={pg.root}&port={pg.port}"
        assert upgrade_schema(url)  # psycopg via yoyo
        async with PostgresEventJournal(url, pool_size=1) as journal:
            assert await journal.append_event(event())
            assert len(await read_all(journal)) == 1
            assert journal.get_metrics()["database"] == f"{pg.root}:{pg.port}/postgres"


async def test_libpq_connect_timeout_in_the_url_is_the_default_and_not_sent_to_the_server(database_url):
    # asyncpg would pass ?connect_timeout= to the server as a setting, which refuses it.
    async with PostgresEventJournal(database_url + "?connect_timeout=7", pool_size=1) as journal:
        assert await journal.append_event(event())
        assert journal.connections.connect_timeout == 7.0
    async with PostgresEventJournal(database_url + "?connect_timeout=7", pool_size=1, connect_timeout=3) as journal:
        assert journal.connections.connect_timeout == 3.0


async def test_a_sequence_that_went_back_is_fenced_from_scratch(database_url):
    """The journal remembers the highest settled mark to skip the wait at an idle head; if the
    sequence goes back below it (a restore, a failover to a lagging standby), that shortcut would
    vouch for an id still in flight. It must wait for it instead."""
    admin = await asyncpg.connect(database_url)
    held = await asyncpg.connect(database_url)
    try:
        async with PostgresEventJournal(database_url, pool_size=2) as journal:
            await journal.append_event(event())
            await admin.execute("SELECT setval('credit_events_id_seq', 100)")
            assert await journal.last_position() == 100
            await admin.execute("SELECT setval('credit_events_id_seq', 10)")
            await held.execute("BEGIN")
            await held.execute(
                """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id,
                                              correlation_id, payload)
                   VALUES (gen_random_uuid(), 'held', 'credits.minted', now(), 'tester', gen_random_uuid(), '{}')""")
            polled = asyncio.create_task(journal.last_position())
            await asyncio.sleep(0.3)
            assert not polled.done(), "vouched for position 11 while it was still uncommitted"
            await held.execute("COMMIT")
            assert await asyncio.wait_for(polled, 30) == 11
            assert [e.position for e in await read_all(journal)] == [1, 11]
    finally:
        await held.close()
        await admin.close()


async def test_a_long_transaction_on_another_table_does_not_hold_back_reads(database_url):
    """The fence waits for writers of credit_events only: an open write transaction on another
    table (it holds an xid older than the fence's marker) delays no read, while an open insert
    into credit_events does, until it ends."""
    other = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(database_url)
    try:
        await other.execute("CREATE TABLE unrelated (n int)")
        await other.execute("BEGIN")
        await other.execute("INSERT INTO unrelated VALUES (1)")  # an xid, held open
        async with PostgresEventJournal(database_url, pool_size=2, statement_timeout=2.0) as journal:
            await journal.append_event(event())
            assert await asyncio.wait_for(journal.last_position(), 1.5) == 1
            assert [e.position for e in await asyncio.wait_for(read_all(journal), 1.5)] == [1]

            await writer.execute("BEGIN")
            await writer.execute(
                """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id,
                                              correlation_id, payload)
                   VALUES (gen_random_uuid(), 'held', 'credits.minted', now(), 'tester', gen_random_uuid(), '{}')""")
            await journal.append_event(event())  # position 3, committed behind the open position 2
            polled = asyncio.create_task(journal.last_position())
            await asyncio.sleep(0.3)
            assert not polled.done()  # position 2 may still commit: wait for it
            await writer.execute("COMMIT")
            assert await asyncio.wait_for(polled, 1.5) == 3
        await other.execute("ROLLBACK")
    finally:
        await other.close()
        await writer.close()


async def test_a_read_behind_a_long_writer_fails_after_statement_timeout_saying_why(database_url):
    """A transaction that inserted into credit_events and stays open holds back position-order
    reads (a lower position may still commit): after statement_timeout they fail with one clear
    error instead of hanging, and read everything once it ends."""
    held = await asyncpg.connect(database_url)
    try:
        async with PostgresEventJournal(database_url, pool_size=2, statement_timeout=1.0) as journal:
            await journal.append_event(event())
            await held.execute("BEGIN")
            await held.execute(
                """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id,
                                              correlation_id, payload)
                   VALUES (gen_random_uuid(), 'held', 'credits.minted', now(), 'tester', gen_random_uuid(), '{}')""")
            await journal.append_event(event())
            with pytest.raises(DatabaseUnavailableError, match="long transaction") as info:
                await asyncio.wait_for(read_all(journal, after=1), 30)
            assert "statement timeout (1 s)" in str(info.value)
            with pytest.raises(DatabaseUnavailableError, match="long transaction"):
                await asyncio.wait_for(journal.last_position(), 30)
            await held.execute("COMMIT")
            assert [e.position for e in await read_all(journal)] == [1, 2, 3]
    finally:
        await held.close()


async def test_polling_an_idle_head_spends_no_transaction_id(database_url):
    """The journal remembers the mark it settled: followers polling a journal nobody writes to
    must not burn an xid per call (each one brings anti-wraparound vacuum closer)."""
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_event(event())
        head = await journal.last_position()

        async def next_xid() -> int:
            async with journal.connections.acquire() as conn:
                return int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))

        before = await next_xid()
        for _ in range(20):
            assert await journal.last_position() == head
            assert await read_all(journal, after=head) == []
        assert await next_xid() - before < 5  # nothing else writes here; 40 fences would be >= 40
