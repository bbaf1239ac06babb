"""How eventstore.integrations.eventsourcing maps eventsourcing's records, beyond what the
library's own test cases ask: exact byte states, versions, originators a process has not seen,
snapshots, foreign events, and a subscription stopped from another thread. Both backends."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import DataError, InfrastructureFactory, IntegrityError, ProgrammingError, StoredEvent

from eventstore import EventEnvelope
from eventstore.integrations.eventsourcing import Factory
from eventstore.integrations.eventsourcing.mapping import STATE, STATE_BASE64, VERSION

MakeFactory = Callable[..., Factory]


@pytest.fixture(params=["file", "postgres"])
def make_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeFactory]:
    if request.param == "postgres":
        yield from _factories({"DATABASE_URL": request.getfixturevalue("database_url")})
    else:
        yield from _factories({"EVENT_JOURNAL_BACKEND": "file", "EVENT_JOURNAL_PATH": str(tmp_path / "app.jsonl")})


@pytest.fixture
def make_pg_factory(database_url: str) -> Iterator[MakeFactory]:
    """Factories on one PostgreSQL database: several writers, as several processes are (a file
    journal has one writer at a time)."""
    yield from _factories({"DATABASE_URL": database_url})


def _factories(base: dict[str, str]) -> Iterator[MakeFactory]:
    made: list[Factory] = []

    def make(**env: str) -> Factory:
        factory = InfrastructureFactory.construct(
            {"PERSISTENCE_MODULE": "eventstore.integrations.eventsourcing", **base, **env}
        )
        assert isinstance(factory, Factory)
        made.append(factory)
        return factory

    yield make
    for factory in made:
        factory.close()


def _journal_events(factory: Factory) -> list[EventEnvelope]:
    return list(factory.store.sync.read_events())


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.notes: list[str] = []

    @event("Noted")
    def note(self, text: str) -> None:
        self.notes.append(text)


def test_states_come_back_byte_for_byte(make_factory: MakeFactory) -> None:
    factory = make_factory()
    recorder = factory.application_recorder()
    every_byte = bytes(range(256))  # NUL and invalid UTF-8 included
    text = '{"a":"é \\" \\\\ \\u0001","b":[1,2.5e300]}'.encode()
    originator = uuid.uuid4()
    recorder.insert_events([StoredEvent(originator, 1, "t", every_byte), StoredEvent(originator, 2, "t", text)])
    assert [s.state for s in recorder.select_events(originator)] == [every_byte, text]
    binary, json_text = _journal_events(factory)
    assert base64.b64decode(binary.payload[STATE_BASE64]) == every_byte
    # A UTF-8 state is kept as its text: no base64, no size penalty in the database.
    assert json_text.payload == {VERSION: 2, STATE: text.decode()}


def test_encrypted_and_compressed_applications_read_their_aggregates_back(make_factory: MakeFactory, tmp_path: Path) -> None:
    factory_env = make_factory().env  # the journal settings of this backend
    env = {
        **{k: v for k, v in factory_env.items()},
        "CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
        "CIPHER_KEY": AESCipher.create_key(16),
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "IS_SNAPSHOTTING_ENABLED": "yes",
    }
    app = Application[uuid.UUID](env=env)
    try:
        account = Account("ada")
        for i in range(4):
            account.note(f"note {i} " * 50)
        app.save(account)
        app.take_snapshot(account.id)
        again = app.repository.get(account.id)
        assert again.notes == account.notes and again.version == 5
        stored = list(app.factory.store.sync.read_events())  # type: ignore[attr-defined]
        assert len(stored) == 5 and all(STATE_BASE64 in e.payload for e in stored)
        assert app.snapshots is not None
        assert [s.originator_version for s in app.snapshots.get(account.id, desc=True, limit=1)] == [5]
    finally:
        app.close()


def test_versions_are_entity_versions_plus_a_fixed_offset(make_factory: MakeFactory) -> None:
    factory = make_factory()
    recorder = factory.aggregate_recorder()
    from_one, from_zero = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([StoredEvent(from_one, v, "t", b"s") for v in (1, 2, 3)])
    recorder.insert_events([StoredEvent(from_zero, v, "t", b"s") for v in (0, 1)])
    versions = {(e.entity_id, e.payload[VERSION]): e.entity_version for e in _journal_events(factory)}
    assert versions == {
        (str(from_one), 1): 1, (str(from_one), 2): 2, (str(from_one), 3): 3,
        (str(from_zero), 0): 1, (str(from_zero), 1): 2,
    }
    # Reads by version translate exactly, in both directions.
    assert [s.originator_version for s in recorder.select_events(from_one, gt=1, lte=2)] == [2]
    assert [s.originator_version for s in recorder.select_events(from_zero, lte=0)] == [0]
    assert [s.originator_version for s in recorder.select_events(from_zero, desc=True, limit=1)] == [1]


def test_a_process_that_never_saw_an_originator_learns_where_it_is(make_pg_factory: MakeFactory) -> None:
    make_factory = make_pg_factory
    first, second = make_factory(), make_factory()  # as two processes: the second knows nothing
    originator = uuid.uuid4()
    first.aggregate_recorder().insert_events([StoredEvent(originator, v, "t", b"s") for v in (1, 2, 3)])
    fresh = second.aggregate_recorder()
    fresh.insert_events([StoredEvent(originator, 4, "t", b"four")])
    refused = {
        4: "already stored",  # taken
        2: "already stored",
        6: "gap",  # 5 is missing
        0: "before its first stored version 1",
    }
    for version, reason in refused.items():
        with pytest.raises(IntegrityError, match=reason):
            second.aggregate_recorder().insert_events([StoredEvent(originator, version, "t", b"x")])
        with pytest.raises(IntegrityError, match=reason):  # a process that has not learnt it yet
            make_factory().aggregate_recorder().insert_events([StoredEvent(originator, version, "t", b"x")])
    with pytest.raises(IntegrityError, match="follow each other"):
        fresh.insert_events([StoredEvent(originator, 5, "t", b"x"), StoredEvent(originator, 7, "t", b"x")])
    assert [(s.originator_version, s.state) for s in first.aggregate_recorder().select_events(originator, gt=2)] == [
        (3, b"s"), (4, b"four"),
    ]


def test_two_processes_racing_for_a_version_store_one(make_pg_factory: MakeFactory) -> None:
    make_factory = make_pg_factory
    originator = uuid.uuid4()
    make_factory().aggregate_recorder().insert_events([StoredEvent(originator, 1, "t", b"s")])
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def write(n: int) -> None:
        recorder = make_factory(EVENT_JOURNAL_POOL_SIZE="2").aggregate_recorder()
        barrier.wait()
        try:
            recorder.insert_events([StoredEvent(originator, 2, "t", str(n).encode()), StoredEvent(originator, 3, "t", b"s")])
            outcomes.append("stored")
        except IntegrityError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["stored"]
    assert [s.originator_version for s in make_factory().aggregate_recorder().select_events(originator)] == [1, 2, 3]


def test_snapshots_keep_the_newest_of_each_aggregate(make_factory: MakeFactory) -> None:
    snapshots = make_factory().aggregate_recorder("snapshots")
    originator = uuid.uuid4()
    snapshots.insert_events([StoredEvent(originator, 5, "snap", b"\xff five")])
    snapshots.insert_events([StoredEvent(originator, 5, "snap", b"\xff five")])  # the same again: kept
    with pytest.raises(IntegrityError):
        snapshots.insert_events([StoredEvent(originator, 3, "snap", b"three")])
    with pytest.raises(IntegrityError):
        snapshots.insert_events([StoredEvent(originator, 5, "snap", b"another five")])
    assert snapshots.select_events(originator, desc=True, limit=1) == [StoredEvent(originator, 5, "snap", b"\xff five")]
    assert snapshots.select_events(originator, lte=4, desc=True, limit=1) == []  # older ones are not kept
    snapshots.insert_events([StoredEvent(originator, 9, "snap", b"nine")])
    assert [s.originator_version for s in snapshots.select_events(originator, lte=9)] == [9]


def test_an_event_not_written_by_the_integration_is_named(make_factory: MakeFactory) -> None:
    factory = make_factory()
    factory.store.sync.append(EventEnvelope.new("credits.Granted", {"amount": 5}, actor_id="svc", entity_id="acct-1"))
    with pytest.raises(DataError, match="position 1 .*not written through eventstore.integrations.eventsourcing"):
        factory.application_recorder().select_notifications(None, 10)


def test_bad_input_is_refused_whole(make_factory: MakeFactory) -> None:
    factory = make_factory()
    recorder = factory.application_recorder()
    originator = uuid.uuid4()
    with pytest.raises(DataError, match="event_type"):
        recorder.insert_events([StoredEvent(originator, 1, "t", b"s"), StoredEvent(originator, 2, "x" * 256, b"s")])
    assert recorder.select_events(originator) == [] and recorder.max_notification_id() is None


def test_a_subscription_stopped_from_another_thread_ends_its_wait(make_factory: MakeFactory) -> None:
    recorder = make_factory().application_recorder()
    originator = uuid.uuid4()
    recorder.insert_events([StoredEvent(originator, 1, "a", b"1")])
    received: list[Any] = []
    subscription = recorder.subscribe(gt=None, topics=["b"])
    with subscription:
        def consume() -> None:
            received.extend(subscription)

        consumer = threading.Thread(target=consume)
        consumer.start()
        recorder.insert_events([StoredEvent(originator, 2, "b", b"2"), StoredEvent(originator, 3, "a", b"3")])
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        subscription.stop()  # the consumer is waiting for the next "b": it must return
        consumer.join(10)
        assert not consumer.is_alive()
    assert [(n.id, n.topic) for n in received] == [(2, "b")]


def test_text_originator_ids_read_back_as_text(make_factory: MakeFactory) -> None:
    recorder = make_factory(ORIGINATOR_ID_TYPE="text").application_recorder()
    recorder.insert_events([StoredEvent("account-7", 1, "t", b"s")])
    assert recorder.select_events("account-7") == [StoredEvent("account-7", 1, "t", b"s")]
    assert [n.originator_id for n in recorder.select_notifications(None, 10)] == ["account-7"]


def test_a_reader_expecting_uuids_is_told_why_an_id_is_not_one(make_pg_factory: MakeFactory) -> None:
    make_pg_factory(ORIGINATOR_ID_TYPE="text").application_recorder().insert_events([StoredEvent("account-7", 1, "t", b"s")])
    with pytest.raises(DataError, match="'account-7', which is not a UUID.*ORIGINATOR_ID_TYPE=text"):
        make_pg_factory().application_recorder().select_notifications(None, 10)


def test_settings_that_cannot_work_are_refused_clearly(empty_database_url: str) -> None:
    base = {"PERSISTENCE_MODULE": "eventstore.integrations.eventsourcing", "DATABASE_URL": empty_database_url}
    unmigrated = InfrastructureFactory.construct({**base, "CREATE_TABLE": "no"})
    with pytest.raises(ProgrammingError, match="eventstore schema upgrade"):  # nothing created behind the DBA's back
        unmigrated.application_recorder()
    with pytest.raises(ProgrammingError, match="EVENT_JOURNAL_POOL_SIZE must be a whole number, got 'many'"):
        InfrastructureFactory.construct({**base, "EVENT_JOURNAL_POOL_SIZE": "many"}).application_recorder()
    with pytest.raises(ProgrammingError, match="eventstore schema upgrade"):  # the bad setting created nothing
        InfrastructureFactory.construct({**base, "CREATE_TABLE": "no"}).application_recorder()
    created = InfrastructureFactory.construct(base)  # CREATE_TABLE defaults to yes: the schema is made
    try:
        created.application_recorder().insert_events([StoredEvent(uuid.uuid4(), 1, "t", b"s")])
        assert created.application_recorder().max_notification_id() == 1
    finally:
        created.close()
