"""The database schema: apply, inspect and roll back the migrations (yoyo-migrations, plain SQL in
``migrations/``), and the check a journal or tool makes that the schema it connects to is current."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import asyncpg

from .._resources import migrations_dir, shipped_migration_ids
from ..dsn import DatabaseURL, parse_database_url
from ..errors import ConfigurationError
from .errors import ErrorMap
from .queries import QUERIES

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ROLE_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,55}$")
ROLE_PREFIX_ENV = "EVENTSTORE_ROLE_PREFIX"


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
    except asyncpg.UndefinedTableError as exc:
        # A schema this role may not use is left out of its search_path: it looks missing.
        if await conn.fetchval(QUERIES.schema_hidden.sql, errors.schema):
            raise errors.denied(exc, "use the eventstore schema", "eventstore_reader or eventstore_writer") from None
        raise errors.schema_not_ready("is missing") from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise errors.denied(exc, "read the eventstore schema", "eventstore_reader or eventstore_writer") from None
    missing = [m for m in shipped_migration_ids() if m not in applied]
    if missing:
        raise errors.schema_not_ready(f"is behind (missing {', '.join(missing)})")
    errors.writer_role, errors.reader_role = await conn.fetchrow(QUERIES.schema_roles.sql)


def check_role_prefix(prefix: str) -> str:
    """Group roles are named ``<prefix>_writer`` and ``<prefix>_reader``: lower-case identifiers."""
    if not isinstance(prefix, str) or not _ROLE_PREFIX.match(prefix):
        raise ConfigurationError(f"invalid role prefix {prefix!r}: use lower-case letters, digits and _ (max 56)")
    return prefix


def _backend(url: DatabaseURL, schema: str, role_prefix: str | None = None):  # type: ignore[no-untyped-def]
    import psycopg
    from yoyo import get_backend

    # Migration 0010 reads the prefix from this session setting (unset: "eventstore").
    settings = {} if role_prefix is None else {"eventstore.role_prefix": role_prefix}
    try:
        with psycopg.connect(url.psycopg_dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return get_backend(url.yoyo_url(schema, settings))
    except psycopg.OperationalError as exc:
        raise ErrorMap(url, schema).cannot_connect(exc) from None
    except psycopg.Error as exc:  # e.g. a URL libpq refuses: its message may quote the password
        raise ConfigurationError(f"PostgreSQL at {url.where}: {type(exc).__name__} for this URL") from None


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


def _migrate(database_url: str | DatabaseURL, schema: str | None, action: str, role_prefix: str | None = None) -> list[str]:
    """Apply the pending migrations (``upgrade``) or roll back the applied ones (``downgrade``)
    under yoyo's lock; return the ids moved."""
    url, schema = _target(database_url, schema)
    backend = _backend(url, schema, role_prefix)
    migrations = _migrations()
    try:
        with backend.lock():
            if action == "upgrade":
                moved = backend.to_apply(migrations)
                backend.apply_migrations(moved)
            else:
                moved = backend.to_rollback(migrations)
                backend.rollback_migrations(moved)
    except _psycopg_error() as exc:
        raise ErrorMap(url, schema).migration_failed(exc, action) from None
    return [m.id for m in moved]


def upgrade_schema(database_url: str | DatabaseURL, schema: str | None = None, *, role_prefix: str | None = None) -> list[str]:
    """Apply every pending migration; return the ids applied (empty when already current).

    ``role_prefix`` (default ``$EVENTSTORE_ROLE_PREFIX``, else ``eventstore``) names the schema's
    group roles, ``<prefix>_writer`` and ``<prefix>_reader``, when migration 0010 is applied;
    roles are cluster-wide, so give each schema that must be kept apart its own prefix
    (docs/operations.md). It has no effect on a schema that already has its roles."""
    prefix = role_prefix if role_prefix is not None else os.environ.get(ROLE_PREFIX_ENV) or None
    return _migrate(database_url, schema, "upgrade", None if prefix is None else check_role_prefix(prefix))


def downgrade_schema(database_url: str | DatabaseURL, schema: str | None = None) -> list[str]:
    """Roll back every applied migration (destroys the event history); return the ids rolled back."""
    return _migrate(database_url, schema, "downgrade")


def schema_status(database_url: str | DatabaseURL, schema: str | None = None) -> list[MigrationState]:
    """Each shipped migration and whether it is applied."""
    url, schema = _target(database_url, schema)
    backend = _backend(url, schema)
    migrations = _migrations()
    return [MigrationState(m.id, backend.is_applied(m)) for m in migrations]


__all__ = ["MigrationState", "upgrade_schema", "downgrade_schema", "schema_status", "shipped_migration_ids"]
