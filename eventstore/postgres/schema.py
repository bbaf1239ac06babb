"""The database schema: apply, inspect and roll back the migrations (yoyo-migrations, plain SQL in
``migrations/``), and the check a journal or tool makes that the schema it connects to is current."""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from .._resources import migrations_dir, shipped_migration_ids
from ..dsn import DatabaseURL, parse_database_url
from ..errors import ConfigurationError, DatabaseUnavailableError, EventStoreError
from .errors import ErrorMap
from .queries import QUERIES

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class MigrationState:
    migration_id: str
    applied: bool


def check_schema_name(schema: str) -> str:
    """Schema names are used as identifiers: allow plain ones only."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(f"invalid schema name {schema!r}: use letters, digits and _ (max 63)")
    return schema


async def require_current_schema(conn: asyncpg.Connection, errors: ErrorMap) -> None:
    """Refuse a missing schema, or one behind the migrations this package ships, naming the fix."""
    try:
        applied = {row[0] for row in await conn.fetch(QUERIES.applied_migrations.sql)}
    except asyncpg.UndefinedTableError:
        raise errors.schema_not_ready("is missing") from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise errors.denied(exc, "read the eventstore schema", "eventstore_reader or eventstore_writer") from None
    missing = [m for m in shipped_migration_ids() if m not in applied]
    if missing:
        raise errors.schema_not_ready(f"is behind (missing {', '.join(missing)})")


def _backend(url: DatabaseURL, schema: str):  # type: ignore[no-untyped-def]
    import psycopg
    from yoyo import get_backend

    try:
        with psycopg.connect(url.psycopg_dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return get_backend(url.yoyo_url(schema))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot reach PostgreSQL at {url.where}: {_last_line(url, exc)}") from None
    except psycopg.Error as exc:  # e.g. a URL libpq refuses: its message may quote the password
        raise ConfigurationError(f"PostgreSQL at {url.where}: {type(exc).__name__} for this URL") from None


def _failed(url: DatabaseURL, action: str, exc: Exception) -> EventStoreError:
    """A migration the server refused (or a lost connection) as one clear line, without the password."""
    import psycopg

    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    message = url.scrub(primary) if primary else url.describe(exc)
    hint = getattr(diag, "message_hint", None)
    text = f"schema {action} failed at {url.where}: {message}" + (f" (hint: {url.scrub(hint)})" if hint else "")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailableError(text)
    return EventStoreError(text)


def _last_line(url: DatabaseURL, exc: Exception) -> str:
    # libpq puts the reason for a failed connection on its last line.
    lines = str(exc).strip().splitlines()
    return url.scrub(lines[-1]) if lines else type(exc).__name__


def _migrations():  # type: ignore[no-untyped-def]
    from yoyo import read_migrations

    migrations = read_migrations(str(migrations_dir()))
    if len(migrations) == 0:  # a wrong path silently yields nothing: refuse to "succeed"
        raise FileNotFoundError(f"no migrations in {migrations_dir()}")
    return migrations


def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.Error


def _target(database_url: str | DatabaseURL, schema: str | None) -> tuple[DatabaseURL, str]:
    url = database_url if isinstance(database_url, DatabaseURL) else parse_database_url(database_url)
    return url, check_schema_name(schema or url.schema or "public")


def upgrade_schema(database_url: str | DatabaseURL, schema: str | None = None) -> list[str]:
    """Apply every pending migration; return the ids applied (empty when already current)."""
    url, schema = _target(database_url, schema)
    backend = _backend(url, schema)
    migrations = _migrations()
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    except _psycopg_error() as exc:
        raise _failed(url, "upgrade", exc) from None
    return [m.id for m in pending]


def downgrade_schema(database_url: str | DatabaseURL, schema: str | None = None) -> list[str]:
    """Roll back every applied migration (destroys the event history); return the ids rolled back."""
    url, schema = _target(database_url, schema)
    backend = _backend(url, schema)
    migrations = _migrations()
    try:
        with backend.lock():
            applied = backend.to_rollback(migrations)
            backend.rollback_migrations(applied)
    except _psycopg_error() as exc:
        raise _failed(url, "downgrade", exc) from None
    return [m.id for m in applied]


def schema_status(database_url: str | DatabaseURL, schema: str | None = None) -> list[MigrationState]:
    """Each shipped migration and whether it is applied."""
    url, schema = _target(database_url, schema)
    backend = _backend(url, schema)
    migrations = _migrations()
    return [MigrationState(m.id, backend.is_applied(m)) for m in migrations]


__all__ = ["MigrationState", "upgrade_schema", "downgrade_schema", "schema_status", "shipped_migration_ids"]
