"""eventstore: a SQL-first event store with a JSONL file backend and a PostgreSQL backend."""

from .base import BaseEventJournal
from .envelope import Appended, EventEnvelope, Snapshot
from .errors import (
    CheckpointConflictError,
    ConcurrencyError,
    ConfigurationError,
    CorruptedEventError,
    DatabaseUnavailableError,
    EventStoreError,
    InvalidEventError,
    JournalLockedError,
    JournalWriteError,
    PermissionDeniedError,
    SchemaNotReadyError,
)
from .factory import close_event_journal, create_event_journal, get_event_journal
from .file import FileEventJournal


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # asyncpg/aiosql load only when the PostgreSQL side is used.
    if name == "PostgresEventJournal":
        from .postgres import PostgresEventJournal

        return PostgresEventJournal
    if name == "migrate_file_to_postgres":
        from .postgres.file_import import migrate_file_to_postgres

        return migrate_file_to_postgres
    raise AttributeError(f"module 'eventstore' has no attribute {name!r}")


__all__ = [
    "Appended",
    "BaseEventJournal",
    "CheckpointConflictError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptedEventError",
    "DatabaseUnavailableError",
    "EventEnvelope",
    "EventStoreError",
    "FileEventJournal",
    "InvalidEventError",
    "JournalLockedError",
    "JournalWriteError",
    "PermissionDeniedError",
    "PostgresEventJournal",
    "SchemaNotReadyError",
    "Snapshot",
    "close_event_journal",
    "create_event_journal",
    "get_event_journal",
    "migrate_file_to_postgres",
]
