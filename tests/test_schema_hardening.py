"""The schema a DBA signs off (migration 0008): functions pinned to their schema, appends immune to
the database's isolation default, one lock order with 64-bit keys private to a schema, lock waits
bounded, a fence that backs off, readers that cannot draw ids, per-schema wake-ups, and a startup
that never scans the table. Each test fails on the functions and journal before 0008."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid

import asyncpg
import pytest

from eventstore import ConfigurationError, DatabaseUnavailableError, PostgresEventJournal
from eventstore.envelope import ENCODER
from eventstore.postgres.queries import QUERIES
from eventstore.postgres.rows import batch_params, init_connection
from eventstore.postgres.schema import upgrade_schema

from .helpers import event, read_all

GUARD = 30  # seconds: liveness bound for waits that could hang (not a timing assertion)

# An append inside an open transaction: it holds its entity's lock until the transaction ends.
# Plain SQL through the function, so it means the same before and after migration 0008.
HOLD_ENTITY = """
SELECT * FROM credit_events_append(gen_random_uuid(), 'held-' || gen_random_uuid(), 'credits.minted', 1, now(),
                                   'holder', gen_random_uuid(), NULL, '{"amount": 1}'::jsonb, $1, NULL)
"""


async def connect(url: str, **settings: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings=settings)


async def hold_entity(url: str, entity_id: str, **settings: str) -> asyncpg.Connection:
    """A session whose open transaction holds ``entity_id``'s append lock; ROLLBACK and close it."""
    conn = await connect(url, **settings)
    await conn.execute("BEGIN")
    await conn.fetch(HOLD_ENTITY, entity_id)
    return conn


async def waiting_on_a_lock(url: str, application_name: str) -> bool:
    conn = await connect(url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1 AND wait_event_type = 'Lock'", application_name))
    finally:
        await conn.close()


async def until_waiting(url: str, application_name: str, task: asyncio.Future) -> None:
    deadline = time.monotonic() + GUARD
    while not await waiting_on_a_lock(url, application_name):
        assert not task.done(), task.result()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_every_function_writes_to_its_own_schema_whatever_the_callers_search_path(database_url):
    upgrade_schema(database_url, schema="s1")
    conn = await connect(database_url, search_path="public")
    try:
        # A DBA's session on public calls s1's function: the event lands in s1.credit_events.
        await conn.fetch(HOLD_ENTITY.replace("credit_events_append", "s1.credit_events_append"), "acct-1")
        assert await conn.fetchval("SELECT count(*) FROM s1.credit_events") == 1
        assert await conn.fetchval("SELECT count(*) FROM public.credit_events") == 0
        pinned = await conn.fetch(
            "SELECT n.nspname, p.proname, p.proconfig FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname IN ('public', 's1') AND p.proname LIKE 'credit%'")
    finally:
        await conn.close()
    assert len(pinned) == 2 * 11
    assert [r["proname"] for r in pinned if r["proconfig"] != [f"search_path={r['nspname']}, pg_temp"]] == []


async def test_appends_work_when_the_database_defaults_to_repeatable_read(database_url):
    """An append waits for its entity's lock and reads the version after it is granted: only
    READ COMMITTED sees the version committed meanwhile. The journal's sessions are READ
    COMMITTED whatever the database says, and the functions refuse any other level."""
    admin = await connect(database_url)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_isolation = \'repeatable read\'')
    finally:
        await admin.close()
    holder = await hold_entity(database_url, "hot", default_transaction_isolation="read committed")
    async with PostgresEventJournal(database_url, pool_size=2) as journal:
        try:
            waiting = asyncio.ensure_future(journal.append_event(event(entity_id="hot")))
            await until_waiting(database_url, "eventstore", waiting)
            await holder.execute("COMMIT")
            assert await asyncio.wait_for(waiting, GUARD) is True  # not a ConcurrencyError
        finally:
            await holder.close()
        assert [e.entity_version async for e in journal.read_entity("hot")] == [1, 2]

    session = await connect(database_url)  # the database's default: repeatable read
    try:
        assert await session.fetchval("SHOW transaction_isolation") == "repeatable read"
        with pytest.raises(asyncpg.PostgresError, match="need READ COMMITTED, this transaction is repeatable read") as info:
            await session.fetch(HOLD_ENTITY, "hot")
        assert info.value.sqlstate == "ES411"
    finally:
        await session.close()
    # The journal's error map turns it into a ConfigurationError that says so.
    journal = PostgresEventJournal(database_url)
    assert isinstance(journal.errors.translate(info.value, "append", "eventstore_writer"), ConfigurationError)


async def entities_in_opposite_orders(url: str) -> tuple[str, str]:
    """Two entity ids whose text order and 32-bit hashtext order disagree: migration 0001's
    importer locked in the first, live batches in the second."""
    conn = await connect(url)
    try:
        for first, second in itertools.combinations((f"acct-{n}" for n in range(20)), 2):
            if await conn.fetchval("SELECT hashtext($1) > hashtext($2)", min(first, second), max(first, second)):
                return min(first, second), max(first, second)
    finally:
        await conn.close()
    raise AssertionError("no such pair among 20 ids")


async def test_an_import_batch_and_a_live_batch_sharing_entities_never_deadlock(database_url):
    low, high = await entities_in_opposite_orders(database_url)
    holder = await hold_entity(database_url, high)  # both must queue behind it
    importer = await connect(database_url, application_name="eventstore-import")
    await init_connection(importer)
    imported = [event(entity_id=low), event(entity_id=high)]
    payloads = [ENCODER.encode(e.payload) for e in imported]
    async with PostgresEventJournal(database_url, pool_size=2) as journal:
        try:
            live = asyncio.ensure_future(journal.append_events([event(entity_id=low), event(entity_id=high)]))
            await until_waiting(database_url, "eventstore", live)
            # Versions far ahead, so the import and the live batch cannot collide on a version.
            batch = importer.fetch(QUERIES.import_batch.sql, *batch_params(imported, payloads, [100, 100]))
            imports = asyncio.ensure_future(batch)
            await until_waiting(database_url, "eventstore-import", imports)
            await holder.execute("COMMIT")
            # Before 0008 the two waited for each other here until PostgreSQL's deadlock detector
            # aborted one (DeadlockDetectedError after deadlock_timeout).
            assert await asyncio.wait_for(live, GUARD) == [True, True]
            await asyncio.wait_for(imports, GUARD)
        finally:
            await holder.close()
            await importer.close()
        versions = {(e.entity_id, e.entity_version) for e in await read_all(journal)}
    assert {(low, 100), (high, 100), (high, 1)} <= versions and len(versions) == 5


async def test_a_batch_lock_step_holds_each_distinct_entity_once_and_skips_none(database_url):
    """Migration 0013 locks a batch's entities in one statement: every distinct entity, nulls
    skipped, repeats taken once, until the transaction ends."""
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT credit_events_lock_entities($1::text[])",
                               ["acct-b", "acct-a", None, "acct-b", "acct-c"])
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted")
            keys = await conn.fetchval(
                "SELECT array_agg(hashtextextended(e, 'credit_events'::regclass::oid::bigint))"
                " FROM unnest(ARRAY['acct-a', 'acct-b', 'acct-c']) AS e")
            locked = await conn.fetchval(
                "SELECT array_agg((classid::bigint << 32) | objid::bigint) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        assert held == 3
        assert sorted(keys) == sorted(locked)
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()") == 0
    finally:
        await conn.close()


async def hashtext_collision(url: str) -> tuple[str, str]:
    conn = await connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT array_agg(id) AS ids FROM (SELECT 'entity-' || g AS id FROM generate_series(1, 400000) AS g) AS e"
            " GROUP BY hashtext(id) HAVING count(*) > 1 LIMIT 1")
    finally:
        await conn.close()
    return row["ids"][0], row["ids"][1]


async def test_entities_that_share_a_32_bit_hash_or_a_name_in_another_schema_do_not_wait(database_url):
    first, second = await hashtext_collision(database_url)
    upgrade_schema(database_url, schema="s2")
    holder = await hold_entity(database_url, first)  # public schema
    try:
        async with PostgresEventJournal(database_url, pool_size=1, lock_timeout=5) as journal:
            # Same 32-bit hashtext, different entity: no shared lock (64-bit keys).
            assert await asyncio.wait_for(journal.append_event(event(entity_id=second)), GUARD) is True
        async with PostgresEventJournal(database_url, pool_size=1, schema="s2", lock_timeout=5) as other_schema:
            # The same entity id in another schema of the database: its own lock.
            assert await asyncio.wait_for(other_schema.append_event(event(entity_id=first)), GUARD) is True
    finally:
        await holder.close()


async def test_an_append_behind_a_held_entity_fails_after_lock_timeout_and_stores_nothing(database_url):
    holder = await hold_entity(database_url, "hot")
    async with PostgresEventJournal(database_url, pool_size=1, lock_timeout=0.3, statement_timeout=20) as journal:
        try:
            blocked = event(entity_id="hot")
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError, match="entity 'hot' is busy.*lock_timeout.*nothing was stored"):
                await asyncio.wait_for(journal.append_event(blocked), GUARD)
            assert time.monotonic() - started < 10  # lock_timeout, not the 20 s statement_timeout
            await holder.execute("ROLLBACK")
            assert await journal.append_event(blocked) is True
            assert [e.idempotency_key for e in await read_all(journal)] == [blocked.idempotency_key]
        finally:
            await holder.close()
    with pytest.raises(ConfigurationError, match="lock_timeout"):
        PostgresEventJournal(database_url, lock_timeout=0)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def test_the_fence_backs_off_behind_a_long_writer(database_url):
    """A subscriber behind a long write transaction used to poll pg_locks every 0.5 ms
    (0.15 CPU-seconds per second per subscriber); the wait now doubles its pause up to 20 ms."""
    holder = await hold_entity(database_url, "slow")
    fence = await connect(database_url)
    try:
        row = await fence.fetchrow(QUERIES.subscription_fence_mark.sql, 0)
        assert row["marker"] is not None
        pid = await fence.fetchval("SELECT pg_backend_pid()")
        before = cpu_seconds(pid)
        assert await fence.fetchval(QUERIES.subscription_fence_wait.sql, row["marker"], 3000) is False
        used = cpu_seconds(pid) - before
    finally:
        await fence.close()
        await holder.close()
    assert used < 0.15, f"{used:.3f} CPU-seconds for a 3 s wait"


async def test_readers_may_read_the_high_water_mark_but_not_draw_ids(database_url):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN IN ROLE eventstore_reader")
        reader_url = database_url.replace("postgres@", f"{role}@", 1)
        reader = await connect(reader_url)
        try:
            await reader.fetchrow(QUERIES.subscription_fence_mark.sql, 0)  # reads the sequence
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.fetchval("SELECT nextval('credit_events_id_seq')")
        finally:
            await reader.close()
        async with PostgresEventJournal(database_url, pool_size=1) as writer:
            assert await writer.append_event(event()) is True  # the writer still draws ids
    finally:
        await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()


async def test_wake_ups_go_to_the_subscribers_of_their_own_schema(database_url):
    upgrade_schema(database_url, schema="s3")
    listener = await connect(database_url)
    heard: dict[str, int] = {"credit_events.public": 0, "credit_events.s3": 0}
    woken = asyncio.Event()

    def hear(_conn: object, _pid: int, channel: str, _payload: str) -> None:
        heard[channel] += 1
        woken.set()

    try:
        for channel in heard:
            await listener.add_listener(channel, hear)
        async with PostgresEventJournal(database_url, pool_size=1, schema="s3") as journal:
            await journal.append_event(event())
            await asyncio.wait_for(woken.wait(), GUARD)
        await asyncio.sleep(0.2)  # a stray wake-up on public's channel would have arrived by now
    finally:
        await listener.close()
    assert heard == {"credit_events.public": 0, "credit_events.s3": 1}


async def test_opening_a_journal_does_not_scan_a_big_table(database_url):
    """initialize() used to count(*) the table (98 ms at 1M rows, the statement timeout near 300M).
    Above 100,000 rows it reads the planner's estimate: it opens even while a migration holds
    ACCESS EXCLUSIVE on the table, and says the total is an estimate."""
    admin = await connect(database_url)
    try:
        await admin.execute(
            """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id, correlation_id, payload)
               SELECT gen_random_uuid(), 'bulk-' || g, 'credits.minted', now(), 'loader', gen_random_uuid(), '{}'::jsonb
                 FROM generate_series(1, 110000) AS g""")
        await admin.execute("ANALYZE credit_events")
        await admin.execute("BEGIN; LOCK TABLE credit_events IN ACCESS EXCLUSIVE MODE")
        journal = PostgresEventJournal(database_url, pool_size=1, statement_timeout=5)
        try:
            await asyncio.wait_for(journal.initialize(), GUARD)
            metrics = journal.get_metrics()
        finally:
            await admin.execute("ROLLBACK")
            await journal.close()
    finally:
        await admin.close()
    assert metrics["total_events_exact"] is False and 100_000 <= metrics["total_events"] <= 120_000


async def test_read_entity_pages_through_versions_that_are_not_dense(database_url):
    """The database does not keep versions dense (the importer stores a file's versions as they
    are; the owner may INSERT): a keyset on (entity_id, entity_version) reads them all. Paging by
    ``version <= after + page_size`` and stopping at a short page returned only [1] here."""
    admin = await connect(database_url)
    try:
        await admin.execute(
            """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id, correlation_id,
                                          payload, entity_id, entity_version)
               SELECT gen_random_uuid(), 'sparse-' || v, 'credits.minted', now(), 'owner', gen_random_uuid(),
                      '{}'::jsonb, 'sparse', v
                 FROM unnest(ARRAY[1, 3, 4, 5, 9]) AS v""")
    finally:
        await admin.close()
    async with PostgresEventJournal(database_url, pool_size=1, page_size=2) as journal:
        assert [e.entity_version async for e in journal.read_entity("sparse")] == [1, 3, 4, 5, 9]
        assert [e.entity_version async for e in journal.read_entity("sparse", backwards=True)] == [9, 5, 4, 3, 1]
        assert [e.entity_version async for e in journal.read_entity("sparse", after_version=1, up_to_version=5)] == [3, 4, 5]
        assert [e.entity_version async for e in journal.read_entity("sparse", backwards=True, limit=3)] == [9, 5, 4]


async def test_entity_locks_are_taken_in_one_place(database_url):
    """One lock step for every write path: no function body but credit_events_lock_entities and
    no statement in sql/ takes an advisory transaction lock itself."""
    from pathlib import Path

    conn = await connect(database_url)
    try:
        lockers = await conn.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " AND prosrc LIKE '%pg_advisory_xact_lock%'")
    finally:
        await conn.close()
    assert [r["proname"] for r in lockers] == ["credit_events_lock_entities"]
    sql_dir = Path(__file__).resolve().parents[1] / "sql"
    assert [p.name for p in sql_dir.glob("*.sql") if "pg_advisory_xact_lock" in p.read_text()] == []
    assert "credit_events_lock_entities" in QUERIES.lock_import_entities.sql
    assert "credit_events_lock_entities" in QUERIES.import_batch.sql
    assert "credit_events_lock_entities" in QUERIES.import_batch_on_conflict.sql


async def test_a_read_behind_a_migrations_lock_fails_after_lock_timeout(database_url):
    admin = await connect(database_url)
    try:
        async with PostgresEventJournal(database_url, pool_size=2, lock_timeout=0.3, statement_timeout=20) as journal:
            await journal.append_event(event())
            await admin.execute("BEGIN; LOCK TABLE credit_events IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseUnavailableError, match="not granted within lock_timeout.*retry"):
                await asyncio.wait_for(read_all(journal), GUARD)
            await admin.execute("ROLLBACK")
            assert len(await read_all(journal)) == 1
    finally:
        await admin.close()


async def test_a_subscription_waits_out_a_migrations_lock(database_url):
    """Subscriptions wait for locks as they wait for the fence: their connection has no lock_timeout."""
    admin = await connect(database_url)
    try:
        async with PostgresEventJournal(database_url, pool_size=2, lock_timeout=0.3) as journal:
            stored = [event(), event()]
            await journal.append_events(stored)
            stream = journal.subscribe()
            await admin.execute("BEGIN; LOCK TABLE credit_events IN ACCESS EXCLUSIVE MODE")
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(1.0)  # more than three lock_timeouts
            assert not first.done()
            await admin.execute("ROLLBACK")
            assert (await asyncio.wait_for(first, GUARD)).idempotency_key == stored[0].idempotency_key
            await stream.aclose()
    finally:
        await admin.close()
