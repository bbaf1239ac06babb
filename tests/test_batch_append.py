"""Batches appended set-based (PostgreSQL, migration 0012): one plan and one INSERT per batch,
with the answers the element-by-element batch gave, including when another writer commits one of
the batch's keys while the batch is being written."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from eventstore import ConcurrencyError, PostgresEventJournal

from .helpers import event, read_all

GUARD = 30.0  # seconds before a hang becomes a failure


async def test_a_key_committed_during_the_batch_sends_it_again_without_a_version_gap(database_url):
    """Another session holds an uncommitted append of key K for another entity (so it shares no
    lock with the batch). The batch plans K as version 1 of "acct" and the next event as version
    2; its INSERT waits for that session and skips K when it commits. Storing the rest would
    start "acct" at version 2, so the function raises ES412 and the journal sends the batch
    again: K is then a duplicate, and "acct" starts at 1."""
    journal = PostgresEventJournal(database_url)
    await journal.initialize()
    holder, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetch(
            "SELECT * FROM credit_events_append(gen_random_uuid(), 'contested', 'credits.minted', 1, now(), 'other', "
            "gen_random_uuid(), NULL, '{}'::jsonb, 'elsewhere', NULL)")
        batch = asyncio.ensure_future(journal.append_many([
            event(entity_id="acct", idempotency_key="contested"), event(entity_id="acct"), event(entity_id="acct"),
        ]))
        deadline = asyncio.get_running_loop().time() + GUARD
        while not await watcher.fetchval(  # the batch's INSERT waits for the holder's transaction
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' AND query LIKE '%append_batch%'"):
            assert asyncio.get_running_loop().time() < deadline and not batch.done()
            await asyncio.sleep(0.02)
        await holder.execute("COMMIT")
        contested, first, second = await asyncio.wait_for(batch, GUARD)
        stored = {e.idempotency_key: e for e in await read_all(journal)}
        assert not contested.stored and contested.position == stored["contested"].position
        assert stored["contested"].entity_id == "elsewhere"
        assert (first.stored, first.entity_version, second.stored, second.entity_version) == (True, 1, True, 2)
        assert [e.entity_version for e in stored.values() if e.entity_id == "acct"] == [1, 2]
    finally:
        await holder.close()
        await watcher.close()
        await journal.close()


async def test_a_batch_numbers_each_entity_from_its_head_and_skips_duplicates(database_url):
    async with PostgresEventJournal(database_url) as journal:
        stored = event(entity_id="a")
        await journal.append_many([stored, event(entity_id="a")])
        repeated = event(entity_id="b")
        answers = await journal.append_many(
            [event(entity_id="b"), stored, event(entity_id="a"), repeated, event(entity_id=None), repeated,
             event(entity_id="b")],
            expected_versions={"b": 0, "a": 2},
        )
        assert [(a.stored, a.entity_version) for a in answers] == [
            (True, 1), (False, 1), (True, 3), (True, 2), (True, None), (False, 2), (True, 3)]
        positions = [a.position for a in answers if a.stored]
        assert positions == sorted(positions)  # positions follow the caller's order


async def test_a_conflict_names_the_first_element_out_of_line_and_writes_nothing(database_url):
    async with PostgresEventJournal(database_url) as journal:
        await journal.append_many([event(entity_id="a"), event(entity_id="a"), event(entity_id="b")])
        with pytest.raises(ConcurrencyError) as raised:
            await journal.append_many([event(entity_id="b"), event(entity_id="a")], expected_versions={"b": 1, "a": 1})
        assert (raised.value.entity_id, raised.value.expected, raised.value.actual) == ("a", 1, 2)
        assert len(await read_all(journal)) == 3
