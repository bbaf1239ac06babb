"""eventsourcing's own recorder test cases, shipped in the installed package, run unchanged
against eventstore.integrations.eventsourcing on a real PostgreSQL and on a file journal. Only the
factory methods they ask for are written here (and a test that runs the subscription case the
library ships as ``optional_test_insert_subscribe``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import eventsourcing.tests.persistence as shipped
import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from eventstore.integrations.eventsourcing import (
    EventstoreAggregateRecorder,
    EventstoreApplicationRecorder,
    EventstoreProcessRecorder,
    EventstoreTrackingRecorder,
    Factory,
)

PERSISTENCE_MODULE = "eventstore.integrations.eventsourcing"


class OnJournal:
    """Builds recorders from a factory found by ``PERSISTENCE_MODULE``, as applications do."""

    __test__ = False  # the cases below run once per backend, in the Test* classes
    backend: str
    journal_env: dict[str, str]
    factories: list[Factory]

    def factory(self) -> Factory:
        factory = InfrastructureFactory.construct({"PERSISTENCE_MODULE": PERSISTENCE_MODULE, **self.journal_env})
        assert isinstance(factory, Factory)
        self.factories.append(factory)
        return factory


@pytest.fixture(autouse=True)
def journal_env(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    case = request.instance
    if not isinstance(case, OnJournal):
        yield
        return
    if case.backend == "postgres":
        case.journal_env = {"DATABASE_URL": request.getfixturevalue("database_url")}
    else:
        case.journal_env = {"EVENT_JOURNAL_BACKEND": "file", "EVENT_JOURNAL_PATH": str(tmp_path / "app.jsonl")}
    case.factories = []
    yield
    for factory in case.factories:
        factory.close()


class AggregateRecorderCase(OnJournal, shipped.AggregateRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().aggregate_recorder()


class ApplicationRecorderCase(OnJournal, shipped.ApplicationRecorderTestCase[EventstoreApplicationRecorder]):
    def create_recorder(self) -> EventstoreApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TrackingRecorderCase(OnJournal, shipped.TrackingRecorderTestCase):
    def create_recorder(self) -> EventstoreTrackingRecorder:
        return self.factory().tracking_recorder()


class ProcessRecorderCase(OnJournal, shipped.ProcessRecorderTestCase):
    def create_recorder(self) -> EventstoreProcessRecorder:
        return self.factory().process_recorder()


class FactoryCase(OnJournal, shipped.InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        self.env = Environment(env={"PERSISTENCE_MODULE": PERSISTENCE_MODULE, **self.journal_env})
        super().setUp()

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[EventstoreAggregateRecorder]:
        return EventstoreAggregateRecorder

    def expected_application_recorder_class(self) -> type[EventstoreApplicationRecorder]:
        return EventstoreApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[EventstoreTrackingRecorder]:
        return EventstoreTrackingRecorder

    def tracking_recorder_subclass(self) -> type[EventstoreTrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[EventstoreProcessRecorder]:
        return EventstoreProcessRecorder


class TrackingRecorderSubclass(EventstoreTrackingRecorder):
    """What InfrastructureFactoryTestCase passes to ``tracking_recorder()`` by class and by topic."""


class TestAggregateRecorderOnPostgres(AggregateRecorderCase):
    __test__ = True
    backend = "postgres"


class TestAggregateRecorderOnFile(AggregateRecorderCase):
    __test__ = True
    backend = "file"


class TestApplicationRecorderOnPostgres(ApplicationRecorderCase):
    __test__ = True
    backend = "postgres"


class TestApplicationRecorderOnFile(ApplicationRecorderCase):
    __test__ = True
    backend = "file"


class TestTrackingRecorderOnPostgres(TrackingRecorderCase):
    __test__ = True
    backend = "postgres"


class TestTrackingRecorderOnFile(TrackingRecorderCase):
    __test__ = True
    backend = "file"


class TestProcessRecorderOnPostgres(ProcessRecorderCase):
    __test__ = True
    backend = "postgres"


class TestProcessRecorderOnFile(ProcessRecorderCase):
    __test__ = True
    backend = "file"


class TestInfrastructureFactoryOnPostgres(FactoryCase):
    __test__ = True
    backend = "postgres"


class TestInfrastructureFactoryOnFile(FactoryCase):
    __test__ = True
    backend = "file"
