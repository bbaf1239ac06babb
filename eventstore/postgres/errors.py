"""The one map from driver and server errors to eventstore's errors, used by the journal, its
subscriptions, the schema commands, import/export/verify and the CLI. Messages name the server
(``host:port/database``) and never contain the password."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from ..dsn import DatabaseURL
from ..envelope import EventEnvelope
from ..errors import (
    CheckpointConflictError,
    ConcurrencyError,
    ConfigurationError,
    DatabaseUnavailableError,
    EventStoreError,
    InvalidEventError,
    PermissionDeniedError,
    SchemaNotReadyError,
)

CONFLICT_SQLSTATE = "ES409"  # raised by credit_events_append; DETAIL is the entity's actual version
CHECKPOINT_SQLSTATE = "ES410"  # raised by credit_checkpoints_advance; DETAIL is the stored position
ISOLATION_SQLSTATE = "ES411"  # raised by credit_events_lock_entities outside READ COMMITTED
RACE_SQLSTATE = "ES412"  # a group or batch stored fewer rows than planned: a key was committed meanwhile
EVENT_ID_KEY = "credit_events_event_id_key"
IDEMPOTENCY_KEY_KEY = "credit_events_idempotency_key_key"
ENTITY_VERSION_KEY = "credit_events_entity_version_key"

# Errors that mean "the server or the connection is gone", as opposed to "the query is wrong".
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    # Connected to a standby: a multi-host URL without target_session_attrs=read-write, or a
    # primary demoted under us. Nothing was written; the next call reconnects.
    asyncpg.ReadOnlySQLTransactionError,
    # A server that terminated an idle connection can leave asyncpg's protocol out of step.
    asyncpg.InternalClientError,
)


class ErrorMap:
    """Errors of one server and schema."""

    def __init__(self, url: DatabaseURL, schema: str) -> None:
        self.url = url
        self.schema = schema
        # The schema's group roles (migration 0010's credit_roles()), learnt by the schema check.
        self.writer_role = "eventstore_writer"
        self.reader_role = "eventstore_reader"

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(f"PostgreSQL at {self.url.where} is unavailable: {self.url.describe(exc)}")

    def fence_timeout(self, timeout: float, settled: int) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"PostgreSQL at {self.url.where}: statement timeout ({timeout:g} s) waiting for transactions in flight "
            f"to end before reading past position {settled}: a long transaction (pg_stat_activity.backend_xid) "
            "holds back reads in position order; nothing was skipped, retry when it ends"
        )

    def denied(self, exc: BaseException, action: str, needs: str) -> PermissionDeniedError:
        """``needs`` names the default roles; a schema with roles of its own gets those named."""
        needs = needs.replace("eventstore_writer", self.writer_role).replace("eventstore_reader", self.reader_role)
        role = self.url.parts.username or "the connecting role"
        return PermissionDeniedError(
            f"role {role!r} may not {action} at {self.url.where} (schema {self.schema!r}): {self.url.describe(exc)}; "
            f"grant it membership of {needs} (docs/operations.md)"
        )

    def schema_not_ready(self, detail: str) -> SchemaNotReadyError:
        return SchemaNotReadyError(
            f"the eventstore schema {detail}: run `eventstore schema upgrade --database-url ...` "
            f"(schema {self.schema!r} at {self.url.where})"
        )

    def translate(self, exc: BaseException, action: str, needs: str) -> EventStoreError | None:
        """The eventstore error for ``exc`` raised while trying to ``action``, or ``None`` when it
        is not a database error (a bug to let through)."""
        if isinstance(exc, EventStoreError):
            return exc
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return DatabaseUnavailableError(f"database {self.url.database!r} does not exist at {self.url.where}")
        if isinstance(exc, (*UNAVAILABLE, asyncpg.InvalidAuthorizationSpecificationError)):
            return self.unavailable(exc)
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return self.denied(exc, action, needs)
        if isinstance(exc, asyncpg.LockNotAvailableError):
            return DatabaseUnavailableError(
                f"PostgreSQL at {self.url.where}: could not {action}: a lock was not granted within lock_timeout "
                "(another session holds it, e.g. a migration); nothing was changed, retry"
            )
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == ISOLATION_SQLSTATE:
            return ConfigurationError(f"PostgreSQL at {self.url.where}: {self.url.describe(exc)}")
        if isinstance(exc, asyncpg.UndefinedFunctionError | asyncpg.UndefinedTableError):
            return self.schema_not_ready(f"is missing or behind ({self.url.describe(exc)})")
        if isinstance(exc, asyncpg.PostgresError):
            return EventStoreError(f"PostgreSQL at {self.url.where} refused to {action} ({type(exc).__name__}): {self.url.describe(exc)}")
        return None

    def cannot_connect(self, exc: BaseException) -> DatabaseUnavailableError:
        """psycopg (the schema commands' driver) could not connect: libpq's reason is its last line."""
        lines = str(exc).strip().splitlines()
        return DatabaseUnavailableError(
            f"cannot reach PostgreSQL at {self.url.where}: {self.url.scrub(lines[-1]) if lines else type(exc).__name__}"
        )

    def migration_failed(self, exc: BaseException, action: str) -> EventStoreError:
        """A migration the server refused (psycopg, through yoyo), or a lost connection."""
        import psycopg  # the schema commands' driver: loaded only by them

        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None)
        message = self.url.scrub(primary) if primary else self.url.describe(exc)
        hint = getattr(diag, "message_hint", None)
        text = f"schema {action} failed at {self.url.where}: {message}" + (f" (hint: {self.url.scrub(hint)})" if hint else "")
        if isinstance(exc, psycopg.OperationalError):
            return DatabaseUnavailableError(text)
        return EventStoreError(text)

    @staticmethod
    def conflict(entity_id: str | None, expected: int | None, actual: int) -> ConcurrencyError:
        """The entity was not at ``expected`` (``None``: no version was expected, -1 in the error)."""
        return ConcurrencyError(entity_id, -1 if expected is None else expected, actual)

    def append_error(
        self, exc: asyncpg.PostgresError, entity_id: str | None, expected: int | None, checkpoint: tuple[str, int] | None = None
    ) -> BaseException:
        if exc.sqlstate == CHECKPOINT_SQLSTATE and checkpoint is not None:
            return CheckpointConflictError(checkpoint[0], int(getattr(exc, "detail", None) or "0"), checkpoint[1])
        if exc.sqlstate == CONFLICT_SQLSTATE:
            actual = int(getattr(exc, "detail", None) or "0")
            return self.conflict(conflict_entity(exc) if entity_id is None else entity_id, expected, actual)
        if isinstance(exc, asyncpg.LockNotAvailableError) and entity_id is not None:
            return DatabaseUnavailableError(
                f"PostgreSQL at {self.url.where}: entity {entity_id!r} is busy: its append lock was not granted "
                "within lock_timeout (other appends to it queue ahead); nothing was stored, retry"
            )
        if isinstance(exc, asyncpg.UniqueViolationError):
            if exc.constraint_name == EVENT_ID_KEY:
                return InvalidEventError("event_id", "already stored under a different idempotency_key")
            if exc.constraint_name == ENTITY_VERSION_KEY:
                return self.conflict(entity_id, expected, -1)
        return self.translate(exc, "append to credit_events", "eventstore_writer") or exc


def conflict_entity(exc: asyncpg.PostgresError) -> str | None:
    """The entity named by credit_events_append's conflict message."""
    match = re.search(r"concurrency conflict on entity (.*): expected version", str(exc))
    return None if match is None or match.group(1) == "<NULL>" else match.group(1)


def conflict_target(
    exc: asyncpg.PostgresError, batch: list[EventEnvelope], expected: list[int | None]
) -> tuple[str | None, int | None]:
    """The entity and expected version of a batch's conflict (its message names the entity)."""
    entity = conflict_entity(exc) if exc.sqlstate == CONFLICT_SQLSTATE else None
    for event, version in zip(batch, expected, strict=True):
        if event.entity_id == entity and version is not None:
            return entity, version
    return entity, None
