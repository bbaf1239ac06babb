"""The journal contract (../shared/CONTRACT.md), run unchanged against both backends."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from eventstore import ConcurrencyError, EventEnvelope, InvalidEventError

from .helpers import event, read_all, unstamped

AWKWARD_PAYLOADS = [
    {},
    {"text": "naïve café — 日本語 — 🎉🚀 — \u200b zero width — \U0010ffff"},
    {"nested": {"a": [1, [2, [3, {"b": None}]]], "c": {"d": {"e": {"f": "deep"}}}}},
    {"big": 2**64 + 1, "negative": -(2**63) - 5, "huge": 10**40},
    {"float": 0.1, "small": 1e-7, "neg": -2.5, "int_like": 3.0},
    {"flags": [True, False, None], "zero": 0, "one": 1},
    {"quote": 'he said "hi" \\ back\\slash\n\ttab', "sql": "'); DROP TABLE credit_events; --"},
    {"entity_id": "agent-in-payload", "amount": 5},
]


@pytest.fixture
def open_journal(contract_journal):
    """Every contract test runs on both backends, directly and through eventstore.sync."""
    return contract_journal


async def test_round_trip_awkward_payloads(journal):
    appended = [event("test.awkward", payload, entity_id=f"e{i % 3}") for i, payload in enumerate(AWKWARD_PAYLOADS)]
    for e in appended:
        assert await journal.append_event(e) is True
    stored = await read_all(journal)
    assert [unstamped(e) for e in stored] == appended
    # Numbers keep their kind where it matters: booleans stay booleans, ints stay ints.
    flags = stored[5].payload["flags"]
    assert flags == [True, False, None] and all(type(f) is bool for f in flags[:2])
    assert type(stored[3].payload["big"]) is int


async def test_positions_and_entity_versions(journal):
    for i in range(9):
        await journal.append_event(event(entity_id=["a", "b", None][i % 3]))
    stored = await read_all(journal)
    positions = [e.position for e in stored]
    assert positions == sorted(positions) and len(set(positions)) == 9
    assert [e.entity_version for e in stored if e.entity_id == "a"] == [1, 2, 3]
    assert [e.entity_version for e in stored if e.entity_id == "b"] == [1, 2, 3]
    assert all(e.entity_version is None for e in stored if e.entity_id is None)


async def test_replay_from_cursor_is_the_suffix(journal):
    for i in range(25):
        await journal.append_event(event(payload={"i": i}))
    stored = await read_all(journal)
    for cut in (0, 1, 7, 24, 25):
        after = stored[cut - 1].position if cut else 0
        assert await read_all(journal, after=after) == stored[cut:]
    assert await read_all(journal, after=stored[-1].position + 1000) == []


async def test_timestamps_come_back_in_utc(journal):
    local = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    await journal.append_event(event(timestamp=local))
    (stored,) = await read_all(journal)
    assert stored.timestamp == local
    assert stored.timestamp.utcoffset() == timedelta(0)


async def test_duplicate_key_is_stored_once(journal):
    first = event(idempotency_key="transfer-42")
    retry = event(idempotency_key="transfer-42", payload={"amount": 999})
    assert await journal.append_event(first) is True
    assert await journal.append_event(retry) is False
    assert await journal.append_event(first) is False
    stored = await read_all(journal)
    assert [unstamped(e) for e in stored] == [first]
    metrics = journal.get_metrics()
    assert metrics["duplicates"] == 2 and metrics["appended"] == 1 and metrics["total_events"] == 1


async def test_concurrent_appends_of_one_key_store_exactly_one(open_journal):
    journal = await open_journal(pool_size=8)
    candidates = [event(idempotency_key="only-once", payload={"task": i}) for i in range(40)]
    results = await asyncio.gather(*(journal.append_event(e) for e in candidates))
    assert results.count(True) == 1
    stored = await read_all(journal)
    assert len(stored) == 1 and unstamped(stored[0]) == candidates[results.index(True)]


def _invalid_cases():
    base = event(entity_id="agent-1")
    r = msgspec.structs.replace
    return [
        ("event_type", r(base, event_type="")),
        ("event_type", r(base, event_type="x" * 256)),
        ("actor_id", r(base, actor_id="")),
        ("actor_id", r(base, actor_id="a" * 101)),
        ("entity_id", r(base, entity_id="e" * 256)),
        ("idempotency_key", r(base, idempotency_key="")),
        ("idempotency_key", r(base, idempotency_key="k" * 256)),
        ("schema_version", r(base, schema_version=0)),
        ("payload", r(base, payload=[1, 2])),  # type: ignore[arg-type]
        ("payload.x", r(base, payload={"x": float("nan")})),
        ("payload.y[1]", r(base, payload={"y": [1, float("inf")]})),
        ("payload.z", r(base, payload={"z": "a\x00b"})),
        ("payload", r(base, payload={"k\x00": 1})),
        ("payload.s", r(base, payload={"s": "\ud800"})),
        ("event_type", r(base, event_type="bad\x00type")),
        ("timestamp", r(base, timestamp=datetime(2024, 1, 1))),
        ("event_id", r(base, event_id="not-a-uuid")),  # type: ignore[arg-type]
        ("correlation_id", r(base, correlation_id=None)),  # type: ignore[arg-type]
        ("payload", r(base, payload={"blob": "x" * (1024 * 1024)})),
    ]


@pytest.mark.parametrize("field,bad", _invalid_cases(), ids=lambda v: v if isinstance(v, str) else "")
async def test_invalid_events_are_refused_and_nothing_is_written(journal, field, bad):
    with pytest.raises(InvalidEventError) as info:
        await journal.append_event(bad)
    assert field.split(".")[0].split("[")[0].split(" ")[0] in str(info.value)
    with pytest.raises(InvalidEventError):
        await journal.append_events([event(), bad])
    assert await read_all(journal) == []
    assert journal.get_metrics()["total_events"] == 0


async def test_max_payload_bytes_is_a_journal_option(open_journal):
    journal = await open_journal(max_payload_bytes=100)
    assert await journal.append_event(event(payload={"s": "x" * 50})) is True
    with pytest.raises(InvalidEventError, match="max_payload_bytes=100"):
        await journal.append_event(event(payload={"s": "x" * 100}))
    assert len(await read_all(journal)) == 1


async def test_same_input_same_message_in_both_backends(journal):
    bad = event(event_type="")
    with pytest.raises(InvalidEventError) as info:
        await journal.append_event(bad)
    assert str(info.value) == "invalid event: event_type: must not be empty"


async def test_expected_version(journal):
    assert await journal.append_event(event(entity_id="acct"), expected_version=0) is True
    assert await journal.append_event(event(entity_id="acct"), expected_version=1) is True
    with pytest.raises(ConcurrencyError) as info:
        await journal.append_event(event(entity_id="acct"), expected_version=1)
    assert (info.value.entity_id, info.value.expected, info.value.actual) == ("acct", 1, 2)
    with pytest.raises(ConcurrencyError):
        await journal.append_event(event(entity_id="new"), expected_version=3)
    assert [e.entity_version for e in await read_all(journal)] == [1, 2]


async def test_retry_of_stored_event_is_a_duplicate_not_a_conflict(journal):
    first = event(entity_id="acct")
    assert await journal.append_event(first, expected_version=0) is True
    assert await journal.append_event(event(entity_id="acct")) is True
    assert await journal.append_event(first, expected_version=0) is False


async def test_optimistic_concurrency_race(open_journal):
    journal = await open_journal(pool_size=10)
    wins = 0
    for round_ in range(5):
        contenders = [event(entity_id="hot", payload={"round": round_, "task": t}) for t in range(12)]

        async def try_append(e: EventEnvelope, version: int = round_) -> bool:
            try:
                return await journal.append_event(e, expected_version=version)
            except ConcurrencyError:
                return False

        results = await asyncio.gather(*(try_append(e) for e in contenders))
        assert results.count(True) == 1
        wins += 1
    assert [e.entity_version for e in await read_all(journal)] == list(range(1, wins + 1))


async def test_unversioned_appends_to_one_entity_under_concurrency(open_journal):
    journal = await open_journal(pool_size=10)
    await asyncio.gather(*(journal.append_event(event(entity_id="busy", payload={"i": i})) for i in range(60)))
    versions = [e.entity_version for e in await read_all(journal)]
    assert versions == list(range(1, 61))


async def test_batch_is_atomic(journal):
    await journal.append_event(event(entity_id="a"))
    with pytest.raises(ConcurrencyError):
        await journal.append_events(
            [event(entity_id="b"), event(entity_id="a")], expected_versions={"b": 0, "a": 0}
        )
    assert len(await read_all(journal)) == 1
    flags = await journal.append_events(
        [event(entity_id="b"), event(entity_id="a"), event(entity_id="a")], expected_versions={"b": 0, "a": 1}
    )
    assert flags == [True, True, True]
    assert [(e.entity_id, e.entity_version) for e in await read_all(journal)] == [
        ("a", 1), ("b", 1), ("a", 2), ("a", 3)
    ]


async def test_batch_with_repeated_key_stores_first(journal):
    one = event(idempotency_key="k1", payload={"n": 1})
    again = event(idempotency_key="k1", payload={"n": 2})
    stored_before = event(idempotency_key="k0")
    await journal.append_event(stored_before)
    flags = await journal.append_events([stored_before, one, again])
    assert flags == [False, True, False]
    assert [unstamped(e) for e in await read_all(journal)] == [stored_before, one]
    assert journal.get_metrics()["duplicates"] == 2


async def test_event_id_reused_under_another_key_is_refused(journal):
    first = event()
    await journal.append_event(first)
    clash = msgspec.structs.replace(first, idempotency_key="another-key")
    with pytest.raises(InvalidEventError, match="event_id"):
        await journal.append_event(clash)
    with pytest.raises(InvalidEventError, match="event_id"):
        await journal.append_events([event(), clash])
    assert len(await read_all(journal)) == 1


async def test_close_and_reopen(open_journal):
    journal = await open_journal()
    keep = [event(entity_id="x", payload={"i": i}) for i in range(5)]
    for e in keep:
        await journal.append_event(e)
    await journal.close()
    await journal.close()  # idempotent
    reopened = await open_journal()
    assert [unstamped(e) for e in await read_all(reopened)] == keep
    assert await reopened.append_event(keep[0]) is False
    assert await reopened.append_event(event(entity_id="x"), expected_version=5) is True
    assert reopened.get_metrics()["total_events"] == 6


async def test_metrics_have_the_contract_keys(journal):
    await journal.append_event(event())
    metrics = journal.get_metrics()
    assert {"backend", "total_events", "appended", "duplicates", "corrupted_skipped"} <= set(metrics)
    assert metrics["backend"] in ("file", "postgres")


async def test_async_with_initializes_and_closes(open_journal):
    journal = await open_journal()
    await journal.close()
    async with journal as same:
        assert await same.append_event(event()) is True


async def test_envelope_new_fills_defaults():
    e = EventEnvelope.new("agent.created", {"skill": 5}, actor_id="system")
    assert isinstance(e.event_id, uuid.UUID) and isinstance(e.correlation_id, uuid.UUID)
    assert e.idempotency_key == str(e.event_id)
    assert e.timestamp.tzinfo is not None and e.schema_version == 1 and e.causation_id is None
    assert e.position is None and e.entity_version is None
    with pytest.raises(AttributeError):
        e.event_type = "x"  # type: ignore[misc]
