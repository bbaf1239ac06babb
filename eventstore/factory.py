"""Pick and open a journal from arguments and the environment: the one resolution rule, used by
``create_event_journal`` and by every CLI command."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from .base import BaseEventJournal
from .errors import ConfigurationError
from .file import DEFAULT_PATH, FileEventJournal

BACKENDS = ("file", "postgres")
_ALIASES = {"file": "file", "jsonl": "file", "postgres": "postgres", "postgresql": "postgres"}


def resolve_backend(backend: str | None = None, database_url: str | None = None) -> str:
    """``"file"`` or ``"postgres"``: the ``backend`` given; else PostgreSQL when a ``database_url``
    is given; else ``$EVENT_JOURNAL_BACKEND``; else the file."""
    if backend is None and database_url:
        return "postgres"
    name = (backend or os.environ.get("EVENT_JOURNAL_BACKEND") or "file").strip().lower()
    if name not in _ALIASES:
        raise ConfigurationError(f"unknown journal backend {name!r}; accepted: {', '.join(BACKENDS)}")
    return _ALIASES[name]


async def create_event_journal(
    backend: str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    database_url: str | None = None,
    pool_size: int = 10,
    max_overflow: int = 20,
    replica_urls: Sequence[str] | str | None = None,
    **options: Any,
) -> BaseEventJournal:
    """An initialized journal. ``backend`` defaults to ``$EVENT_JOURNAL_BACKEND`` then ``"file"``
    (a ``database_url`` given without a ``backend`` means PostgreSQL); ``path`` to
    ``$EVENT_JOURNAL_PATH`` then ``storage/events/credits.jsonl``; ``database_url`` to
    ``$DATABASE_URL``; ``replica_urls`` (PostgreSQL's hot standbys, for reads) to the
    comma-separated ``$DATABASE_REPLICA_URLS``. ``options`` go to the journal
    (``max_payload_bytes``, ``schema``, ``max_replica_lag``, ...)."""
    name = resolve_backend(backend, database_url)
    if name == "postgres":
        options = {**options, "replica_urls": replica_urls}
    elif replica_urls:
        raise ConfigurationError("replica_urls are PostgreSQL standbys: they need the postgres backend")
    journal = _journal(name, path, database_url, pool_size, max_overflow, options)
    await journal.initialize()
    return journal


def _journal(
    name: str, path: str | os.PathLike[str] | None, database_url: str | None,
    pool_size: int, max_overflow: int, options: dict[str, Any],
) -> BaseEventJournal:
    try:
        if name == "file":
            return FileEventJournal(path or os.environ.get("EVENT_JOURNAL_PATH") or DEFAULT_PATH, **options)
        from .postgres import PostgresEventJournal  # asyncpg is imported only when used

        url = database_url or os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigurationError("the postgres backend needs a database URL: pass database_url= or set DATABASE_URL")
        return PostgresEventJournal(url, pool_size=pool_size, max_overflow=max_overflow, **options)
    except TypeError as exc:
        raise ConfigurationError(f"unknown journal option: {exc}") from None


_shared: BaseEventJournal | None = None
_shared_lock = asyncio.Lock()


async def get_event_journal() -> BaseEventJournal:
    """The process's shared journal, created from the environment on first use."""
    global _shared
    async with _shared_lock:
        if _shared is None:
            _shared = await create_event_journal()
        return _shared


async def close_event_journal() -> None:
    """Close the shared journal (for shutdown hooks and tests)."""
    global _shared
    async with _shared_lock:
        if _shared is not None:
            await _shared.close()
            _shared = None
