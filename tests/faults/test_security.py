"""Security: least-privilege roles (migration 0004) and passwords that never leak.

Role tests run on the shared server (trust auth) in a fresh database each; the login roles they
create are cluster-global, so each has a unique name and is dropped at teardown. Role lifecycle
(creation races, a rollback that drops a role only when nothing needs it), password checks and a
stopped server need a cluster of their own (``pgcluster.ThrowawayCluster``, scram-sha-256).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import asyncpg
import psycopg
import pytest

from eventstore import (
    ConfigurationError,
    DatabaseUnavailableError,
    EventStoreError,
    FileEventJournal,
    PermissionDeniedError,
    PostgresEventJournal,
    SchemaNotReadyError,
    create_event_journal,
)
from eventstore.postgres.schema import downgrade_schema, schema_status, shipped_migration_ids, upgrade_schema

from ..helpers import event, read_all
from .pgcluster import ThrowawayCluster

GUARD = 60  # seconds: liveness bound for waits that could hang (not a timing assertion)
ROLES = ("eventstore_writer", "eventstore_reader")
# A distinctive password with characters that must be URL-quoted; and the wrong one.
LATEST = shipped_migration_ids()[-1]
AFTER_0003 = [m for m in shipped_migration_ids() if m > "0004"]  # 0004_roles and every later one

SECRET = "Zq9-S3cr3t/p@ss%w0rd"
WRONG = "Wr0ng-Qx7/k@y%pw"


def with_user(url: str, user: str, password: str | None = None) -> str:
    auth = f"{user}:{quote(password, safe='')}" if password else user
    return url.replace("postgresql://postgres@", f"postgresql://{auth}@", 1)


async def sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


@pytest.fixture
async def member(database_url: str) -> AsyncIterator:
    """``await member("eventstore_writer")`` -> the URL of a new LOGIN role in that group."""
    created: list[str] = []

    async def make(group: str | None) -> str:
        name = f"es_sec_{uuid.uuid4().hex[:12]}"
        await sql(database_url, f"CREATE ROLE {name} LOGIN" + (f" IN ROLE {group}" if group else ""))
        created.append(name)
        return with_user(database_url, name)

    yield make
    for name in created:  # cluster-global: never leave one behind
        await sql(database_url, f"DROP OWNED BY {name}", f"DROP ROLE {name}")


async def next_event(stream: AsyncIterator, timeout: float = GUARD):
    return await asyncio.wait_for(anext(stream), timeout)


# -- least privilege: the writer -------------------------------------------------------------


async def test_writer_member_can_initialize_append_read_subscribe_and_snapshot(database_url, member):
    url = await member("eventstore_writer")
    # Neither superuser nor pg_read_all_stats: the fence runs its non-superuser path.
    assert await fetchval(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    assert await fetchval(url, "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')") is False
    async with PostgresEventJournal(url, pool_size=2) as journal:
        first = event(entity_id="acct-1")
        assert await journal.append_event(first, expected_version=0) is True
        assert await journal.append_event(first) is False  # a retry is a duplicate, not an error
        batch = [event(entity_id="acct-1"), event(entity_id="acct-2"), event()]
        assert await journal.append_events(batch, expected_versions={"acct-1": 1}) == [True, True, True]
        assert [e.event_id for e in await read_all(journal)] == [first.event_id] + [e.event_id for e in batch]
        assert [e.entity_version async for e in journal.read_entity("acct-1")] == [1, 2]
        assert [e.event_id async for e in journal.query_events(event_type="credits.minted", limit=2)] == [
            first.event_id, batch[0].event_id]

        stream = journal.subscribe(after=2)
        try:
            assert (await next_event(stream)).event_id == batch[1].event_id
            assert (await next_event(stream)).event_id == batch[2].event_id
            live = event(entity_id="acct-2")
            assert await journal.append_event(live) is True
            assert (await next_event(stream)).event_id == live.event_id
        finally:
            await stream.aclose()

        await journal.save_snapshot("balances", 3, {"acct-1": 2})
        await journal.save_snapshot("balances", 5, {"acct-1": 2, "acct-2": 2})  # UPDATE: newer replaces
        await journal.save_snapshot("balances", 4, {"stale": True})  # older: ignored
        loaded = await journal.load_snapshot("balances")
        assert loaded is not None and loaded.position == 5 and loaded.state == {"acct-1": 2, "acct-2": 2}
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events") == 5


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE credit_events SET actor_id = 'mallory'",
        "DELETE FROM credit_events",
        "TRUNCATE credit_events",
        "DROP TABLE credit_events",
        "ALTER TABLE credit_events DISABLE TRIGGER credit_events_no_update_delete",
        "CREATE TABLE es_sec_shadow (id int)",
        "DELETE FROM credit_snapshots",
        "UPDATE credit_snapshots SET name = 'renamed'",
    ],
)
async def test_writer_member_cannot_change_history_or_the_schema(database_url, member, statement):
    url = await member("eventstore_writer")
    async with PostgresEventJournal(url, pool_size=1) as journal:
        await journal.append_events([event(), event()])
        await journal.save_snapshot("p", 2, {"n": 2})
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(statement)
        assert info.value.sqlstate == "42501"  # insufficient_privilege
        # Refused by the grants, before the append-only trigger (which only the owner meets).
        assert "append-only" not in str(info.value)
    finally:
        await conn.close()
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events") == 2
    assert await fetchval(database_url, "SELECT name || ':' || position FROM credit_snapshots") == "p:2"
    assert await fetchval(database_url, "SELECT to_regclass('es_sec_shadow') IS NULL") is True


# -- least privilege: the reader -------------------------------------------------------------


async def test_reader_member_can_read_and_subscribe_but_not_write(database_url, member):
    reader_url = await member("eventstore_reader")
    async with PostgresEventJournal(database_url, pool_size=2) as owner:
        stored = [event(entity_id="acct-1"), event(entity_id="acct-1", event_type="credits.spent")]
        await owner.append_events(stored)
        await owner.save_snapshot("p", 2, {"n": 2})
        async with PostgresEventJournal(reader_url, pool_size=2) as reader:
            assert [e.event_id for e in await read_all(reader)] == [e.event_id for e in stored]
            assert [e.event_id async for e in reader.read_entity("acct-1")] == [e.event_id for e in stored]
            assert [e.event_id async for e in reader.query_events(event_type="credits.spent")] == [stored[1].event_id]
            assert (await reader.load_snapshot("p")).state == {"n": 2}

            stream = reader.subscribe()
            try:
                assert (await next_event(stream)).event_id == stored[0].event_id
                assert (await next_event(stream)).event_id == stored[1].event_id
                live = event()
                await owner.append_event(live)  # another writer commits while the reader follows
                assert (await next_event(stream)).event_id == live.event_id
            finally:
                await stream.aclose()

            for attempt in (reader.append_event(event()), reader.append_events([event(), event()])):
                with pytest.raises(PermissionDeniedError) as info:
                    await attempt
                assert isinstance(info.value, EventStoreError)
                assert not isinstance(info.value, asyncpg.PostgresError)
                assert "eventstore_writer" in str(info.value) and "permission denied" in str(info.value)
                assert info.value.__cause__ is None and info.value.__suppress_context__
            with pytest.raises(PermissionDeniedError, match="credit_snapshots"):
                await reader.save_snapshot("p", 9, {"n": 9})
            assert reader.get_metrics()["appended"] == 0
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events") == 3
    assert await fetchval(database_url, "SELECT position FROM credit_snapshots") == 2


async def test_role_outside_both_groups_gets_a_clear_error_at_initialize(database_url, member):
    url = await member(None)
    with pytest.raises(PermissionDeniedError, match="eventstore_reader or eventstore_writer"):
        await PostgresEventJournal(url, pool_size=1).initialize()


async def test_membership_revoked_under_a_live_journal_gives_clear_errors(database_url, member):
    url = await member("eventstore_writer")
    role = url.split("//", 1)[1].split("@", 1)[0]
    async with PostgresEventJournal(url, pool_size=1) as journal:
        assert await journal.append_event(event())
        await sql(database_url, f"REVOKE eventstore_writer FROM {role}")
        with pytest.raises(PermissionDeniedError, match="eventstore_writer"):
            await journal.append_event(event())
        stream = journal.subscribe(after=0)
        with pytest.raises(PermissionDeniedError, match="may not subscribe"):
            await next_event(stream)
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events") == 1


async def test_import_export_verify_as_a_reader_member(database_url, member, tmp_path):
    """The tools share the journal's error map: a refused privilege is PermissionDeniedError naming
    the group to join, in the API and as one line (exit 1) from the CLI; reading tools work."""
    from eventstore.postgres.file_export import export_to_file
    from eventstore.postgres.file_import import import_file
    from eventstore.postgres.file_verify import verify_file

    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as journal:
        await journal.append_events([event(entity_id="a"), event(entity_id="a")])
    url = await member("eventstore_reader")
    with pytest.raises(PermissionDeniedError, match="may not import into credit_events.*owns the schema"):
        await import_file(path, url)
    run = subprocess.run([sys.executable, "-m", "eventstore", "import", str(path), "--database-url", url],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "owns the schema" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events") == 0
    assert not (await verify_file(path, url)).ok  # reading is allowed: the events are missing
    assert await export_to_file(url, tmp_path / "back.jsonl") == 0


# -- the rollback of 0004 --------------------------------------------------------------------


def _privileges(url: str) -> dict[str, bool]:
    checks = {
        "writer_append": "has_function_privilege('eventstore_writer', 'credit_events_append(uuid, varchar, varchar, "
                         "integer, timestamptz, varchar, uuid, uuid, jsonb, text, integer)', 'EXECUTE')",
        "writer_select": "has_table_privilege('eventstore_writer', 'credit_events', 'SELECT')",
        "writer_snapshot_update": "has_column_privilege('eventstore_writer', 'credit_snapshots', 'state', 'UPDATE')",
        "writer_sequence": "has_sequence_privilege('eventstore_writer', 'credit_events_id_seq', 'SELECT')",
        "reader_select": "has_table_privilege('eventstore_reader', 'credit_events', 'SELECT')",
        "reader_journal": "has_table_privilege('eventstore_reader', '_yoyo_migration', 'SELECT')",
        # public's USAGE for PUBLIC hides a revoke from has_schema_privilege: read the ACL itself.
        "reader_schema": "EXISTS (SELECT FROM pg_namespace AS n, aclexplode(n.nspacl) AS a "
                         "WHERE n.nspname = current_schema() AND a.grantee = 'eventstore_reader'::regrole)",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        return {k: conn.execute(f"SELECT {q}").fetchone()[0] for k, q in checks.items()}


def _rollback_only(url: str, migration_id: str) -> None:
    from yoyo import get_backend, read_migrations

    backend = get_backend(url.replace("postgresql://", "postgresql+psycopg://", 1) + "?schema=public")
    migrations = read_migrations(str(Path(__file__).resolve().parents[2] / "migrations"))
    with backend.lock():
        target = [m for m in backend.to_rollback(migrations) if m.id == migration_id]
        assert len(target) == 1
        backend.rollback_migrations(target)


async def test_rollback_of_0004_revokes_this_schemas_grants_and_upgrade_is_rerunnable(database_url, member):
    writer_url = await member("eventstore_writer")
    assert all(_privileges(database_url).values())
    await asyncio.to_thread(_rollback_only, database_url, "0004_roles")
    assert not any(_privileges(database_url).values())
    assert await fetchval(database_url, "SELECT count(*) FROM pg_roles WHERE rolname = 'eventstore_writer'") == 1
    with pytest.raises(PermissionDeniedError):  # the member lost its access with the grants
        await PostgresEventJournal(writer_url, pool_size=1).initialize()
    with pytest.raises(SchemaNotReadyError, match="0004_roles"):  # and the owner is told what is missing
        await PostgresEventJournal(database_url, pool_size=1).initialize()

    assert await asyncio.to_thread(upgrade_schema, database_url) == ["0004_roles"]  # 0005 and 0006 stayed
    assert await asyncio.to_thread(upgrade_schema, database_url) == []
    assert all(_privileges(database_url).values())
    async with PostgresEventJournal(writer_url, pool_size=1) as journal:
        assert await journal.append_event(event()) is True

    # The whole stack down and up again, in this database and in a second schema.
    await asyncio.to_thread(upgrade_schema, database_url, "tenant_sec")
    assert (await asyncio.to_thread(downgrade_schema, database_url))[0] == LATEST
    assert (await asyncio.to_thread(upgrade_schema, database_url))[-1] == LATEST
    assert all(_privileges(database_url).values())
    async with PostgresEventJournal(writer_url + "?schema=tenant_sec", pool_size=1) as journal:
        assert journal.schema == "tenant_sec" and await journal.append_event(event()) is True


def test_roles_are_created_race_free_and_dropped_only_when_nothing_needs_them():
    with ThrowawayCluster() as pg:
        names = [f"db{i}" for i in range(4)]
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            for name in names:
                conn.execute(f"CREATE DATABASE {name}")

        def role_names() -> set[str]:
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'eventstore_%'").fetchall()
            return {r[0] for r in rows}

        assert role_names() == set()
        # Four databases migrate at once while no role exists yet: every CREATE ROLE races.
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda n: upgrade_schema(pg.url(dbname=n)), names))
        assert all(r[-1] == LATEST for r in results)
        assert role_names() == set(ROLES)

        # Rollbacks racing upgrades: whoever loses a DROP ROLE race re-creates the role.
        def cycle(name: str) -> None:
            for _ in range(2):
                downgrade_schema(pg.url(dbname=name))
                upgrade_schema(pg.url(dbname=name))

        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(cycle, names))
        assert role_names() == set(ROLES)

        for name in names[:-1]:
            downgrade_schema(pg.url(dbname=name))
        assert role_names() == set(ROLES)  # still granted in the last database: kept
        with psycopg.connect(pg.url(dbname=names[-1]), autocommit=True) as conn:
            conn.execute("CREATE ROLE es_app LOGIN IN ROLE eventstore_writer")
        downgrade_schema(pg.url(dbname=names[-1]))
        assert role_names() == {"eventstore_writer"}  # has a member: kept; the reader is dropped
        with psycopg.connect(pg.url(dbname=names[-1]), autocommit=True) as conn:
            assert conn.execute("SELECT pg_has_role('es_app', 'eventstore_writer', 'MEMBER')").fetchone()[0]
            conn.execute("DROP ROLE es_app")
        upgrade_schema(pg.url(dbname=names[-1]))
        downgrade_schema(pg.url(dbname=names[-1]))
        assert role_names() == set()  # nothing needs them any more


# -- migrations as the owner, the app as a writer, passwords over scram ----------------------


def _owner_and_app(pg: ThrowawayCluster) -> None:
    with psycopg.connect(su_url(pg), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE es_owner LOGIN PASSWORD '{SECRET}'")  # no CREATEROLE
        conn.execute("CREATE DATABASE app OWNER es_owner")
        conn.execute(f"CREATE ROLE es_app LOGIN PASSWORD '{SECRET}'")


def _dba_creates_roles(pg: ThrowawayCluster) -> None:
    with psycopg.connect(su_url(pg), autocommit=True) as conn:  # once per cluster
        conn.execute("CREATE ROLE eventstore_writer NOLOGIN")
        conn.execute("CREATE ROLE eventstore_reader NOLOGIN")
        conn.execute("GRANT eventstore_writer TO es_app")


@pytest.fixture(scope="module")
def scram() -> Iterator[ThrowawayCluster]:
    """A scram-sha-256 cluster: database ``app`` owned and migrated by ``es_owner`` (no
    CREATEROLE) after a DBA created the roles; ``es_app``, a writer, connects with SECRET."""
    with ThrowawayCluster(auth="scram-sha-256", superuser_password=SECRET) as pg:
        _owner_and_app(pg)
        _dba_creates_roles(pg)
        upgrade_schema(owner_url(pg))
        yield pg


def su_url(pg: ThrowawayCluster, dbname: str = "postgres") -> str:
    return f"postgresql://postgres:{quote(SECRET, safe='')}@127.0.0.1:{pg.port}/{dbname}"


def owner_url(pg: ThrowawayCluster, password: str = SECRET) -> str:
    return f"postgresql://es_owner:{quote(password, safe='')}@127.0.0.1:{pg.port}/app"


def app_url(pg: ThrowawayCluster, password: str = SECRET, host: str = "127.0.0.1") -> str:
    return f"postgresql://es_app:{quote(password, safe='')}@{host}:{pg.port}/app"


def test_owner_migrates_after_a_dba_creates_the_roles_and_the_app_writes_as_a_member():
    with ThrowawayCluster(auth="scram-sha-256", superuser_password=SECRET) as pg:
        _owner_and_app(pg)
        # The owner may not create roles: one clear line naming the fix; 0004 is not applied.
        with pytest.raises(EventStoreError) as info:
            upgrade_schema(owner_url(pg))
        assert "CREATEROLE" in str(info.value) and SECRET not in str(info.value)
        assert [s.migration_id for s in schema_status(owner_url(pg)) if not s.applied] == AFTER_0003
        _dba_creates_roles(pg)
        assert upgrade_schema(owner_url(pg)) == AFTER_0003

        async def as_app() -> None:
            async with PostgresEventJournal(app_url(pg), pool_size=1) as journal:
                assert await journal.append_event(event()) is True
                assert len(await read_all(journal)) == 1
            conn = await asyncpg.connect(app_url(pg))
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("DELETE FROM credit_events")
            finally:
                await conn.close()

        asyncio.run(as_app())


def _leaks(text: str, *secrets: str) -> list[str]:
    return [s for s in secrets if s in text or quote(s, safe="") in text]


def _exception_texts(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


async def test_passwords_never_appear_in_errors_reprs_metrics_or_logs(scram, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger, eventstore's included
    texts: list[str] = []

    failures = {
        "wrong password": (app_url(scram, WRONG), DatabaseUnavailableError, "password authentication failed"),
        "unknown database": (app_url(scram).replace("/app", "/nowhere"), DatabaseUnavailableError, "nowhere"),
        "unreachable host": (app_url(scram, host="no-such-host.invalid"), DatabaseUnavailableError,
                             "no-such-host.invalid"),
    }
    for what, (url, error, needle) in failures.items():
        journal = PostgresEventJournal(url, pool_size=1, connect_timeout=5)
        with pytest.raises(error) as info:
            await journal.initialize()
        assert needle in str(info.value), what
        texts += [_exception_texts(info.value), repr(journal), str(journal), str(journal.get_metrics())]

    # A journal that works: reprs, metrics, and a subscription that loses its connection (a log line).
    async with PostgresEventJournal(app_url(scram), pool_size=2) as journal:
        await journal.append_event(event())
        stream = journal.subscribe()
        try:
            await next_event(stream)
            conn = await asyncpg.connect(su_url(scram, "app"))
            try:
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = 'eventstore-subscription'")
            finally:
                await conn.close()
            await journal.append_event(event())
            await next_event(stream)
        finally:
            await stream.aclose()
        texts += [repr(journal), str(journal), str(journal.get_metrics())]
    assert any("subscription connection lost" in r.getMessage() for r in caplog.records)

    # DATABASE_URL through the factory.
    monkeypatch.setenv("DATABASE_URL", app_url(scram))
    journal = await create_event_journal("postgres", pool_size=1, max_overflow=0)
    assert await journal.append_event(event()) is True
    texts += [repr(journal), str(journal.get_metrics())]
    await journal.close()

    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert _leaks("\n".join(texts), SECRET, WRONG) == []


async def test_a_stopped_server_is_unavailable_without_the_password():
    with ThrowawayCluster(auth="scram-sha-256", superuser_password=SECRET) as pg:
        url = su_url(pg)
        await asyncio.to_thread(upgrade_schema, url)
        async with PostgresEventJournal(url, pool_size=1, connect_timeout=5) as journal:
            await journal.append_event(event())
            await asyncio.to_thread(pg.stop)
            with pytest.raises(DatabaseUnavailableError) as during:
                await read_all(journal)
            texts = [_exception_texts(during.value), repr(journal), str(journal.get_metrics())]
        fresh = PostgresEventJournal(url, pool_size=1, connect_timeout=5)
        with pytest.raises(DatabaseUnavailableError) as info:
            await fresh.initialize()
        assert f"127.0.0.1:{pg.port}" in str(info.value)
        texts += [_exception_texts(info.value), repr(fresh)]
        assert _leaks("\n".join(texts), SECRET) == []


# -- the command line ------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EVENT_JOURNAL_BACKEND", "PGPASSFILE")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "eventstore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=GUARD * 2)


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "one.jsonl"

    async def write() -> None:
        async with FileEventJournal(path) as journal:
            await journal.append_event(event())

    asyncio.run(write())
    return path


COMMANDS = {
    "stats": ["stats", "--backend", "postgres"],
    "schema status": ["schema", "status"],
    "import": ["import", "{jsonl}"],
    "verify": ["verify", "{jsonl}"],
    "export": ["export", "{out}"],
    "tail": ["tail", "--backend", "postgres"],
}


CLI_FAILURES = {  # (URL with a password, via $DATABASE_URL?, what stderr names)
    "wrong password": (lambda pg: app_url(pg, WRONG), False, "password authentication failed"),
    "refused port": (lambda pg: f"postgresql://es_app:{quote(SECRET, safe='')}@127.0.0.1:1/app", True, "127.0.0.1:1"),
    "unknown host": (lambda pg: app_url(pg, host="no-such-host.invalid"), False, "no-such-host.invalid"),
}


@pytest.mark.parametrize("failure", list(CLI_FAILURES))
def test_cli_failures_are_one_line_without_password_or_traceback(scram, jsonl, tmp_path, failure):
    make_url, via_env, needle = CLI_FAILURES[failure]
    url = make_url(scram)
    for name, template in COMMANDS.items():
        args = [a.format(jsonl=jsonl, out=tmp_path / "out.jsonl") for a in template]
        if via_env:  # the URL from $DATABASE_URL
            result = cli(*args, env={"DATABASE_URL": url})
        else:
            result = cli(*args, "--database-url", url)
        output = result.stdout + result.stderr
        assert result.returncode == 1, (name, output)
        assert "Traceback" not in output, (name, output)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("eventstore: "), (name, output)
        assert needle in result.stderr, (name, output)
        assert _leaks(output, SECRET, WRONG) == [], name


# -- passwords from a password file ----------------------------------------------------------


def test_pgpassfile_serves_journal_schema_commands_and_cli(tmp_path, jsonl, monkeypatch):
    with ThrowawayCluster(auth="scram-sha-256", superuser_password=SECRET) as pg:
        with psycopg.connect(su_url(pg), autocommit=True) as conn:
            conn.execute("CREATE DATABASE pwfile")
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:{pg.port}:*:postgres:{SECRET.replace(':', chr(92) + ':')}\n")
        passfile.chmod(0o600)
        url = pg.url(dbname="pwfile")  # no password in the URL
        assert ":" not in url.split("//")[1].split("@")[0]

        # Control: without the file, scram refuses the URL.
        empty = tmp_path / "empty"
        empty.write_text("")
        empty.chmod(0o600)
        refused = cli("schema", "status", "--database-url", url, env={"PGPASSFILE": str(empty)})
        assert refused.returncode == 1 and "password" in refused.stderr

        env = {"PGPASSFILE": str(passfile)}
        up = cli("schema", "upgrade", "--database-url", url, env=env)  # yoyo and psycopg
        assert up.returncode == 0 and f"applied {len(shipped_migration_ids())} migration(s)" in up.stdout, up.stderr
        status = cli("schema", "status", env={**env, "DATABASE_URL": url})
        assert status.returncode == 0 and "applied  0004_roles" in status.stdout, status.stderr
        imported = cli("import", str(jsonl), "--database-url", url, env=env)  # asyncpg
        assert imported.returncode == 0 and "inserted 1" in imported.stdout, imported.stderr
        stats = cli("stats", "--backend", "postgres", "--json", "--database-url", url, env=env)
        assert stats.returncode == 0 and '"total_events": 1' in stats.stdout, stats.stderr

        monkeypatch.setenv("PGPASSFILE", str(passfile))  # in this process: the library itself
        assert all(s.applied for s in schema_status(url))

        async def journal_side() -> None:
            async with PostgresEventJournal(url, pool_size=1) as journal:
                assert await journal.append_event(event()) is True
                assert len(await read_all(journal)) == 2

        asyncio.run(journal_side())


# -- migration 0010: appends only through the functions, roles per schema ---------------------

APPEND_FUNCTION = ("credit_events_append(gen_random_uuid(), 'raw-' || gen_random_uuid(), 'credits.minted', 1, now(), "
                   "'raw', gen_random_uuid(), NULL, '{}'::jsonb, 'acct-raw', NULL)")
APPEND_GROUP_FUNCTION = ("credit_events_append_group(ARRAY[gen_random_uuid()], ARRAY['raw-group'], ARRAY['credits.minted'], "
                         "ARRAY[1], ARRAY[now()], ARRAY['raw'], ARRAY[gen_random_uuid()], ARRAY[NULL::uuid], "
                         "ARRAY['{}'::jsonb], ARRAY['acct-raw'], ARRAY[NULL::integer])")
RAW_INSERT = ("INSERT INTO credit_events (event_id, idempotency_key, event_type, \"timestamp\", actor_id, correlation_id, "
              "payload, entity_id, entity_version) VALUES (gen_random_uuid(), 'raw', 'credits.minted', now(), 'raw', "
              "gen_random_uuid(), '{}', 'acct-1', 7)")


@pytest.mark.parametrize("statement", [
    RAW_INSERT,  # would store version 7 of acct-1 without the entity lock or the version rule
    "SELECT nextval('credit_events_id_seq')",  # would burn a position
    "INSERT INTO credit_checkpoints (name, position) VALUES ('relay', 1)",
    "UPDATE credit_checkpoints SET position = 0",  # would move a consumer back
])
async def test_a_writer_member_appends_only_through_the_functions(database_url, member, statement):
    url = await member("eventstore_writer")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await sql(url, statement)
    async with PostgresEventJournal(url, pool_size=1) as journal:
        assert await journal.append(event(entity_id="acct-1"), expected_version=0)
        await journal.append_many([event(entity_id="acct-1")], checkpoint=("relay", 5))
        assert await journal.checkpoint("relay") == 5
        # A burst: one lone append, then the rest as one group (migration 0011's function).
        burst = await asyncio.gather(*(journal.append(event(entity_id="acct-1")) for _ in range(4)))
        assert journal.get_metrics()["append_groups"] == 1 and all(a.stored for a in burst)
        assert [e.entity_version async for e in journal.read_entity("acct-1")] == [1, 2, 3, 4, 5, 6]


async def test_only_writers_may_call_the_append_functions(database_url, member):
    """SECURITY DEFINER functions run as their owner: PUBLIC's default EXECUTE is revoked, so a
    login outside the groups cannot append through them either."""
    for url in (await member(None), await member("eventstore_reader")):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
            await sql(url, f"SELECT * FROM {APPEND_FUNCTION}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
            await sql(url, f"SELECT * FROM {APPEND_GROUP_FUNCTION}")
    # Nor may a writer take entity locks outside an append (held to its transaction's end).
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
        await sql(await member("eventstore_writer"), "SELECT credit_events_lock_entities(ARRAY['acct-raw'])")
    await sql(await member("eventstore_writer"), f"SELECT * FROM {APPEND_FUNCTION}")
    assert await fetchval(database_url, "SELECT count(*) FROM credit_events WHERE entity_id = 'acct-raw'") == 1


async def test_a_schema_with_its_own_role_prefix_keeps_logins_apart(database_url, member):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    # Through the command line, with session options of its own in the URL (the prefix is added to them).
    url_with_options = database_url + "?options=-c%20application_name%3Dtenant-upgrade"
    run = await asyncio.to_thread(cli, "schema", "upgrade", "--database-url", url_with_options, "--schema", "tenant",
                                  "--role-prefix", prefix)
    assert run.returncode == 0, run.stderr
    try:
        tenant_writer = await member(f"{prefix}_writer")
        async with PostgresEventJournal(tenant_writer + "?schema=tenant", pool_size=1) as journal:
            assert await journal.append_event(event()) is True
        # The tenant's login has nothing in public, the default roles nothing in the tenant's schema.
        with pytest.raises(PermissionDeniedError, match="eventstore_reader or eventstore_writer"):
            await PostgresEventJournal(tenant_writer, pool_size=1).initialize()
        shared_writer = await member("eventstore_writer")
        with pytest.raises(PermissionDeniedError):
            await PostgresEventJournal(shared_writer + "?schema=tenant", pool_size=1).initialize()
        # Refusals name the schema's own roles.
        tenant_reader = await member(f"{prefix}_reader")
        async with PostgresEventJournal(tenant_reader + "?schema=tenant", pool_size=1) as reader:
            with pytest.raises(PermissionDeniedError, match=f"{prefix}_writer"):
                await reader.append_event(event())
            assert len(await read_all(reader)) == 1
        assert await fetchval(database_url, "SELECT writer FROM tenant.credit_roles()") == f"{prefix}_writer"
    finally:
        for role in (f"{prefix}_writer", f"{prefix}_reader"):  # cluster-global: never leave one behind
            await sql(database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    with pytest.raises(ConfigurationError, match="invalid role prefix"):
        upgrade_schema(database_url, "other", role_prefix="Bad-Prefix")
    run = await asyncio.to_thread(cli, "schema", "upgrade", "--database-url", database_url, "--schema", "other",
                                  env={"EVENTSTORE_ROLE_PREFIX": "Bad-Prefix"})
    assert run.returncode == 2 and "invalid role prefix" in run.stderr and "Traceback" not in run.stderr, run.stderr
