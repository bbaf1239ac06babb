"""The 0.2 additions of the contract (../shared/CONTRACT.md, "Additions in 0.2"), run unchanged against
both backends: Appended and append/append_many, last_position, read_entity's version ranges,
query_events over a list of types, 255-character event types, and checkpoints."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from eventstore import (
    Appended,
    CheckpointConflictError,
    ConcurrencyError,
    FileEventJournal,
    InvalidEventError,
    PostgresEventJournal,
)

from .helpers import event, read_all, unstamped

T0 = datetime(2025, 3, 1, tzinfo=UTC)
CORR_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
CORR_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
TYPES = ["credits.minted", "credits.spent", "credits.moved"]
QUALIFIED = "bankaccounts.domainmodel:BankAccount.TransactionAppended"
GUARD = 30  # seconds before a hung subscription fails the test


@pytest.fixture
def open_journal(contract_journal):
    """Every contract test runs on both backends, directly and through eventstore.sync."""
    return contract_journal


async def collect(iterator) -> list:
    return [e async for e in iterator]


async def query(journal, **filters) -> list:
    return await collect(journal.query_events(**filters))


async def entity(journal, entity_id: str, **options) -> list:
    return await collect(journal.read_entity(entity_id, **options))


async def located(journal) -> dict[str, tuple[int, int | None]]:
    """Where read_events says each stored event is, by idempotency key."""
    return {e.idempotency_key: (e.position, e.entity_version) for e in await read_all(journal)}


def where(appended: Appended) -> tuple[int, int | None]:
    return appended.position, appended.entity_version


async def paged(open_journal):
    """A journal whose reads take several pages (PostgreSQL: page_size=7; the file backend has no pages)."""
    journal = await open_journal()
    if journal.backend != "postgres":
        return journal
    await journal.close()
    return await open_journal(page_size=7)


# -- Appended, append and append_many ------------------------------------------------------------


def test_appended_is_a_frozen_struct():
    appended = Appended(position=3, entity_version=None, stored=True)
    assert isinstance(appended, msgspec.Struct)
    assert msgspec.structs.astuple(appended) == (3, None, True)
    assert [f.name for f in msgspec.structs.fields(Appended)] == ["position", "entity_version", "stored"]
    assert appended == Appended(position=3, entity_version=None, stored=True)
    assert hash(appended) == hash(Appended(position=3, entity_version=None, stored=True))
    with pytest.raises(AttributeError):
        appended.stored = False  # type: ignore[misc]


async def test_append_says_where_each_event_landed(journal):
    events = [event(entity_id=["a", "b", None][i % 3], payload={"i": i}) for i in range(10)]
    results = [await journal.append(e) for e in events[:4]]
    results += await journal.append_many(events[4:])
    assert all(type(r) is Appended and r.stored is True for r in results)
    assert [where(r) for r in results] == [(await located(journal))[e.idempotency_key] for e in events]
    positions = [r.position for r in results]
    assert positions == sorted(set(positions))
    for name, versions in (("a", [1, 2, 3, 4]), ("b", [1, 2, 3]), (None, [None] * 3)):
        assert [r.entity_version for r, e in zip(results, events) if e.entity_id == name] == versions


async def test_duplicate_says_where_the_original_is(journal):
    first = event(entity_id="acct", idempotency_key="pay-1")
    original = await journal.append(first)
    await journal.append_many([event(entity_id="acct"), event()])
    retry = event(entity_id="acct", idempotency_key="pay-1", payload={"amount": 999})
    duplicate = Appended(position=original.position, entity_version=1, stored=False)
    assert await journal.append(retry) == duplicate
    assert await journal.append(first, expected_version=0) == duplicate  # a duplicate before a conflict
    loose = event(idempotency_key="loose")
    loose_at = await journal.append(loose)
    batch = await journal.append_many([retry, event(entity_id="acct"), loose])
    assert batch[0] == duplicate and batch[2] == Appended(position=loose_at.position, entity_version=None, stored=False)
    assert batch[1].stored and batch[1].entity_version == 3
    stored = await read_all(journal)
    assert len(stored) == 5 and unstamped(stored[0]) == first
    metrics = journal.get_metrics()
    assert metrics["duplicates"] == 4 and metrics["appended"] == 5


async def test_duplicate_of_another_instances_append_is_located_cold(open_journal):
    writer = await open_journal()
    with_entity, without = event(entity_id="acct"), event()
    await writer.append_event(event(entity_id="acct"))
    assert await writer.append_events([with_entity, without, event(entity_id="acct")]) == [True, True, True]
    original = await located(writer)
    await writer.close()

    reopened = await open_journal()  # never saw these keys in this process

    def duplicate_of(e):
        return Appended(*original[e.idempotency_key], stored=False)

    assert await reopened.append(with_entity) == duplicate_of(with_entity)
    assert await reopened.append(without, expected_version=3) == duplicate_of(without)
    assert await reopened.append(with_entity, expected_version=1) == duplicate_of(with_entity)
    batch = await reopened.append_many([without, event(entity_id="acct"), with_entity])
    assert (batch[0], batch[2]) == (duplicate_of(without), duplicate_of(with_entity))
    assert batch[1].stored and batch[1].entity_version == 4
    assert len(await read_all(reopened)) == 5


async def test_repeated_key_within_one_batch_reports_the_first(journal):
    first = event(entity_id="acct", idempotency_key="k", payload={"n": 1})
    again = event(entity_id="acct", idempotency_key="k", payload={"n": 2})
    batch = await journal.append_many([first, event(entity_id="acct"), again, event(), again])
    assert [a.stored for a in batch] == [True, True, False, True, False]
    assert batch[2] == batch[4] == Appended(position=batch[0].position, entity_version=1, stored=False)
    assert batch[1].entity_version == 2
    stored = await read_all(journal)
    assert len(stored) == 3 and unstamped(stored[0]) == first


async def test_append_keeps_the_expected_version_rules_and_atomicity(journal):
    assert (await journal.append(event(entity_id="a"), expected_version=0)).entity_version == 1
    with pytest.raises(ConcurrencyError) as info:
        await journal.append(event(entity_id="a"), expected_version=0)
    assert (info.value.entity_id, info.value.expected, info.value.actual) == ("a", 0, 1)
    before = await read_all(journal)
    with pytest.raises(ConcurrencyError):
        await journal.append_many([event(entity_id="b"), event(entity_id="a")], expected_versions={"b": 0, "a": 0})
    bad = msgspec.structs.replace(event(), actor_id="")
    with pytest.raises(InvalidEventError, match="actor_id"):
        await journal.append_many([event(entity_id="c"), bad])
    with pytest.raises(InvalidEventError, match="actor_id"):
        await journal.append(bad)
    assert await read_all(journal) == before
    batch = await journal.append_many(
        [event(entity_id="b"), event(entity_id="a"), event(entity_id="a")], expected_versions={"b": 0, "a": 1}
    )
    assert [(a.stored, a.entity_version) for a in batch] == [(True, 1), (True, 2), (True, 3)]
    assert await journal.append_many([]) == []


async def test_append_event_and_append_events_still_return_bools(journal):
    one = event(entity_id="a")
    assert (await journal.append_event(one)) is True and (await journal.append_event(one)) is False
    flags = await journal.append_events([one, event(entity_id="a")])
    assert flags == [False, True] and all(type(f) is bool for f in flags)


# -- last_position and reads after a position ------------------------------------------------------


async def test_last_position(open_journal):
    journal = await open_journal()
    assert await journal.last_position() == 0
    first = await journal.append(event(entity_id="a"))
    assert await journal.last_position() == first.position
    last = (await journal.append_many([event(entity_id=f"e{i % 2}") for i in range(6)]))[-1].position
    assert await journal.last_position() == last
    last = (await journal.append(event(idempotency_key="again"))).position
    assert (await journal.append(event(idempotency_key="again"))).stored is False
    assert await journal.last_position() == last
    stored = await read_all(journal)
    assert len(stored) == 8 and stored[-1].position == last and await read_all(journal, after=last) == []
    await journal.close()
    reopened = await open_journal()
    assert await reopened.last_position() == last
    assert [e.position for e in await read_all(reopened)] == [e.position for e in stored]
    newer = await reopened.append(event())
    assert newer.position > last and await reopened.last_position() == newer.position


async def test_reads_after_a_position_return_the_suffix(journal):
    events = [event(TYPES[i % 2], {"i": i}) for i in range(12)]
    positions = [a.position for a in await journal.append_many(events)]
    for cut in (0, 1, 5, 11, 12):
        after = positions[cut - 1] if cut else 0
        assert [e.position for e in await read_all(journal, after)] == positions[cut:]
        assert [e.position for e in await query(journal, after=after)] == positions[cut:]
        spent = [p for p, e in zip(positions, events) if e.event_type == TYPES[1] and p > after][:2]
        assert [e.position for e in await query(journal, event_type=TYPES[1], after=after, limit=2)] == spent


# -- read_entity ---------------------------------------------------------------------------------------

STREAM = 20


def stream_time(version: int) -> datetime:
    """Timestamps out of version order, so a time range picks scattered versions."""
    return T0 + timedelta(minutes=(version * 7) % STREAM)


ENTITY_READS = [
    {},
    {"after_version": 5},
    {"up_to_version": 12},
    {"after_version": 5, "up_to_version": 12},
    {"backwards": True},
    {"backwards": True, "limit": 1},
    {"limit": 9},
    {"limit": 100, "up_to_version": 100},
    {"after_version": 3, "up_to_version": 17, "backwards": True, "limit": 8},
    {"after_version": 3, "up_to_version": 17, "limit": 8},
    {"since": T0 + timedelta(minutes=4), "until": T0 + timedelta(minutes=15), "limit": 4},
    {"since": T0 + timedelta(minutes=4), "until": T0 + timedelta(minutes=15), "backwards": True},
    {"since": T0 + timedelta(minutes=4), "until": T0 + timedelta(minutes=15), "after_version": 2, "up_to_version": 18,
     "backwards": True, "limit": 5},
    {"since": T0 + timedelta(minutes=7), "backwards": True, "limit": 6},
    {"after_version": STREAM},
    {"after_version": STREAM + 5, "backwards": True},
    {"up_to_version": 0},
    {"after_version": 7, "up_to_version": 7},
    {"after_version": 9, "up_to_version": 4, "backwards": True},
    {"limit": 0},
    {"limit": 0, "backwards": True},
]


def expected_versions(since=None, until=None, after_version=None, up_to_version=None, backwards=False, limit=None):
    versions = [
        v for v in range(1, STREAM + 1)
        if (after_version is None or v > after_version) and (up_to_version is None or v <= up_to_version)
        and (since is None or stream_time(v) >= since) and (until is None or stream_time(v) < until)
    ]
    versions = versions[::-1] if backwards else versions
    return versions if limit is None else versions[:limit]


async def test_read_entity_version_ranges(open_journal):
    journal = await paged(open_journal)
    stream = [event(entity_id="s", payload={"v": v}, timestamp=stream_time(v)) for v in range(1, STREAM + 1)]
    others = [[event(entity_id="s2"), event(entity_id="s-extra"), event()] for _ in stream]
    await journal.append_many([e for pair in zip(stream, others) for e in (pair[0], *pair[1])])
    for options in ENTITY_READS:
        got = await entity(journal, "s", **options)
        want = expected_versions(**options)
        assert [e.entity_version for e in got] == want, options
        assert [unstamped(e) for e in got] == [stream[v - 1] for v in want], options
    assert await entity(journal, "nobody", backwards=True, limit=1) == []


async def test_latest_event_of_a_stream(open_journal):
    journal = await paged(open_journal)
    for round_ in range(3):
        await journal.append_many([event(entity_id=f"acct-{i}", payload={"r": round_}) for i in range(4) for _ in range(i + 4)])
        for i in range(4):
            (latest,) = await entity(journal, f"acct-{i}", backwards=True, limit=1)
            assert latest.entity_version == (round_ + 1) * (i + 4) and latest.payload == {"r": round_}


# -- invalid arguments: the same refusal from both backends, nothing written ---------------------------


def _read_entity(**options):
    return lambda journal: entity(journal, "s", **options)


def _types(value):
    return lambda journal: query(journal, event_type=value)


def long_type():
    """An event whose type is one character too long (built past EventEnvelope.new, which may check it too)."""
    return msgspec.structs.replace(event(), event_type="t" * 256)


def _checkpoint(value):
    return lambda journal: journal.append_many([event(entity_id="s")], checkpoint=value)


BAD_CHECKPOINTS = [("", 1), ("c" * 256, 1), ("a\x00b", 1), (7, 1), ("c", -1), ("c", "3"), ("c", True), ("c", 1.5),
                   ("c", None), ("c",), ("c", 1, 2), "c"]
REFUSED = [
    *[("after_version", _read_entity(after_version=bad)) for bad in (-1, "1", True, 1.5)],
    *[("up_to_version", _read_entity(up_to_version=bad)) for bad in (-2, "3", False)],
    *[("limit", _read_entity(limit=bad)) for bad in (-1, "2", True)],
    ("backwards", _read_entity(backwards="yes")),
    *[("event_type", _types(bad)) for bad in ([], [TYPES[0], 5], [None])],
    *[("checkpoint", _checkpoint(bad)) for bad in BAD_CHECKPOINTS],
    ("event_type", lambda journal: journal.append(long_type())),
    ("event_type", lambda journal: journal.append_many([event(), long_type()], checkpoint=("c", 1))),
    ("event_type", lambda journal: journal.append_event(long_type())),
    ("event_type", lambda journal: journal.append_events([event(), long_type()])),
]


async def refusal(journal, call) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        await call(journal)  # raised when called or when iterated: either is fine
    return info.value


@pytest.mark.parametrize("name,call", REFUSED, ids=[f"{i}-{name}" for i, (name, _) in enumerate(REFUSED)])
async def test_invalid_arguments_are_refused_and_nothing_is_written(journal, name, call):
    assert name in str(await refusal(journal, call))
    assert await read_all(journal) == [] and await journal.checkpoint("c") is None
    assert journal.get_metrics()["total_events"] == 0


async def test_refusals_read_the_same_in_both_backends(tmp_path, database_url):
    async with FileEventJournal(tmp_path / "events.jsonl") as file, PostgresEventJournal(database_url, pool_size=2) as pg:
        for name, call in REFUSED:
            message = str(await refusal(file, call))
            assert str(await refusal(pg, call)) == message and name in message


# -- query_events over a list of types, and 255-character types ---------------------------------------


async def test_event_type_list_matches_any(journal):
    await journal.append_many(
        event(TYPES[i % 3], {"n": i % 2}, entity_id=f"e{i % 2}", correlation_id=[CORR_A, CORR_B][i % 4 // 2],
              timestamp=T0 + timedelta(minutes=i))
        for i in range(30)
    )
    stored = await read_all(journal)
    pair = [TYPES[0], TYPES[2]]
    assert await query(journal, event_type=pair) == [e for e in stored if e.event_type in pair]
    assert await query(journal, event_type=TYPES) == stored
    for same in ([TYPES[1]], [TYPES[1], TYPES[1]], ["no.such.type", TYPES[1]]):
        assert await query(journal, event_type=same) == await query(journal, event_type=TYPES[1])
    assert await query(journal, event_type=["no.such.type"]) == []
    filters = {"correlation_id": CORR_A, "payload_contains": {"n": 0}, "since": T0 + timedelta(minutes=3),
               "until": T0 + timedelta(minutes=27)}
    matching = [
        e for e in stored if e.event_type in pair and e.correlation_id == CORR_A and e.payload["n"] == 0
        and filters["since"] <= e.timestamp < filters["until"]
    ]
    assert len(matching) >= 4 and await query(journal, event_type=pair, **filters) == matching
    after = matching[0].position
    assert await query(journal, event_type=pair, after=after, limit=2, **filters) == matching[1:3]
    assert await query(journal, event_type=list(reversed(pair)), limit=3) == [e for e in stored if e.event_type in pair][:3]


async def test_event_types_up_to_255_characters(open_journal):
    journal = await open_journal()
    longest, wide = event("t" * 255, entity_id="acct"), event("é" * 255, entity_id="acct")
    qualified = event(QUALIFIED, entity_id="acct")
    assert (await journal.append(longest)).stored
    assert [a.stored for a in await journal.append_many([wide, qualified])] == [True, True]
    for name, call in REFUSED[-4:]:
        assert name in str(await refusal(journal, call))
    await journal.close()
    journal = await open_journal()
    assert [unstamped(e) for e in await read_all(journal)] == [longest, wide, qualified]
    assert [unstamped(e) for e in await query(journal, event_type=QUALIFIED)] == [qualified]
    assert [unstamped(e) for e in await query(journal, event_type=["t" * 255, "é" * 255])] == [longest, wide]
    assert [e.event_type for e in await entity(journal, "acct", backwards=True)] == [QUALIFIED, "é" * 255, "t" * 255]


# -- checkpoints --------------------------------------------------------------------------------------


async def assert_conflict(journal, name: str, given: int, stored: int, events=()) -> None:
    """A checkpoint at or below the stored one: CheckpointConflictError, and nothing of the batch written."""
    events = list(events)
    before = await read_all(journal)
    with pytest.raises(CheckpointConflictError) as info:
        await journal.append_many(events, checkpoint=(name, given))
    assert isinstance(info.value, ConcurrencyError)
    assert (info.value.name, info.value.stored, info.value.given) == (name, stored, given)
    assert await read_all(journal) == before and await journal.checkpoint(name) == stored


async def test_checkpoint_is_stored_with_the_events(journal):
    assert await journal.checkpoint("c") is None
    events = [event(entity_id="acct"), event()]
    batch = await journal.append_many(events, checkpoint=("c", 10))
    assert [a.stored for a in batch] == [True, True] and await journal.checkpoint("c") == 10
    assert [unstamped(e) for e in await read_all(journal)] == events
    assert await journal.append_many([], checkpoint=("c", 12)) == []
    assert await journal.checkpoint("c") == 12 and len(await read_all(journal)) == 2
    assert await journal.checkpoint("other") is None


async def test_checkpoint_only_moves_forward_and_a_conflict_writes_nothing(journal):
    await journal.append_many([], checkpoint=("c", 12))
    for given in (12, 11, 0):
        await assert_conflict(journal, "c", given, 12, [event(entity_id="acct"), event()])
    await assert_conflict(journal, "c", 12, 12)
    lost = event(entity_id="acct")
    await assert_conflict(journal, "c", 3, 12, [lost])
    retried = await journal.append(lost)  # the refused batch left no trace: not a duplicate, version 1
    assert retried.stored and retried.entity_version == 1
    await journal.append_many([], checkpoint=("zero", 0))  # 0 is a position like any other...
    await assert_conflict(journal, "zero", 0, 0)  # ...and the next must be past it


async def test_checkpoint_names_are_independent(journal):
    names = ["a", "b", "a ", "consumer/ünï", "n" * 255]
    for i, name in enumerate(names):
        await journal.append_many([], checkpoint=(name, 5 + i))
    assert [await journal.checkpoint(name) for name in names] == [5, 6, 7, 8, 9]
    await journal.append_many([event()], checkpoint=("b", 2**40))  # any position of any journal
    await assert_conflict(journal, "a", 4, 5)
    assert [await journal.checkpoint(name) for name in names] == [5, 2**40, 7, 8, 9]


async def test_checkpoint_and_an_expected_version_conflict_write_neither(journal):
    await journal.append(event(entity_id="acct"))
    with pytest.raises(ConcurrencyError) as info:
        await journal.append_many([event(entity_id="acct")], expected_versions={"acct": 0}, checkpoint=("c", 5))
    assert not isinstance(info.value, CheckpointConflictError) and info.value.entity_id == "acct"
    assert await journal.checkpoint("c") is None and len(await read_all(journal)) == 1
    await journal.append_many([], checkpoint=("c", 5))
    await assert_conflict(journal, "c", 5, 5, [event(entity_id="acct")])
    assert (await journal.append(event(entity_id="acct"), expected_version=1)).entity_version == 2


async def test_checkpoints_survive_reopening(open_journal):
    journal = await open_journal()
    await journal.append_many([event()], checkpoint=("c", 40))
    await journal.append_many([], checkpoint=("d", 7))
    await journal.close()
    reopened = await open_journal()
    assert await reopened.checkpoint("c") == 40 and await reopened.checkpoint("d") == 7
    await assert_conflict(reopened, "c", 40, 40, [event()])
    await reopened.append_many([], checkpoint=("c", 41))
    await reopened.close()
    assert await (await open_journal()).checkpoint("c") == 41


async def test_checkpoints_are_not_events(journal):
    await journal.append_many([], checkpoint=("c", 1))
    events = [event(entity_id="c"), event(entity_id="acct")]
    await journal.append_many(events, checkpoint=("c", 2))
    await journal.append_many([], checkpoint=("acct", 3))
    sentinel = event(entity_id="acct")
    events.append(sentinel)
    last = (await journal.append(sentinel)).position
    await journal.append_many([], checkpoint=("c", 4))
    stored = await read_all(journal)
    assert [unstamped(e) for e in stored] == events
    assert await query(journal) == stored and await query(journal, after=0, limit=10) == stored
    assert [unstamped(e) for e in await entity(journal, "c")] == events[:1]
    assert [unstamped(e) for e in await entity(journal, "acct", backwards=True)] == [events[2], events[1]]

    async def until_sentinel() -> list:
        got = []
        async for e in journal.subscribe():
            got.append(e)
            if e.position >= last:
                return got
        return got

    assert await asyncio.wait_for(until_sentinel(), GUARD) == stored
    metrics = journal.get_metrics()
    assert metrics["total_events"] == 3 and metrics["appended"] == 3


async def test_another_instance_reads_the_checkpoint(open_journal):
    """The file journal keeps checkpoints in the journal file itself: a read-only instance on the same
    path sees them, also ones written after it opened. PostgreSQL: a second journal on the same store."""
    journal = await open_journal()
    await journal.append_many([event()], checkpoint=("c", 10))
    if journal.backend == "file":
        other = FileEventJournal(journal.path, read_only=True)
        await other.initialize()
    else:
        other = await open_journal()
    try:
        assert await other.checkpoint("c") == 10 and await other.checkpoint("d") is None
        await journal.append_many([], checkpoint=("c", 11))
        assert await other.checkpoint("c") == 11
        assert len(await read_all(other)) == 1
    finally:
        await other.close()


async def test_out_of_range_numbers_get_one_answer_in_both_backends(journal):
    """Beyond PostgreSQL's INTEGER versions and BIGINT positions: nothing to read, or refused, never a driver error."""
    await journal.append_event(event(entity_id="e"))
    assert [e async for e in journal.read_entity("e", after_version=2**31)] == []
    assert [e async for e in journal.read_entity("e", after_version=2**40, backwards=True)] == []
    assert [e.entity_version async for e in journal.read_entity("e", up_to_version=2**40)] == [1]
    with pytest.raises(InvalidEventError, match="checkpoint position: must be at most"):
        await journal.append_many([event()], checkpoint=("c", 2**63))
    with pytest.raises(InvalidEventError, match="position: must be at most"):
        await journal.save_snapshot("s", 2**63, {})
    await journal.append_many([], checkpoint=("c", 2**63 - 1))
    assert await journal.checkpoint("c") == 2**63 - 1
    assert journal.get_metrics()["total_events"] == 1
