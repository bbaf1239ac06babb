"""The PostgreSQL backend: ``PostgresEventJournal`` and the modules it is made of (``journal``,
``connections`` for the pool and append lane, ``rows`` for the column order, ``errors`` for the
error map, ``queries``, ``subscribe``, ``notifier``), the schema commands (``schema``), and the
tools that move events between a JSONL file and the database (``file_import``, ``file_export``,
``file_verify``). Only this package imports asyncpg."""

from .journal import PostgresEventJournal

__all__ = ["PostgresEventJournal"]
