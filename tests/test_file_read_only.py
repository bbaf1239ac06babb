"""A read-only file journal indexes lazily (nothing is read at open; reads extend the index a
chunk at a time) and keeps key hashes, not keys: what that must not change is what it reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from eventstore import FileEventJournal, migrate_file_to_postgres
from eventstore import key_hashes as key_hashes_module
from eventstore.envelope import ENCODER, EventEnvelope
from eventstore.jsonl import CHUNK

from .helpers import event, read_all


async def write(path: Path, count: int, *, payload_bytes: int = 200) -> list[EventEnvelope]:
    async with FileEventJournal(path) as journal:
        for start in range(0, count, 500):
            batch = [event(entity_id=f"agent-{i % 7}", payload={"i": i, "pad": "x" * payload_bytes})
                     for i in range(start, min(count, start + 500))]
            await journal.append_events(batch)
        return await read_all(journal)


def hand_appended(path: Path, line: dict) -> None:
    with open(path, "ab") as out:
        out.write(json.dumps(line).encode() + b"\n")


def as_line(stored: EventEnvelope, **changes: object) -> dict:
    return {**msgspec.json.decode(ENCODER.encode(stored)), **changes}


async def test_opening_reads_nothing_and_the_first_event_needs_one_chunk(tmp_path):
    path = tmp_path / "credits.jsonl"
    written = await write(path, 12_000)  # about 4 MiB
    assert path.stat().st_size > 3 * CHUNK
    async with FileEventJournal(path, read_only=True) as journal:
        assert journal.index.size == 0 and journal.index.events == 0
        events = journal.read_events()
        assert await anext(events) == written[0]
        assert 0 < journal.index.size <= CHUNK  # one chunk indexed, not the file
        await events.aclose()
        assert await read_all(journal) == written
        assert journal.index.size == path.stat().st_size and journal.get_metrics()["total_events"] == 12_000
        assert journal.index.keys == {} and journal.index.event_ints == set()  # no writer's indexes
        assert journal.index.key_hashes.nbytes <= 32 * 12_000


async def test_concurrent_readers_and_late_starts_read_exactly_what_the_writer_reads(tmp_path):
    path = tmp_path / "credits.jsonl"
    written = await write(path, 9_000)
    async with FileEventJournal(path, read_only=True) as journal:
        # Readers that take turns extending the index, and ones that start where it is not yet built.
        results = await asyncio.gather(
            read_all(journal), read_all(journal), read_all(journal, after=4_000), read_all(journal, after=8_999),
        )
        assert results == [written, written, written[4_000:], written[8_999:]]
        assert await read_all(journal, after=6_543) == written[6_543:]  # the seek index, built lazily


async def test_a_line_longer_than_a_chunk_is_read_whole(tmp_path):
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path, max_payload_bytes=3 * CHUNK) as journal:
        await journal.append_events([event(payload={"i": 1}), event(payload={"big": "y" * (2 * CHUNK)}), event()])
        written = await read_all(journal)
    async with FileEventJournal(path, read_only=True) as journal:
        assert await read_all(journal) == written


async def test_a_hand_appended_line_repeating_a_key_is_skipped_as_the_writer_skips_it(tmp_path):
    path = tmp_path / "credits.jsonl"
    written = await write(path, 3)
    hand_appended(path, as_line(written[1], event_id=str(uuid.uuid4()), position=4, payload={"again": True}))
    hand_appended(path, as_line(written[2], event_id=str(uuid.uuid4()), idempotency_key="new", position=5))
    async with FileEventJournal(path, read_only=True) as reader:
        from_reader = await read_all(reader)
        assert reader.index.key_hashes.exact is not None  # the repeat was confirmed with the keys themselves
    async with FileEventJournal(path) as writer:
        from_writer = await read_all(writer)
    assert [e.position for e in from_reader] == [1, 2, 3, 5]
    assert from_reader == from_writer


@pytest.fixture
def every_key_collides(monkeypatch):
    """All keys share one hash: every new key is a hit that must be confirmed, not believed."""
    monkeypatch.setattr(key_hashes_module, "key_hash", lambda key: 7)


async def test_a_hash_shared_by_different_keys_skips_nothing(tmp_path, every_key_collides):
    path = tmp_path / "credits.jsonl"
    written = await write(path, 2_000)
    hand_appended(path, as_line(written[10], event_id=str(uuid.uuid4()), position=2_001))  # a true repeat
    async with FileEventJournal(path, read_only=True) as journal:
        assert await read_all(journal) == written
        assert await read_all(journal, after=1_500) == written[1_500:]


async def test_the_import_skips_nothing_for_a_shared_hash(tmp_path, every_key_collides, database_url):
    path = tmp_path / "credits.jsonl"
    written = await write(path, 300)
    hand_appended(path, as_line(written[3], event_id=str(uuid.uuid4()), position=301))
    assert await migrate_file_to_postgres(path, database_url) == 300


async def test_lines_from_older_tools_are_completed_alike_by_readers_taking_turns(tmp_path):
    """Versions of lines without them come from the lines before: a reader that took chunks from
    the index must not complete later lines without that history."""
    path = tmp_path / "legacy.jsonl"
    lines = []
    for i in range(8_000):
        lines.append(json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": "credits.granted", "payload": {"entity_id": f"agent-{i % 5}", "pad": "z" * 300},
            "actor_id": "old-tool", "correlation_id": str(uuid.uuid4()), "idempotency_key": f"legacy-{i}",
            "timestamp": datetime(2024, 1, 1, tzinfo=UTC).isoformat(),
        }).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    async with FileEventJournal(path) as writer:
        expected = await read_all(writer)
    assert [e.entity_version for e in expected if e.entity_id == "agent-3"] == list(range(1, 1_601))
    async with FileEventJournal(path, read_only=True) as journal:
        results = await asyncio.gather(read_all(journal), read_all(journal), read_all(journal, after=5_000))
        assert results == [expected, expected, expected[5_000:]]
