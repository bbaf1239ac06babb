"""eventstore as the persistence module of the ``eventsourcing`` library.

Set ``PERSISTENCE_MODULE=eventstore.integrations.eventsourcing`` (``pip install
eventstore[eventsourcing]``). The journal is chosen from the application's environment, as
eventstore's own factory does, each name looked up with the application's prefix first
(``BANKACCOUNTS_DATABASE_URL``, then ``DATABASE_URL``):

- ``DATABASE_URL``: a PostgreSQL journal; ``EVENT_JOURNAL_SCHEMA`` its schema (default: the
  application's name in lower case, so each application has its own notification log), created
  or upgraded on first use unless ``CREATE_TABLE`` is false; ``EVENT_JOURNAL_POOL_SIZE`` (default
  5, the connections kept open) and ``EVENT_JOURNAL_MAX_OVERFLOW`` (default 10) size its pool;
- otherwise ``EVENT_JOURNAL_BACKEND`` / ``EVENT_JOURNAL_PATH``: the file journal (default
  ``storage/events/<application name>.jsonl``);
- ``ORIGINATOR_ID_TYPE``: ``uuid`` (default) or ``text``, as eventsourcing's own modules.

docs/eventsourcing.md says how its concepts map onto eventstore's.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from eventsourcing.persistence import InfrastructureFactory, ProgrammingError
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from ...errors import EventStoreError
from ...factory import resolve_backend
from ...sync import open_journal
from .mapping import persistence_error
from .recorders import (
    EventstoreAggregateRecorder,
    EventstoreApplicationRecorder,
    EventstoreProcessRecorder,
    EventstoreSnapshotRecorder,
    EventstoreTrackingRecorder,
    JournalSubscription,
)
from .store import JournalStore


class Factory(InfrastructureFactory[EventstoreTrackingRecorder]):
    """The infrastructure factory eventsourcing finds in this module. One journal (one loop
    thread, one pool) serves every recorder of one application; ``close()`` closes it."""

    DATABASE_URL = "DATABASE_URL"
    EVENT_JOURNAL_BACKEND = "EVENT_JOURNAL_BACKEND"
    EVENT_JOURNAL_PATH = "EVENT_JOURNAL_PATH"
    EVENT_JOURNAL_SCHEMA = "EVENT_JOURNAL_SCHEMA"
    EVENT_JOURNAL_POOL_SIZE = "EVENT_JOURNAL_POOL_SIZE"
    EVENT_JOURNAL_MAX_OVERFLOW = "EVENT_JOURNAL_MAX_OVERFLOW"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self._store: JournalStore | None = None
        self._opening = threading.Lock()

    @property
    def store(self) -> JournalStore:
        """The application's journal, opened on first use."""
        with self._opening:
            if self._store is None:
                self._store = self._open()
            return self._store

    def _open(self) -> JournalStore:
        env = self.env
        app = env.name.lower() or "eventsourcing"
        url = env.get(self.DATABASE_URL) or None
        options: dict[str, Any]
        try:
            backend = resolve_backend(env.get(self.EVENT_JOURNAL_BACKEND) or None, url)
            if backend == "postgres":
                if not url:
                    raise ProgrammingError("eventstore's PostgreSQL journal needs DATABASE_URL")
                schema = env.get(self.EVENT_JOURNAL_SCHEMA) or (_schema_name(env.name) if env.name else None)
                options = {  # every setting checked before anything is created
                    "database_url": url, "schema": schema,
                    "pool_size": _count(env, self.EVENT_JOURNAL_POOL_SIZE, 5),
                    "max_overflow": _count(env, self.EVENT_JOURNAL_MAX_OVERFLOW, 10),
                }
                if strtobool(env.get(self.CREATE_TABLE) or "yes"):
                    from ...postgres.schema import upgrade_schema  # asyncpg only when PostgreSQL is used

                    upgrade_schema(url, schema)
            else:
                options = {"path": env.get(self.EVENT_JOURNAL_PATH) or f"storage/events/{app}.jsonl"}
            sync = open_journal(backend, **options)
        except EventStoreError as exc:
            raise persistence_error(exc) from exc
        return JournalStore(sync, originator_id_type=(env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower(), actor_id=app)

    def aggregate_recorder(self, purpose: str = "events") -> EventstoreAggregateRecorder | EventstoreSnapshotRecorder:
        if purpose == "snapshots":
            return EventstoreSnapshotRecorder(self.store)
        return EventstoreAggregateRecorder(self.store)

    def application_recorder(self) -> EventstoreApplicationRecorder:
        return self._recorder(self.APPLICATION_RECORDER_TOPIC, EventstoreApplicationRecorder)

    def tracking_recorder(
        self, tracking_recorder_class: type[EventstoreTrackingRecorder] | None = None
    ) -> EventstoreTrackingRecorder:
        if tracking_recorder_class is not None:
            return tracking_recorder_class(self.store)
        return self._recorder(self.TRACKING_RECORDER_TOPIC, EventstoreTrackingRecorder)

    def process_recorder(self) -> EventstoreProcessRecorder:
        return self._recorder(self.PROCESS_RECORDER_TOPIC, EventstoreProcessRecorder)

    def _recorder(self, topic_key: str, default: type[Any]) -> Any:
        topic = self.env.get(topic_key)
        return (resolve_topic(topic) if topic else default)(self.store)

    def close(self) -> None:
        with self._opening:
            if self._store is not None:
                self._store.close()
                self._store = None


def _count(env: Environment, key: str, default: int) -> int:
    value = env.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ProgrammingError(f"{key} must be a whole number, got {value!r}") from None


def _schema_name(application: str) -> str:
    """A plain schema name from an application's name (``BankAccounts`` -> ``bankaccounts``)."""
    name = re.sub(r"[^a-z0-9_]", "_", application.lower())[:63]
    return name if name[:1].isalpha() else f"app_{name}"[:63]


__all__ = [
    "EventstoreAggregateRecorder",
    "EventstoreApplicationRecorder",
    "EventstoreProcessRecorder",
    "EventstoreSnapshotRecorder",
    "EventstoreTrackingRecorder",
    "Factory",
    "JournalSubscription",
]
