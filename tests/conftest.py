"""Fixtures: a fresh PostgreSQL database per test (cloned from a template that has the schema),
and journals of both backends over the same contract."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_postgresql import factories

from eventstore import BaseEventJournal, FileEventJournal
from eventstore.postgres.schema import upgrade_schema

PGHOST = os.environ.get("PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGPORT", "5432"))
PGUSER = os.environ.get("PGUSER", "postgres")
# Parallel checkouts on one server need their own database names.
TEST_DB = os.environ.get("EVENTSTORE_TEST_DB", "eventstore_test")


def url_for(host: str, port: int | str, user: str, dbname: str, password: str | None = None) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


def load_schema(host: str, port: int, user: str, dbname: str, password: str | None = None, **_: Any) -> None:
    upgrade_schema(url_for(host, port, user, dbname, password))


# You are root on these machines and PostgreSQL will not initdb as root: use the running server.
postgresql_noproc = factories.postgresql_noproc(host=PGHOST, port=PGPORT, user=PGUSER, dbname=TEST_DB, load=[load_schema])
postgresql = factories.postgresql("postgresql_noproc")
postgresql_noproc_empty = factories.postgresql_noproc(host=PGHOST, port=PGPORT, user=PGUSER, dbname=f"{TEST_DB}_empty")
postgresql_empty = factories.postgresql("postgresql_noproc_empty")


@pytest.fixture
def database_url(postgresql: Any) -> str:
    info = postgresql.info
    return url_for(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture
def empty_database_url(postgresql_empty: Any) -> str:
    info = postgresql_empty.info
    return url_for(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture(scope="session")
def standby_pair() -> Iterator[tuple[Any, Any]]:
    """A throwaway primary with a streaming hot standby (tests/faults/pgcluster.py), and a
    template database holding the schema on it."""
    from .faults.pgcluster import ThrowawayCluster

    with ThrowawayCluster() as primary:
        standby = primary.standby()
        try:
            primary.sql("CREATE DATABASE replica_template")
            upgrade_schema(primary.url(dbname="replica_template"))
            # A template must have no sessions: the migration's may linger until collected.
            primary.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'replica_template'")
            yield primary, standby
        finally:
            standby.cleanup()


_replicated_numbers = itertools.count(1)


def wait_replayed(primary: Any, standby: Any, bound: float = 30.0) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    wal = primary.sql("SELECT pg_current_wal_insert_lsn()")
    deadline = time.monotonic() + bound
    while standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{wal}'::pg_lsn") != "t":
        if time.monotonic() > deadline:
            raise AssertionError(f"the standby did not replay up to {wal} within {bound} s")
        time.sleep(0.02)


@pytest.fixture
def replicated_urls(standby_pair: tuple[Any, Any]) -> tuple[str, str]:
    """(primary URL, standby URL) of a fresh database with the schema, already on the standby."""
    primary, standby = standby_pair
    name = f"replica_{next(_replicated_numbers)}"
    primary.sql(f"CREATE DATABASE {name} TEMPLATE replica_template")
    wait_replayed(primary, standby)
    return primary.url(dbname=name), standby.url(dbname=name)


@pytest.fixture
def delayed_standby(standby_pair: tuple[Any, Any]) -> Iterator[Callable[[int], None]]:
    """``delay(ms)`` holds the standby's commits back by that much (``recovery_min_apply_delay``):
    a standby that shows recent events late. Reset at teardown."""
    primary, standby = standby_pair

    def delay(ms: int) -> None:
        standby.sql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'", "SELECT pg_reload_conf()")

    yield delay
    delay(0)
    wait_replayed(primary, standby)


OpenJournal = Callable[..., Awaitable[BaseEventJournal]]


@pytest.fixture(params=["file", "postgres"])
async def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenJournal]:
    """Opens (and at teardown closes) journals on one store of the parametrised backend; calling
    it again after closing the first reopens the same store."""
    opened: list[BaseEventJournal] = []
    if request.param == "postgres":
        url = request.getfixturevalue("database_url")

        async def make(**options: Any) -> BaseEventJournal:
            from eventstore import PostgresEventJournal

            journal = PostgresEventJournal(url, pool_size=options.pop("pool_size", 4), **options)
            await journal.initialize()
            opened.append(journal)
            return journal
    else:
        path = tmp_path / "events" / "credits.jsonl"

        async def make(**options: Any) -> BaseEventJournal:
            options.pop("pool_size", None)
            journal = FileEventJournal(path, **options)
            await journal.initialize()
            opened.append(journal)
            return journal

    yield make
    for journal in opened:
        await journal.close()


@pytest.fixture(params=["file", "postgres", "file via eventstore.sync", "postgres via eventstore.sync", "postgres via a standby"])
async def contract_journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenJournal]:
    """``open_journal`` for the contract suite: each backend directly, through the blocking
    interface (``tests/sync_adapter.py``), and PostgreSQL with its reads on a streaming standby."""
    from eventstore import sync

    from .sync_adapter import AsyncOverSync

    backend, through_sync = request.param.split(" ")[0], request.param.endswith("sync")
    replicas: list[str] = []
    if request.param.endswith("standby"):
        url, standby_url = request.getfixturevalue("replicated_urls")
        replicas = [standby_url]
    else:
        url = request.getfixturevalue("database_url") if backend == "postgres" else None
    path = tmp_path / "events" / "credits.jsonl"
    opened: list[Any] = []

    async def make(**options: Any) -> Any:
        if backend == "postgres":
            options.setdefault("pool_size", 4)
            where: dict[str, Any] = {"database_url": url, "replica_urls": replicas}
        else:
            options.pop("pool_size", None)
            where = {"path": path}
        if through_sync:
            journal: Any = AsyncOverSync(await asyncio.to_thread(sync.open_journal, backend, **where, **options))
        else:
            from eventstore import create_event_journal

            journal = await create_event_journal(backend, **where, **options)
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        if replicas:
            # Every read's pages came from the standby: none fell back to the primary.
            metrics = journal.get_metrics()
            assert metrics["replica_fallback_pages"] == 0, metrics
        await journal.close()


@pytest.fixture
async def journal(open_journal: OpenJournal) -> BaseEventJournal:
    return await open_journal()
