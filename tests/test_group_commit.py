"""Group commit of single appends (PostgreSQL, migration 0011): appends that queue while the
journal's append round trips are out go as one statement, and each caller still gets exactly
what it would have got alone, whatever its neighbours in the group did."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest

from eventstore import (
    Appended,
    ConcurrencyError,
    DatabaseUnavailableError,
    InvalidEventError,
    PostgresEventJournal,
)

from .helpers import event, read_all

GUARD = 30.0  # seconds before a hang becomes a failure


async def one_slot(url: str, **options: object) -> PostgresEventJournal:
    """A journal with one append round trip at a time: every caller that arrives while it is out
    queues, so a burst of N calls is one lone append followed by one group of N - 1."""
    journal = PostgresEventJournal(url, append_connections=1, **options)  # type: ignore[arg-type]
    await journal.initialize()
    return journal


async def test_a_burst_is_one_lone_append_then_one_group(database_url):
    journal = await one_slot(database_url)
    try:
        events = [event(entity_id=f"acct-{k % 5}") for k in range(40)]
        results = await asyncio.wait_for(asyncio.gather(*(journal.append(e) for e in events)), GUARD)
        metrics = journal.get_metrics()
        assert (metrics["append_groups"], metrics["append_grouped_events"]) == (1, 39)
        assert all(r.stored for r in results)
        stored = await read_all(journal)
        assert [e.idempotency_key for e in stored] == [e.idempotency_key for e in events]  # arrival order
        assert [(e.position, e.entity_version) for e in stored] == [(r.position, r.entity_version) for r in results]
        for k in range(5):
            assert [e.entity_version for e in stored if e.entity_id == f"acct-{k}"] == list(range(1, 9))
    finally:
        await journal.close()


async def test_a_lone_caller_goes_alone(database_url):
    journal = await one_slot(database_url)
    try:
        for _ in range(5):
            assert await journal.append_event(event(entity_id="solo")) is True
        assert journal.get_metrics()["append_groups"] == 0
    finally:
        await journal.close()


async def test_each_caller_in_a_group_gets_its_own_outcome(database_url):
    journal = await one_slot(database_url, idempotency_cache_size=0)  # duplicates go to the database
    try:
        stored_before = event(entity_id="acct-1")
        first = await journal.append(stored_before)
        await journal.append_event(event(entity_id="acct-2"))  # acct-2 is at version 1

        twin = event(entity_id="acct-3")
        reused_id = msgspec.structs.replace(event(entity_id="acct-4"), event_id=stored_before.event_id)
        calls = [
            journal.append(event(entity_id="acct-9")),  # goes alone: the rest queue behind it
            journal.append(event(entity_id="acct-5")),  # stored
            journal.append(msgspec.structs.replace(stored_before, event_id=uuid.uuid4())),  # a retry: duplicate
            journal.append(event(entity_id="acct-2"), expected_version=5),  # conflict: acct-2 is at 1
            journal.append(twin),  # stored
            journal.append(msgspec.structs.replace(twin, event_id=uuid.uuid4())),  # the same key again: duplicate
            journal.append(reused_id),  # refused: its event_id is stored under another key
            journal.append(event(entity_id="acct-2"), expected_version=1),  # stored as version 2
            journal.append(event(entity_id=None)),  # stored, no entity
        ]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
        assert journal.get_metrics()["append_groups"] == 1

        alone, fresh, retry, conflict, new_twin, twin_again, refused, versioned, entity_less = results
        assert isinstance(alone, Appended) and alone.stored
        assert isinstance(fresh, Appended) and fresh.stored and fresh.entity_version == 1
        assert retry == Appended(first.position, first.entity_version, stored=False)  # located for free
        assert isinstance(conflict, ConcurrencyError)
        assert (conflict.entity_id, conflict.expected, conflict.actual) == ("acct-2", 5, 1)
        assert isinstance(new_twin, Appended) and new_twin.stored
        assert twin_again == Appended(new_twin.position, new_twin.entity_version, stored=False)
        assert isinstance(refused, InvalidEventError) and "event_id" in str(refused)
        assert isinstance(versioned, Appended) and versioned.stored and versioned.entity_version == 2
        assert isinstance(entity_less, Appended) and entity_less.stored and entity_less.entity_version is None

        keys = [e.idempotency_key for e in await read_all(journal)]
        assert len(keys) == len(set(keys)) == 2 + 5  # two before, five stored by the group and the lone call
        assert reused_id.idempotency_key not in keys
    finally:
        await journal.close()


async def test_a_busy_entity_fails_only_its_own_caller(database_url):
    """The group statement waits for every entity lock; past lock_timeout the whole statement is
    refused, and each event is appended again alone: only the event of the busy entity fails."""
    journal = await one_slot(database_url, lock_timeout=0.3)
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT credit_events_lock_entities(ARRAY['busy'])")
        calls = [journal.append(event(entity_id="free-0"))]  # alone
        calls += [journal.append(event(entity_id=name)) for name in ("free-1", "busy", "free-2")]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
        assert [type(r).__name__ for r in results] == ["Appended", "Appended", "DatabaseUnavailableError", "Appended"]
        assert isinstance(results[2], DatabaseUnavailableError) and "'busy' is busy" in str(results[2])
        await holder.execute("ROLLBACK")
        assert sorted(e.entity_id for e in await read_all(journal)) == ["free-0", "free-1", "free-2"]
    finally:
        await holder.close()
        await journal.close()


async def test_groups_under_load_lose_and_double_nothing(database_url):
    """64 callers on two append connections, with retries of each other's keys and expected versions: every
    acknowledged event is stored once, versions are 1..n per entity, every duplicate names the
    stored original, and a subscription delivers exactly the stored events."""
    journal = PostgresEventJournal(database_url, pool_size=4)  # two append connections, the default
    await journal.initialize()
    acked: dict[str, Appended] = {}
    duplicates: list[tuple[str, Appended]] = []
    conflicts = 0

    async def writer(w: int) -> None:
        nonlocal conflicts
        version = 0
        for n in range(25):
            own = event(entity_id=f"own-{w}", idempotency_key=f"own-{w}-{n}")
            try:
                result = await journal.append(own, expected_version=version if n % 3 else version + 1)
            except ConcurrencyError as exc:
                assert (exc.entity_id, exc.actual) == (f"own-{w}", version)
                conflicts += 1
            else:
                assert result.stored and result.entity_version == version + 1
                acked[own.idempotency_key] = result
                version += 1
            shared = event(entity_id=f"shared-{n % 4}", idempotency_key=f"shared-{w}-{n}")
            acked[shared.idempotency_key] = await journal.append(shared)
            if acked and n % 5 == 0:
                key = sorted(acked)[(w * 31 + n) % len(acked)]
                duplicates.append((key, await journal.append(event(entity_id="shared-0", idempotency_key=key))))

    seen: list[int] = []

    async def follow() -> None:
        async for e in journal.subscribe():
            seen.append(e.position)

    follower = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(64))), 120)
        assert journal.get_metrics()["append_groups"] > 0
        stored = await read_all(journal)
        by_key = {e.idempotency_key: e for e in stored}
        assert len(by_key) == len(stored) == len(acked)
        for key, result in acked.items():
            assert result.stored and (by_key[key].position, by_key[key].entity_version) == (result.position, result.entity_version)
        for key, result in duplicates:
            assert not result.stored and (result.position, result.entity_version) == (acked[key].position, acked[key].entity_version)
        versions: dict[str, list[int]] = {}
        for e in stored:
            versions.setdefault(e.entity_id, []).append(e.entity_version)
        assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
        assert conflicts > 0
        deadline = asyncio.get_running_loop().time() + GUARD
        while len(seen) < len(stored) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert seen == [e.position for e in stored]
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await journal.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_append_connections_must_be_positive(bad):
    from eventstore import ConfigurationError

    with pytest.raises(ConfigurationError, match="append_connections must be >= 1"):
        PostgresEventJournal("postgresql://postgres@127.0.0.1/x", append_connections=bad)


async def test_a_key_committed_during_the_group_sends_its_events_alone_without_a_version_gap(database_url):
    """Another session holds an uncommitted insert of key K (no entity, so it shares no lock with
    the group). The group's probes cannot see K, the INSERT then waits for that session and skips
    K when it commits: fewer rows than planned, so the function raises ES412 and every event is
    appended alone. K's caller gets a duplicate, the others their own positions, with no gap in
    the entity's versions."""
    journal = await one_slot(database_url)
    holder, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetch(
            "SELECT * FROM credit_events_append(gen_random_uuid(), 'contested', 'credits.minted', 1, now(), 'other', "
            "gen_random_uuid(), NULL, '{}'::jsonb, NULL, NULL)")
        calls = [journal.append(event(entity_id="free-0"))]  # alone
        calls += [journal.append(event(entity_id=None, idempotency_key="contested")),
                  journal.append(event(entity_id="acct")), journal.append(event(entity_id="acct"))]
        burst = asyncio.ensure_future(asyncio.gather(*calls, return_exceptions=True))
        deadline = asyncio.get_running_loop().time() + GUARD
        while not await watcher.fetchval(  # the group's INSERT waits for the holder's transaction
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' AND query LIKE '%append_group%'"):
            assert asyncio.get_running_loop().time() < deadline and not burst.done()
            await asyncio.sleep(0.02)
        await holder.execute("COMMIT")
        lone, contested, first, second = await asyncio.wait_for(burst, GUARD)
        assert lone.stored and not contested.stored and first.stored and second.stored
        stored = {e.idempotency_key: e for e in await read_all(journal)}
        assert contested.position == stored["contested"].position and stored["contested"].actor_id == "other"
        assert [(first.position, first.entity_version), (second.position, second.entity_version)] == [
            (e.position, e.entity_version) for e in stored.values() if e.entity_id == "acct"]
        assert (first.entity_version, second.entity_version) == (1, 2)
        assert journal.get_metrics()["append_groups"] == 1
    finally:
        await holder.close()
        await watcher.close()
        await journal.close()
