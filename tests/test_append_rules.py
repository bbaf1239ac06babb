"""Append rules both backends must share: expected versions are checked even for an empty batch,
a retried entity-less event is a duplicate before it is a conflict (warm or cold key cache), and
close() returns while other tasks are still appending, losing nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import pytest

from eventstore import ConcurrencyError, EventStoreError, InvalidEventError

from .helpers import event, read_all

CLOSE_LIMIT = 5.0  # seconds close() may take with appends in flight (a hang check, not a benchmark)
GUARD = 10.0  # seconds before a hang becomes a failure


# -- expected versions on an empty batch ------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, "1", True], ids=["negative", "string", "bool"])
async def test_empty_batch_still_checks_expected_versions(journal, bad):
    with pytest.raises(InvalidEventError, match="expected_versions"):
        await journal.append_events([], expected_versions={"a": bad})
    assert await read_all(journal) == []


async def test_empty_batch_with_valid_expected_versions_is_a_no_op(journal):
    assert await journal.append_events([], expected_versions={"a": 0}) == []
    assert await journal.append_events([]) == []
    assert await read_all(journal) == []


# -- entity-less events and expected_version ----------------------------------------------------


async def test_entity_less_new_event_with_expected_version(journal):
    before = await journal.append_event(event(entity_id=None))
    assert before is True
    fresh = event(entity_id=None)
    with pytest.raises(ConcurrencyError) as caught:
        await journal.append_event(fresh, expected_version=2)
    assert (caught.value.entity_id, caught.value.expected, caught.value.actual) == (None, 2, 0)
    assert fresh.idempotency_key not in {e.idempotency_key for e in await read_all(journal)}
    assert await journal.append_event(fresh, expected_version=0) is True
    stored = await read_all(journal)
    assert [e.idempotency_key for e in stored][-1] == fresh.idempotency_key and len(stored) == 2


async def test_entity_less_retry_is_a_duplicate_before_a_conflict_warm_and_cold(open_journal):
    journal = await open_journal()
    retried = event(entity_id=None)
    assert await journal.append_event(retried) is True
    # Warm: this journal instance stored it.
    assert await journal.append_event(retried, expected_version=3) is False
    await journal.close()

    # Cold: a fresh journal on the same store has never seen the key in this process.
    reopened = await open_journal()
    assert await reopened.append_event(retried, expected_version=3) is False
    # And a new entity-less event is still held to its expectation on the cold journal.
    fresh = event(entity_id=None)
    with pytest.raises(ConcurrencyError) as caught:
        await reopened.append_event(fresh, expected_version=2)
    assert (caught.value.entity_id, caught.value.expected, caught.value.actual) == (None, 2, 0)
    stored = await read_all(reopened)
    assert [e.idempotency_key for e in stored] == [retried.idempotency_key]
    assert reopened.get_metrics()["duplicates"] == 1


# -- close() with appends in flight -------------------------------------------------------------


class Writers:
    """Tasks that append new events until an exception stops them, recording what was acknowledged."""

    def __init__(self, journal, round_: int) -> None:
        self.journal = journal
        self.round = round_
        self.acknowledged: list[str] = []
        self.stopped_by: list[BaseException] = []
        self.foreign: list[BaseException] = []  # exceptions that are not EventStoreError
        self.calls = 0

    async def run(self, task: int) -> None:
        counter = itertools.count()
        try:
            while True:
                i = next(counter)
                entity = f"r{self.round}-t{task}-e{i % 3}" if i % 2 else None
                self.calls += 1
                if i % 3 == 2:
                    batch = [event(entity_id=entity, payload={"t": task, "i": i, "j": j}) for j in range(1 + i % 4)]
                    flags = await self.journal.append_events(batch)
                    self.acknowledged += [e.idempotency_key for e, stored in zip(batch, flags) if stored]
                else:
                    one = event(entity_id=entity, payload={"t": task, "i": i})
                    if await self.journal.append_event(one):
                        self.acknowledged.append(one.idempotency_key)
        except EventStoreError as exc:
            self.stopped_by.append(exc)
        except Exception as exc:  # noqa: BLE001 - the test fails on these below
            self.foreign.append(exc)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cleanup after a failure: do not leave appenders running into the fixture's teardown."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=GUARD)


async def _close_with_appends_in_flight(journal, writers: Writers, tasks: list[asyncio.Task[None]]) -> None:
    started = time.monotonic()
    try:
        await asyncio.wait_for(journal.close(), GUARD)
    except TimeoutError:
        await _stop(tasks)
        pytest.fail(f"close() did not return within {GUARD} s while {len(tasks)} tasks were appending")
    elapsed = time.monotonic() - started
    if elapsed >= CLOSE_LIMIT:
        await _stop(tasks)
        pytest.fail(f"close() took {elapsed:.1f} s while tasks were appending (limit {CLOSE_LIMIT} s)")
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), GUARD)
    except TimeoutError:
        pytest.fail(f"appends in flight did not finish within {GUARD} s after close() returned")
    assert not writers.foreign, f"appends raised non-EventStoreError exceptions: {writers.foreign!r}"


def _assert_each_once(stored_keys: list[str], acknowledged: list[str]) -> None:
    counts = Counter(stored_keys)
    repeated = [k for k, n in counts.items() if n > 1]
    assert not repeated, f"{len(repeated)} idempotency keys read more than once, e.g. {repeated[:3]}"
    missing = [k for k in acknowledged if k not in counts]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events are missing, e.g. {missing[:3]}"


async def test_close_returns_while_tasks_are_appending(open_journal):
    journal = await open_journal()
    acknowledged: list[str] = []
    for round_ in range(3):
        writers = Writers(journal, round_)
        tasks = [asyncio.create_task(writers.run(t)) for t in range(8)]
        await asyncio.sleep(0.2)
        assert writers.calls > 0 and not any(t.done() for t in tasks), (writers.stopped_by, writers.foreign)
        await _close_with_appends_in_flight(journal, writers, tasks)
        acknowledged += writers.acknowledged
        assert writers.acknowledged, f"round {round_}: nothing was acknowledged before close()"

        journal = await open_journal()  # a fresh journal on the same store: the next round's
        _assert_each_once([e.idempotency_key for e in await read_all(journal)], acknowledged)


async def test_postgres_close_cuts_a_statement_that_outlasts_its_bound(database_url):
    """An append blocked on its entity's lock (held by another session) cannot hold close() up:
    after CLOSE_TIMEOUT its connection is cut and the caller gets an EventStoreError."""
    import asyncpg

    from eventstore import PostgresEventJournal
    from eventstore.postgres.connections import CLOSE_TIMEOUT

    blocker = await asyncpg.connect(database_url)
    try:
        holder = blocker.transaction()
        await holder.start()
        # The lock step of every append (migration 0008).
        await blocker.execute("SELECT credit_events_lock_entities(ARRAY['hot'])")
        journal = PostgresEventJournal(database_url, pool_size=2)
        await journal.initialize()
        hot = event(entity_id="hot")
        blocked = asyncio.create_task(journal.append_event(hot))
        await asyncio.sleep(0.3)
        assert not blocked.done()
        started = time.monotonic()
        await asyncio.wait_for(journal.close(), GUARD)
        assert time.monotonic() - started < CLOSE_LIMIT + CLOSE_TIMEOUT
        with pytest.raises(EventStoreError):
            await asyncio.wait_for(blocked, GUARD)
        await holder.rollback()
    finally:
        await blocker.close()
    # The cut connection's server session may still commit once the lock is free: the append is in
    # doubt, as after any lost connection, and the caller's retry of the same envelope settles it.
    async with PostgresEventJournal(database_url, pool_size=1) as reopened:
        await reopened.append_event(hot)
        assert [e.idempotency_key for e in await read_all(reopened)] == [hot.idempotency_key]


async def test_postgres_close_after_gather_raised_with_appends_in_flight(database_url):
    from eventstore import PostgresEventJournal

    class Deliberate(Exception):
        pass

    async def fail_soon() -> None:
        await asyncio.sleep(0.1)
        raise Deliberate("stop")

    journal = PostgresEventJournal(database_url, pool_size=2, max_overflow=2)
    await journal.initialize()
    writers = Writers(journal, 0)
    tasks = [asyncio.create_task(writers.run(t)) for t in range(6)]
    try:
        with pytest.raises(Deliberate):
            await asyncio.gather(*tasks, fail_soon())
        # gather raised; the other writers are still mid-append.
        assert not all(t.done() for t in tasks)
        await _close_with_appends_in_flight(journal, writers, tasks)
        assert writers.acknowledged, "nothing was acknowledged before close()"
    finally:
        await _stop(tasks)

    async with PostgresEventJournal(database_url, pool_size=2) as reopened:
        _assert_each_once([e.idempotency_key for e in await read_all(reopened)], writers.acknowledged)
