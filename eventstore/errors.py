"""Every error eventstore raises on purpose; all subclass :class:`EventStoreError`.

No message built here ever contains a database password: callers pass
host/port/database, never a URL.
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Base class of every eventstore error."""


class InvalidEventError(EventStoreError, ValueError):
    """The event breaks an envelope rule; ``field`` names the culprit. Nothing was written."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid event: {field}: {reason}")


class ConcurrencyError(EventStoreError):
    """The entity was not at the version the caller expected. Nothing was written."""

    def __init__(self, entity_id: str | None, expected: int, actual: int) -> None:
        self.entity_id = entity_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"concurrency conflict on entity {entity_id!r}: expected version {expected}, actual {actual}"
        )


class CheckpointConflictError(ConcurrencyError):
    """A consumer's checkpoint only moves forward: ``given`` is at or below the ``stored`` position
    of checkpoint ``name``. Nothing was written (neither the checkpoint nor the batch's events)."""

    def __init__(self, name: str, stored: int, given: int) -> None:
        self.name = name
        self.stored = stored
        self.given = given
        EventStoreError.__init__(
            self, f"checkpoint conflict on {name!r}: stored position {stored}, given {given} (a checkpoint only moves forward)"
        )
        # As a ConcurrencyError: no entity; the caller expected to move past the stored position.
        self.entity_id = None
        self.expected = given
        self.actual = stored


class CorruptedEventError(EventStoreError):
    """A stored line or row cannot be decoded; ``where`` says which, ``why`` says how."""

    def __init__(self, where: str, why: str) -> None:
        self.where = where
        self.why = why
        super().__init__(f"corrupted event at {where}: {why}")


class SchemaNotReadyError(EventStoreError):
    """The database schema is missing or behind the migrations this package ships."""


class ConfigurationError(EventStoreError, ValueError):
    """A backend name, URL or option is not acceptable."""


class JournalLockedError(EventStoreError):
    """Another process holds the file journal open for writing."""


class DatabaseUnavailableError(EventStoreError, ConnectionError):
    """PostgreSQL cannot be reached or the connection was lost (names host and port, never a password)."""


class PermissionDeniedError(EventStoreError):
    """The database role lacks a privilege the operation needs (SQLSTATE 42501): appending needs
    membership of the schema's writer role, reading of its reader role (``eventstore_writer`` and
    ``eventstore_reader`` unless the schema was upgraded with ``--role-prefix``), importing the
    schema's owner (docs/operations.md)."""


class JournalWriteError(EventStoreError, OSError):
    """The file journal could not write or fsync (full disk, I/O error); nothing of the failed
    appends was stored and the journal stays readable."""
