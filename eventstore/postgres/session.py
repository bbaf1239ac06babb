"""One connection for the tools (import, export, verify): the journal's settings, codec, schema
check and error map, closed at the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from ..dsn import DatabaseURL, parse_database_url
from .connections import connect, connect_options
from .errors import ErrorMap
from .schema import check_schema_name, require_current_schema

STATEMENT_TIMEOUT = 30.0  # seconds, as the journal's default: one batch or page per statement


@contextlib.asynccontextmanager
async def tool_session(
    database_url: str | DatabaseURL, schema: str | None, *, tool: str, action: str, needs: str, **settings: str
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a current schema, named ``eventstore-<tool>`` in pg_stat_activity. Errors inside the block (a lost connection, a refused
    privilege, a statement timeout) become eventstore errors saying what ``action`` was refused."""
    url = database_url if isinstance(database_url, DatabaseURL) else parse_database_url(database_url)
    errors = ErrorMap(url, check_schema_name(schema or url.schema or "public"))
    options = connect_options(
        url, errors.schema, application_name=f"eventstore-{tool}",
        connect_timeout=url.connect_timeout or 10.0, statement_timeout=STATEMENT_TIMEOUT, **settings,
    )
    conn = await connect(errors, options)
    try:
        await require_current_schema(conn, errors)
        yield conn
    except Exception as exc:
        translated = errors.translate(exc, action, needs)
        if translated is None or translated is exc:
            raise
        raise translated from None
    finally:
        try:
            await conn.close(timeout=2)
        except Exception:
            conn.terminate()
