"""eventstore.sync: the blocking interface, on both backends: every method blocks and answers as
the async journal does, reads are plain iterators fetched a page per hop, many threads may call
one journal at once, and a call from inside its own loop refuses instead of deadlocking."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventstore import ConcurrencyError, InvalidEventError
from eventstore import sync as blocking

from .helpers import event

GUARD = 30.0  # seconds before a hang becomes a failure


@pytest.fixture(params=["file", "postgres"])
def sync_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[blocking.SyncJournal]:
    if request.param == "postgres":
        options: dict[str, Any] = {"backend": "postgres", "database_url": request.getfixturevalue("database_url"), "pool_size": 4}
    else:
        options = {"backend": "file", "path": tmp_path / "events.jsonl"}
    journal = blocking.open_journal(**options)
    try:
        yield journal
    finally:
        journal.close()


def test_every_method_blocks_and_answers_as_the_async_journal(sync_journal):
    journal = sync_journal
    assert journal.append_event(event(entity_id="acct-1")) is True
    first = journal.append(event(entity_id="acct-1"), expected_version=1)
    assert first.stored and first.entity_version == 2
    retry = event(entity_id="acct-1", idempotency_key="k-1")
    assert journal.append_events([retry, event(entity_id="acct-2")]) == [True, True]
    assert journal.append_event(retry) is False
    many = journal.append_many([event(entity_id="acct-2")], checkpoint=("relay", 3))
    assert many[0].stored and journal.checkpoint("relay") == 3
    with pytest.raises(ConcurrencyError):
        journal.append(event(entity_id="acct-1"), expected_version=1)
    with pytest.raises(InvalidEventError, match="event_type"):
        journal.append_event(event(event_type=""))
    with pytest.raises(InvalidEventError, match="after"):
        journal.read_events(after=-1)  # argument errors at the call, as the async method's

    stored = list(journal.read_events())
    assert len(stored) == 5 and journal.last_position() == stored[-1].position
    assert [e.entity_version for e in journal.read_entity("acct-1")] == [1, 2, 3]
    assert [e.entity_version for e in journal.read_entity("acct-1", backwards=True, limit=2)] == [3, 2]
    assert len(list(journal.query_events(event_type="credits.minted", after=stored[1].position))) == 3
    journal.save_snapshot("balances", stored[-1].position, {"acct-1": 3})
    snapshot = journal.load_snapshot("balances")
    assert snapshot is not None and snapshot.state == {"acct-1": 3}
    assert journal.get_metrics()["appended"] == 5


def test_reads_fetch_a_page_per_hop(sync_journal):
    journal = sync_journal
    for start in range(0, 2500, 500):
        journal.append_events([event(idempotency_key=f"k-{n}") for n in range(start, start + 500)])
    events = journal.read_events()
    before = journal.hops
    assert next(events).idempotency_key == "k-0"
    assert journal.hops == before + 1  # one page fetched, not the whole journal
    for _ in range(999):
        next(events)
    assert journal.hops == before + 1  # the rest of that page came from memory
    rest = list(events)
    assert [e.idempotency_key for e in rest] == [f"k-{n}" for n in range(1000, 2500)]
    assert journal.hops == before + 3  # 2,500 events in three pages


def test_sixteen_threads_share_one_journal(sync_journal):
    journal = sync_journal
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for n in range(40):
                journal.append(event(entity_id=f"thread-{w}", idempotency_key=f"t{w}-{n}"), expected_version=n)
                if n % 10 == 0:
                    journal.append_event(event(entity_id="shared"))
                    list(journal.read_entity(f"thread-{w}", backwards=True, limit=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    stored = list(journal.read_events())
    assert len(stored) == 16 * 44 and len({e.position for e in stored}) == len(stored)
    for w in range(16):
        assert [e.entity_version for e in stored if e.entity_id == f"thread-{w}"] == list(range(1, 41))
    assert [e.entity_version for e in stored if e.entity_id == "shared"] == list(range(1, 65))


def test_a_subscription_in_another_thread_sees_each_event_once(sync_journal):
    journal = sync_journal
    journal.append_event(event(idempotency_key="before"))
    seen: list[str] = []
    subscription = journal.subscribe()

    def follow() -> None:
        for e in subscription:
            seen.append(e.idempotency_key)
            if len(seen) == 21:
                return

    follower = threading.Thread(target=follow)
    follower.start()
    for n in range(20):
        journal.append_event(event(idempotency_key=f"live-{n}"))
    follower.join(GUARD)
    assert not follower.is_alive()
    assert seen == ["before"] + [f"live-{n}" for n in range(20)]
    subscription.close()  # ends the subscription on the loop
    subscription.close()


def test_a_call_from_its_own_loop_refuses_instead_of_deadlocking(sync_journal):
    journal = sync_journal

    async def inside() -> None:
        journal.last_position()

    with pytest.raises(RuntimeError, match="inside its own event loop"):
        asyncio.run_coroutine_threadsafe(inside(), journal.loop).result(GUARD)
    assert journal.last_position() == 0  # the journal still works from outside


def test_close_stops_the_thread_and_later_calls_say_so(tmp_path):
    journal = blocking.open_journal("file", path=tmp_path / "events.jsonl")
    with journal:
        journal.append_event(event())
        thread = journal.thread
    assert not thread.is_alive()
    journal.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        journal.append_event(event())
    with blocking.open_journal("file", path=tmp_path / "events.jsonl") as again:
        assert len(list(again.read_events())) == 1


def test_a_journal_that_cannot_open_leaves_no_thread_behind(monkeypatch):
    from eventstore import ConfigurationError

    monkeypatch.delenv("DATABASE_URL", raising=False)
    def loop_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "eventstore-sync"}

    before = loop_threads()
    with pytest.raises(ConfigurationError, match="unknown journal backend"):
        blocking.open_journal("nope")
    with pytest.raises(ConfigurationError, match="needs a database URL"):
        blocking.open_journal("postgres", database_url="")
    assert loop_threads() <= before  # each failed open stopped the loop thread it started
