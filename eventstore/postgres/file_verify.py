"""``eventstore verify``: is every event of a JSONL journal in PostgreSQL, identical?"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..envelope import EventEnvelope
from .file_import import KEEP_CORRUPT, JournalFileReader
from .queries import QUERIES
from .rows import POSITION, rows_to_events
from .session import tool_session

EXAMPLES = 5


@dataclass
class VerifyResult:
    events: int = 0  # valid, distinct events in the file
    matched: int = 0
    missing: int = 0
    different: int = 0
    extra_in_database: int = 0
    corrupt: int = 0
    checkpoints: int = 0  # consumers' checkpoints in the file
    checkpoints_behind: int = 0  # missing in PostgreSQL, or at a lower position than the file's
    # Identical events at another position than in the file (an import into a non-empty database):
    # a checkpoint counting positions of this journal then points elsewhere (docs/migration.md).
    positions_moved: int = 0
    examples: dict[str, list[str]] = field(
        default_factory=lambda: {"missing": [], "different": [], "extra_in_database": [], "corrupt": [], "checkpoints_behind": []}
    )

    @property
    def ok(self) -> bool:
        """Every event of the file is in PostgreSQL, identical, and every checkpoint at least as far.
        Extra rows and checkpoints further on (written after a switch-over) and corrupt lines (which
        no backend can read) do not fail the check."""
        return self.missing == 0 and self.different == 0 and self.checkpoints_behind == 0

    def _example(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "matched": self.matched, "missing": self.missing,
            "different": self.different, "extra_in_database": self.extra_in_database, "corrupt": self.corrupt,
            "checkpoints": self.checkpoints, "checkpoints_behind": self.checkpoints_behind,
            "positions_moved": self.positions_moved, "examples": self.examples,
        }


def _differences(a: EventEnvelope, b: EventEnvelope) -> list[str]:
    return [name for name in a.__struct_fields__ if name != "position" and getattr(a, name) != getattr(b, name)]


async def verify_file(source: str | os.PathLike[str], database_url: str, *, batch_size: int = 1000,
                      schema: str | None = None, progress: Any = None) -> VerifyResult:
    """Compare the file's events (as FileEventJournal reads them) with PostgreSQL by idempotency
    key, in batches; then count database rows whose key the file does not have. Bounded memory:
    one batch of rows, plus the reader's key hashes (a database key whose hash the file has, odds
    n/2⁶⁴, would not be counted as extra)."""
    reader = JournalFileReader(source)
    result = VerifyResult()
    async with tool_session(database_url, schema, tool="verify", action="read credit_events", needs="eventstore_reader") as conn:
        async for batch in reader.batches(batch_size):
            rows = await conn.fetch(QUERIES.events_by_keys.sql, [e.idempotency_key for _, e, _ in batch])
            stored = {event.idempotency_key: event for event in rows_to_events(rows)}
            for number, event, _ in batch:
                found = stored.get(event.idempotency_key)
                if found is None:
                    result.missing += 1
                    result._example("missing", f"line {number}: {event.idempotency_key}")
                    continue
                fields = _differences(event, found)
                if fields:
                    result.different += 1
                    result._example("different", f"line {number}: {event.idempotency_key} ({', '.join(fields)})")
                else:
                    result.matched += 1
                    result.positions_moved += found.position != event.position
            if progress is not None:
                progress(reader.bytes_read, reader.size, result.matched + result.missing + result.different)
        position = 0
        keys = reader.keys
        while True:
            page = await conn.fetch(QUERIES.keys_page.sql, position, 10_000)
            for row in page:
                if row[1] not in keys:
                    result.extra_in_database += 1
                    result._example("extra_in_database", f"position {row[0]}: {row[1]}")
            if len(page) < 10_000:
                break
            position = page[-1][POSITION]
        stored_checkpoints = dict(await conn.fetch(QUERIES.all_checkpoints.sql))
    for name, checkpoint in reader.checkpoints.items():
        result.checkpoints += 1
        stored_at = stored_checkpoints.get(name)
        if stored_at is None or stored_at < checkpoint:
            result.checkpoints_behind += 1
            result._example("checkpoints_behind", f"checkpoint {name!r}: file {checkpoint}, database {stored_at}")
    result.events = reader.events
    result.corrupt = reader.corrupt
    for number, reason in reader.corrupt_lines[:KEEP_CORRUPT]:
        result._example("corrupt", f"line {number}: {reason}")
    return result
