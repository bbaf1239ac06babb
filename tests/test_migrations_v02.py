"""Migrations 0005 (event_type up to 255 characters), 0006 (checkpoints), 0008 (hardened
functions) and 0009 (keyset indexes) on a table with data: the widening is catalog-only, its
rollback refuses while a longer type is stored, and all go down and up again without touching the
events (0009 also after an interrupted index build)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from eventstore import EventStoreError, PostgresEventJournal
from eventstore.postgres.schema import schema_status, upgrade_schema

from .helpers import event, read_all

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
LONG_TYPE = "bankaccounts.domainmodel:BankAccount.TransactionAppended"  # 56 characters


def _yoyo(url: str):  # type: ignore[no-untyped-def]
    from yoyo import get_backend, read_migrations

    backend = get_backend(url.replace("postgresql://", "postgresql+psycopg://", 1) + "?schema=public")
    return backend, read_migrations(str(MIGRATIONS))


def apply_up_to(url: str, last: str) -> None:
    backend, migrations = _yoyo(url)
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id <= last)))


def roll_back_to(url: str, last_kept: str) -> list[str]:
    """Roll back every applied migration after ``last_kept``; the ids rolled back."""
    backend, migrations = _yoyo(url)
    with backend.lock():
        moved = [m for m in backend.to_rollback(migrations) if m.id > last_kept]
        backend.rollback_migrations(moved)
    return [m.id for m in moved]


def sql(url: str, statement: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement).fetchone()[0]  # type: ignore[index]


def storage(url: str) -> tuple[object, object]:
    """Where the table and the type index live on disk: a rewrite or rebuild changes these."""
    return (sql(url, "SELECT pg_relation_filenode('credit_events')"),
            sql(url, "SELECT pg_relation_filenode('idx_credit_events_type')"))


def insert_rows(url: str, count: int, event_type: str = "credits.minted") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO credit_events (event_id, idempotency_key, event_type, "timestamp", actor_id,
                                          correlation_id, payload, entity_id, entity_version)
               SELECT gen_random_uuid(), 'k-' || g || '-' || %s, %s, now(), 'loader', gen_random_uuid(),
                      '{}'::jsonb, NULL, NULL
                 FROM generate_series(1, %s) AS g""",
            (event_type, event_type, count),
        )


def test_0005_widens_without_rewriting_the_table_or_its_indexes(empty_database_url):
    url = empty_database_url
    apply_up_to(url, "0004_roles")
    insert_rows(url, 2000)
    before = storage(url)
    assert sql(url, "SELECT character_maximum_length FROM information_schema.columns "
                    "WHERE table_name = 'credit_events' AND column_name = 'event_type'") == 50
    apply_up_to(url, "0005_event_type_255")  # 0009 rebuilds the type index on purpose
    assert storage(url) == before  # catalog-only: same files on disk, no rewrite, no index rebuild
    assert sql(url, "SELECT character_maximum_length FROM information_schema.columns "
                    "WHERE table_name = 'credit_events' AND column_name = 'event_type'") == 255
    assert sql(url, "SELECT count(*) FROM credit_events") == 2000


async def test_new_migrations_go_down_and_up_again_with_events_kept(database_url):
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_many([event(entity_id="acct-1") for _ in range(5)], checkpoint=("relay", 10))
        before = await read_all(journal)
    assert roll_back_to(database_url, "0004_roles") == [
        "0014_single_statement_append", "0013_set_based_entity_locks", "0012_set_based_batch_append", "0011_group_append", "0010_definer_appends_and_schema_roles", "0009_keyset_indexes", "0008_hardened_functions", "0007_fence_waits_for_writers", "0006_checkpoints",
        "0005_event_type_255"]
    assert [s.migration_id for s in schema_status(database_url) if not s.applied] == [
        "0005_event_type_255", "0006_checkpoints", "0007_fence_waits_for_writers", "0008_hardened_functions",
        "0009_keyset_indexes", "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]
    assert sql(database_url, "SELECT to_regclass('credit_checkpoints') IS NULL") is True
    with pytest.raises(EventStoreError, match="eventstore schema upgrade"):
        await PostgresEventJournal(database_url, pool_size=1).initialize()

    assert upgrade_schema(database_url) == ["0005_event_type_255", "0006_checkpoints", "0007_fence_waits_for_writers",
                                            "0008_hardened_functions", "0009_keyset_indexes",
                                            "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        assert await read_all(journal) == before  # the events did not move
        assert await journal.checkpoint("relay") is None  # consumers' progress went with the table
        await journal.append_many([event(LONG_TYPE)], checkpoint=("relay", 11))
        assert await journal.checkpoint("relay") == 11
        assert [e.event_type for e in await read_all(journal)][-1] == LONG_TYPE


async def test_0005_rollback_refuses_while_a_longer_type_is_stored(database_url):
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_event(event(LONG_TYPE))
    with pytest.raises(psycopg.Error, match="an event_type of 56 characters is stored"):
        roll_back_to(database_url, "0004_roles")
    # 0009 to 0006 went down in their own transactions; 0005 stayed, with the event.
    assert [s.migration_id for s in schema_status(database_url) if not s.applied] == [
        "0006_checkpoints", "0007_fence_waits_for_writers", "0008_hardened_functions", "0009_keyset_indexes",
        "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]
    assert sql(database_url, "SELECT event_type FROM credit_events") == LONG_TYPE
    assert sql(database_url, "SELECT character_maximum_length FROM information_schema.columns "
                             "WHERE table_name = 'credit_events' AND column_name = 'event_type'") == 255
    assert upgrade_schema(database_url) == ["0006_checkpoints", "0007_fence_waits_for_writers",
                                            "0008_hardened_functions", "0009_keyset_indexes",
                                            "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]


async def test_writer_and_reader_roles_get_checkpoint_privileges(database_url):
    def privileges(role: str) -> tuple[object, ...]:
        return tuple(sql(database_url, f"SELECT {check}") for check in (
            f"has_table_privilege('{role}', 'credit_checkpoints', 'SELECT')",
            f"has_table_privilege('{role}', 'credit_checkpoints', 'INSERT')",
            f"has_column_privilege('{role}', 'credit_checkpoints', 'position', 'UPDATE')",
            f"has_column_privilege('{role}', 'credit_checkpoints', 'name', 'UPDATE')",
            f"has_table_privilege('{role}', 'credit_checkpoints', 'DELETE')",
        ))

    # Writers move checkpoints through credit_checkpoints_advance only (migration 0010).
    assert privileges("eventstore_writer") == (True, False, False, False, False)
    assert privileges("eventstore_reader") == (True, False, False, False, False)


def hardening(url: str) -> dict[str, object]:
    """What 0008 and 0009 change, read from the catalog."""
    return {
        "pinned": sql(url, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
                           " AND proname LIKE 'credit%' AND proconfig IS NOT NULL"),
        "lock_function": sql(url, "SELECT to_regprocedure('credit_events_lock_entities(text[])') IS NOT NULL"),
        "reader_draws_ids": sql(url, "SELECT has_sequence_privilege('eventstore_reader', 'credit_events_id_seq', 'USAGE')"),
        "table_options": sql(url, "SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = 'credit_events'::regclass"),
        "gin_options": sql(url, "SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class"
                                " WHERE oid = 'idx_credit_events_payload_gin'::regclass"),
        "indexes": sql(url, "SELECT string_agg(indexrelid::regclass || ':' || indisvalid, ',' ORDER BY indexrelid::regclass::text)"
                            " FROM pg_index WHERE indrelid = 'credit_events'::regclass"
                            " AND indexrelid::regclass::text ~ '_(type|correlation)'"),
    }


BEFORE_0008 = {
    "pinned": 0, "lock_function": False, "reader_draws_ids": True, "table_options": "", "gin_options": "",
    "indexes": "idx_credit_events_correlation:true,idx_credit_events_type:true",
}
AT_HEAD = {  # 0008-0010's hardening; 0011's group append is pinned as well, 0014 dropped one pinned helper
    "pinned": 11, "lock_function": True, "reader_draws_ids": False,
    "table_options": "autovacuum_vacuum_insert_scale_factor=0.01,autovacuum_vacuum_insert_threshold=10000,"
                     "autovacuum_freeze_min_age=0",
    "gin_options": "fastupdate=off",
    "indexes": "idx_credit_events_correlation_id:true,idx_credit_events_type_id:true",
}


async def test_0008_to_0010_go_down_and_up_again_on_a_table_with_data(database_url):
    insert_rows(database_url, 5000)
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_many([event(entity_id="acct-1") for _ in range(3)], checkpoint=("relay", 7))
        before = await read_all(journal)
    assert hardening(database_url) == AT_HEAD

    assert roll_back_to(database_url, "0007_fence_waits_for_writers") == [
        "0014_single_statement_append", "0013_set_based_entity_locks", "0012_set_based_batch_append", "0011_group_append", "0010_definer_appends_and_schema_roles", "0009_keyset_indexes", "0008_hardened_functions"]
    assert hardening(database_url) == BEFORE_0008
    # An interrupted build of 0009 leaves an INVALID index under the new name (here: a unique
    # build that fails on duplicates); running the migration again replaces it.
    with pytest.raises(psycopg.Error):
        sql(database_url, "CREATE UNIQUE INDEX CONCURRENTLY idx_credit_events_type_id ON credit_events (event_type)")
    assert sql(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_credit_events_type_id'::regclass") is False

    assert upgrade_schema(database_url) == ["0008_hardened_functions", "0009_keyset_indexes",
                                            "0010_definer_appends_and_schema_roles", "0011_group_append", "0012_set_based_batch_append",
        "0013_set_based_entity_locks", "0014_single_statement_append"]
    assert hardening(database_url) == AT_HEAD
    assert sql(database_url, "SELECT pg_get_indexdef('idx_credit_events_type_id'::regclass)").endswith("(event_type, id)")
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        assert await read_all(journal) == before  # the events did not move
        assert await journal.checkpoint("relay") == 7
        assert await journal.append(event(entity_id="acct-1"), expected_version=3)
        assert [e.position async for e in journal.query_events(event_type="credits.minted", limit=3)] == [
            e.position for e in before[:3]]
