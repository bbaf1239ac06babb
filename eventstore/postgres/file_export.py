"""``eventstore export``: PostgreSQL → a JSONL journal, in position order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..envelope import ENCODER
from ..jsonl import checkpoint_line
from .queries import QUERIES
from .rows import POSITION, rows_to_events
from .session import tool_session

_EVERY = 2**63 - 1  # no high-water bound: the snapshot is the bound (stop writers: docs/migration.md)


async def export_to_file(database_url: str, target: str | os.PathLike[str], *, after: int = 0,
                         page_size: int = 1000, schema: str | None = None, progress: Any = None) -> int:
    """Write every event with position > ``after`` as JSONL lines FileEventJournal reads (positions
    and entity versions as stored), in position order, then the consumers' checkpoints. Written to
    a temporary file in the same folder, fsynced, then renamed over ``target``: readers see the old
    file or the whole new one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.export-{os.getpid()}.tmp")
    written = 0
    try:
        # One snapshot for every page: the file is the database as of one moment, even if
        # something still writes (stop writers anyway: see docs/migration.md).
        async with tool_session(database_url, schema, tool="export", action="read credit_events", needs="eventstore_reader") as conn, \
                conn.transaction(isolation="repeatable_read", readonly=True):
            total = await conn.fetchval(QUERIES.count_events_after.sql, after)
            with open(temporary, "wb") as out:
                position = after
                while True:
                    rows = await conn.fetch(QUERIES.read_events_page.sql, position, _EVERY, page_size)
                    if rows:
                        out.write(b"".join(ENCODER.encode(event) + b"\n" for event in rows_to_events(rows)))
                        written += len(rows)
                        position = rows[-1][POSITION]
                        if progress is not None:
                            progress(written, total)
                    if len(rows) < page_size:
                        break
                # From the same snapshot as the events, so each matches the events written with it.
                for name, checkpoint in await conn.fetch(QUERIES.all_checkpoints.sql):
                    out.write(checkpoint_line(name, checkpoint))
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        temporary.unlink(missing_ok=True)
    return written
