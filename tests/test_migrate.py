"""Issue 4: file journal → PostgreSQL import, export back, verify; the CLI as real subprocesses."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from eventstore import EventEnvelope, FileEventJournal, PostgresEventJournal, migrate_file_to_postgres
from eventstore.envelope import ENCODER
from eventstore.postgres.file_import import MigrationConflictError, import_file
from eventstore.progress import ProgressBar

from .helpers import event

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "eventstore", *args], capture_output=True, text=True, env=environment, cwd=REPO,
        timeout=timeout,
    )


async def write_file(path: Path, events: list[EventEnvelope]) -> None:
    async with FileEventJournal(path) as journal:
        for start in range(0, len(events), 1000):
            await journal.append_events(events[start:start + 1000])


async def file_events(path: Path) -> list[EventEnvelope]:
    async with FileEventJournal(path, read_only=True) as journal:
        return [e async for e in journal.read_events()]


async def db_events(url: str) -> list[EventEnvelope]:
    async with PostgresEventJournal(url, pool_size=1) as journal:
        return [e async for e in journal.read_events()]


def without_position(events: list[EventEnvelope]) -> list[EventEnvelope]:
    return [msgspec.structs.replace(e, position=None) for e in events]


async def assert_same_events(path: Path, url: str) -> None:
    stored = await db_events(url)
    assert without_position(stored) == without_position(await file_events(path))
    positions = [e.position for e in stored]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def sample(n: int, entities: int = 7) -> list[EventEnvelope]:
    return [
        event(payload={"amount": i, "note": "ünïcode", "nested": {"ok": True, "ratio": 0.5}},
              entity_id=None if i % 11 == 0 else f"account-{i % entities}")
        for i in range(n)
    ]


async def test_dry_run_writes_nothing(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(50))
    done = cli("import", str(path), "--dry-run", "--json", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["inserted"] == 50 and report["already_present"] == 0 and report["dry_run"] is True
    assert await db_events(database_url) == []
    # After a real import, a dry run tells what is already there.
    assert await migrate_file_to_postgres(path, database_url, batch_size=7) == 50
    done = cli("import", str(path), "--dry-run", "--database-url", database_url)
    assert done.returncode == 0 and "would insert 0, already present 50" in done.stdout


async def test_import_twice_is_import_once(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(2345))
    assert await migrate_file_to_postgres(path, database_url, batch_size=500) == 2345
    assert await migrate_file_to_postgres(path, database_url, batch_size=300) == 0
    await assert_same_events(path, database_url)
    done = cli("import", str(path), "--database-url", database_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["already_present"] == 2345


async def test_import_killed_midway_then_rerun(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(6000, entities=50))
    conn = await asyncpg.connect(database_url)
    try:
        # Make every batch slow (a statement trigger: the import's INSERT fires it like any other),
        # so the kill is certain to land mid-way.
        await conn.execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$;"
            "CREATE TRIGGER slow_insert BEFORE INSERT ON credit_events FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "eventstore", "import", str(path), "--batch-size", "40", "--database-url", database_url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 60
            while await conn.fetchval("SELECT count(*) FROM credit_events") < 400:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        # A statement already sent still commits on the server: wait until its backend is gone.
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'eventstore-import'"
        ):
            time.sleep(0.01)
        partial = await conn.fetchval("SELECT count(*) FROM credit_events")
        assert 400 <= partial < 6000
        await conn.execute("DROP TRIGGER slow_insert ON credit_events; DROP FUNCTION slow_insert()")
    finally:
        await conn.close()
    done = cli("import", str(path), "--database-url", database_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["inserted"] == 6000 - partial and report["already_present"] == partial
    await assert_same_events(path, database_url)


async def test_corrupt_lines_reported_and_skipped(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(6))
    lines = path.read_bytes().splitlines(keepends=True)
    invalid = msgspec.structs.replace(event(entity_id="other"), event_type="x" * 256, position=7, entity_version=1)
    lines[2] = b'{"event_id": "not json\n'
    lines.append(ENCODER.encode(invalid) + b"\n")
    path.write_bytes(b"".join(lines))
    done = cli("import", str(path), "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    assert "inserted 5, already present 0, corrupt 2" in done.stdout
    assert "corrupt line 3:" in done.stdout and "corrupt line 7: Expected `str` of length <= 255 - at `$.event_type`" in done.stdout
    assert "Traceback" not in done.stderr
    stored = await db_events(database_url)
    expected = [e for e in await file_events(path) if e.event_type != invalid.event_type]
    assert without_position(stored) == without_position(expected)


async def test_legacy_lines_get_the_file_journals_versions(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "legacy.jsonl"
    lines = []
    for i in range(12):
        legacy = {
            "event_id": str(uuid.uuid4()), "event_type": "credits.granted",
            "payload": {"entity_id": f"agent-{i % 3}", "amount": i} if i % 4 else {"amount": i},
            "actor_id": "old-tool", "correlation_id": str(uuid.uuid4()), "idempotency_key": f"legacy-{i}",
            "timestamp": datetime(2024, 1, 1, 12, i, tzinfo=UTC).isoformat(),
        }
        lines.append(json.dumps(legacy).encode() + b"\n")
    lines.append(lines[5])  # a repeated line: FileEventJournal skips it, so must the import
    path.write_bytes(b"".join(lines))
    assert await migrate_file_to_postgres(path, database_url) == 12
    from_file = await file_events(path)
    assert [e.entity_version for e in from_file if e.entity_id == "agent-1"] == [1, 2, 3]
    assert from_file[0].entity_id is None and from_file[0].entity_version is None
    await assert_same_events(path, database_url)


async def test_verify_match_missing_and_changed(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(30))
    assert await migrate_file_to_postgres(path, database_url) == 30
    done = cli("verify", str(path), "--database-url", database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 30 file events, 30 identical")

    missing = tmp_path / "missing.jsonl"
    missing.write_bytes(path.read_bytes())
    async with FileEventJournal(missing) as journal:
        await journal.append_event(event(entity_id="account-1"))
    done = cli("verify", str(missing), "--database-url", database_url, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert (report["missing"], report["different"], report["matched"]) == (1, 0, 30)
    assert report["examples"]["missing"][0].startswith("line 31:")

    changed = tmp_path / "changed.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[9] = lines[9].replace(b'"amount":9', b'"amount":90')
    changed.write_bytes(b"".join(lines))
    done = cli("verify", str(changed), "--database-url", database_url)
    assert done.returncode == 1
    assert "MISMATCH" in done.stdout and "1 different" in done.stdout and "line 10:" in done.stdout
    assert "(payload)" in done.stdout


async def test_export_roundtrip_into_a_fresh_database(tmp_path: Path, database_url: str, empty_database_url: str) -> None:
    source = tmp_path / "source.jsonl"
    await write_file(source, sample(1500, entities=13))
    assert await migrate_file_to_postgres(source, database_url) == 1500
    async with PostgresEventJournal(database_url, pool_size=1) as journal:  # writes after the switch-over
        await journal.append_events([event(entity_id="account-3"), event(entity_id="new-entity")])
    exported = tmp_path / "back" / "credits.jsonl"
    done = cli("export", str(exported), "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    assert "exported 1502 event(s)" in done.stdout
    assert [p.name for p in exported.parent.iterdir()] == ["credits.jsonl"]  # the temp file was renamed
    read_back = await file_events(exported)
    assert read_back == await db_events(database_url)  # positions and versions as in the database
    # A file journal reopened for writing carries on from there.
    async with FileEventJournal(exported) as journal:
        await journal.append_event(event(entity_id="account-3"))
    assert (await file_events(exported))[-1].entity_version == read_back[-2].entity_version + 1

    assert cli("schema", "upgrade", "--database-url", empty_database_url).returncode == 0
    assert await migrate_file_to_postgres(exported, empty_database_url) == 1503
    await assert_same_events(exported, empty_database_url)
    assert without_position(read_back) == without_position((await db_events(empty_database_url))[:-1])

    done = cli("export", str(tmp_path / "tail.jsonl"), "--after", str(read_back[-3].position), "--json",
               "--database-url", database_url)
    assert done.returncode == 0 and json.loads(done.stdout)["exported"] == 2
    assert await file_events(tmp_path / "tail.jsonl") == read_back[-2:]


async def test_import_refuses_versions_taken_after_switch_over(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, [event(entity_id="account-1") for _ in range(3)])
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        await journal.append_event(event(entity_id="account-1"))  # a different event at version 1
    with pytest.raises(MigrationConflictError, match="entity 'account-1' version 1 is already taken"):
        await import_file(path, database_url)
    done = cli("import", str(path), "--database-url", database_url)
    assert done.returncode == 1
    assert done.stderr.startswith("eventstore: line 1: entity 'account-1' version 1") and "Traceback" not in done.stderr
    assert len(await db_events(database_url)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["import"],
        ["import", "x.jsonl", "--batch-size", "0"],
        ["import", "x.jsonl", "--batch-size", "many"],
        ["export", "x.jsonl", "--after", "-1"],
        ["verify", "x.jsonl", "--frobnicate"],
    ],
)
def test_bad_flags_exit_2(args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "usage:" in done.stderr


@pytest.mark.parametrize("command", ["import", "export", "verify"])
def test_database_url_required(tmp_path: Path, command: str) -> None:
    path = tmp_path / "credits.jsonl"
    path.write_bytes(b"")
    done = cli(command, str(path))
    assert done.returncode == 2
    assert "--database-url" in done.stderr and "DATABASE_URL" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "credits.jsonl"
    path.write_bytes(b"")
    done = cli("verify", str(path), "--database-url", "postgresql://nobody:s3cret@127.0.0.1:1/none")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cret" not in done.stderr and "127.0.0.1:1" in done.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_rate_and_eta_on_a_terminal_only() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = ProgressBar("import", stream, interval=0)
        bar.started -= 2.0  # two seconds in
        bar.update(50, 100, 5000)
        bar.update(100, 100, 10000)
        bar.finish()
    drawn = terminal.getvalue()
    assert "import [###############" in drawn and " 50%" in drawn and "100%" in drawn
    assert "5,000 events" in drawn and "events/s" in drawn and "ETA" in drawn
    assert pipe.getvalue() == ""


async def test_key_stored_concurrently_is_skipped_not_an_error(tmp_path: Path, database_url: str) -> None:
    events = [event(entity_id=f"account-{i}") for i in range(20)]
    path = tmp_path / "credits.jsonl"
    await write_file(path, events)
    stored = (await file_events(path))[7]
    other = await asyncpg.connect(database_url)
    try:
        writer = other.transaction()
        await writer.start()
        await other.execute(  # the same event, inserted by someone else and not committed yet
            "INSERT INTO credit_events (event_id, idempotency_key, event_type, \"timestamp\", actor_id, correlation_id,"
            " payload, entity_id, entity_version) VALUES ($1, $2, $3, $4, $5, $6, '{\"amount\": 1}', $7, 1)",
            stored.event_id, stored.idempotency_key, stored.event_type, stored.timestamp, stored.actor_id,
            stored.correlation_id, stored.entity_id,
        )
        task = asyncio.ensure_future(import_file(path, database_url))
        # The import waits on the uncommitted key in the unique index. (Polled from another
        # connection: pg_stat_activity is a snapshot that stays fixed within a transaction.)
        while not await asyncpg_fetchval(
            database_url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventstore-import'"
            " AND datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert not task.done()
            await asyncio.sleep(0.01)
        await writer.commit()
        result = await task
    finally:
        await other.close()
    assert (result.inserted, result.already_present) == (19, 1)
    stored_events = await db_events(database_url)
    # The concurrently stored event committed first; the import's own events follow in file order.
    assert stored_events[0].idempotency_key == stored.idempotency_key
    assert without_position(stored_events[1:]) == without_position([e for e in await file_events(path) if e != stored])


async def asyncpg_fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_progress_bar_on_a_terminal_only(tmp_path: Path, database_url: str) -> None:
    import pty

    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(300))
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "eventstore", "import", str(path), "--batch-size", "50", "--database-url", database_url],
            stdout=subprocess.PIPE, stderr=follower, text=True, cwd=REPO, timeout=60,
        )
        os.close(follower)
        follower = -1
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert done.returncode == 0 and "inserted 300" in done.stdout
    assert b"import [" in terminal and b"events/s" in terminal and b"ETA" in terminal and b"100%" in terminal
    quiet = cli("import", str(path), "--database-url", database_url)  # stderr is a pipe: no bar
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_import_without_schema_says_how_to_fix(tmp_path: Path, empty_database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    path.write_bytes(b"")
    done = cli("import", str(path), "--database-url", empty_database_url)
    assert done.returncode == 1
    assert "eventstore schema upgrade" in done.stderr and len(done.stderr.strip().splitlines()) == 1


async def test_second_concurrent_import_is_refused(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "credits.jsonl"
    await write_file(path, sample(5))
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(1701147248, 0)")  # what a running import holds
        done = cli("import", str(path), "--database-url", database_url)
        assert done.returncode == 1 and "another import into this database is running" in done.stderr
        dry = cli("import", str(path), "--dry-run", "--database-url", database_url)  # reads only: allowed
        assert dry.returncode == 0 and "would insert 5" in dry.stdout
    finally:
        await holder.close()
    assert cli("import", str(path), "--database-url", database_url).returncode == 0


async def test_checkpoints_travel_through_import_verify_and_export(
    tmp_path: Path, database_url: str, empty_database_url: str
) -> None:
    """A consumer's checkpoints are carried file → PostgreSQL → file, never moved back, and verify
    fails while PostgreSQL's is missing or behind the file's."""
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as journal:
        await journal.append_many([event(entity_id="a") for _ in range(3)], checkpoint=("relay", 3))
        await journal.append_many([], checkpoint=("audit", 7))
        await journal.append_many([event(entity_id="a")], checkpoint=("relay", 4))

    behind = cli("verify", str(path), "--database-url", database_url, "--json")
    assert behind.returncode == 1 and json.loads(behind.stdout)["checkpoints_behind"] == 2
    dry = json.loads(cli("import", str(path), "--dry-run", "--database-url", database_url, "--json").stdout)
    assert dry["checkpoints"] == 2 and dry["repeated_lines"] == 0
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        assert await journal.checkpoint("relay") is None  # a dry run writes nothing

    done = cli("import", str(path), "--database-url", database_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["inserted"] == 4 and report["checkpoints"] == 2 and report["repeated_lines"] == 0
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        assert (await journal.checkpoint("relay"), await journal.checkpoint("audit")) == (4, 7)
        await journal.append_many([], checkpoint=("audit", 9))  # the consumer went on in PostgreSQL
    ok = cli("verify", str(path), "--database-url", database_url)
    assert ok.returncode == 0 and "2 checkpoint(s), 0 behind" in ok.stdout, ok.stdout
    assert "another position" not in ok.stdout  # an import into an empty database keeps positions
    again = cli("import", str(path), "--database-url", database_url, "--json")  # never moves one back
    assert again.returncode == 0 and json.loads(again.stdout)["inserted"] == 0
    async with PostgresEventJournal(database_url, pool_size=1) as journal:
        assert await journal.checkpoint("audit") == 9

    back = tmp_path / "back.jsonl"
    assert cli("export", str(back), "--database-url", database_url).returncode == 0
    async with FileEventJournal(back, read_only=True) as exported:
        assert (await exported.checkpoint("relay"), await exported.checkpoint("audit")) == (4, 9)
        assert len([e async for e in exported.read_events(skip_corrupted=False)]) == 4
        assert exported.get_metrics()["total_events"] == 4
    # And on into another database that already holds an event: the checkpoints come along
    # again, the events land one position later, and verify says so.
    upgrade = cli("schema", "upgrade", "--database-url", empty_database_url)
    assert upgrade.returncode == 0, upgrade.stderr
    async with PostgresEventJournal(empty_database_url, pool_size=1) as journal:
        await journal.append_event(event())
    assert cli("import", str(back), "--database-url", empty_database_url).returncode == 0
    async with PostgresEventJournal(empty_database_url, pool_size=1) as journal:
        assert await journal.checkpoint("audit") == 9
    moved = cli("verify", str(back), "--database-url", empty_database_url)
    assert moved.returncode == 0 and "4 event(s) have another position in PostgreSQL" in moved.stdout, moved.stdout
    report = json.loads(cli("verify", str(back), "--database-url", empty_database_url, "--json").stdout)
    assert report["positions_moved"] == 4 and report["extra_in_database"] == 1


async def test_import_and_verify_stop_before_a_killed_writers_unfinished_write(tmp_path, database_url):
    """A writer SIGKILLed inside a large write() leaves whole lines of an unfinished batch, and
    its marker (<journal>.writing) says where that write began; its recovery will move them
    aside. The importer and verify read no further than that, as read-only journals do."""
    from eventstore.jsonl import WRITE_MARKER, write_marker_path
    from eventstore.postgres.file_verify import verify_file

    source, path = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    async with FileEventJournal(source) as journal:
        await journal.append_events([event(idempotency_key=f"key-{n}") for n in range(3)])
        await journal.append_events([event(idempotency_key=f"key-{n}") for n in range(3, 6)])  # cut short below
    lines = source.read_bytes().splitlines(keepends=True)
    durable = b"".join(lines[:3])
    path.write_bytes(durable + b"".join(lines[3:5]))  # two of the batch's three lines reached the file
    write_marker_path(path).write_bytes(WRITE_MARKER.pack(len(durable), len(durable) + len(b"".join(lines[3:]))))

    result = await import_file(path, database_url)
    assert (result.inserted, result.events, result.corrupt) == (3, 3, 0)
    async with PostgresEventJournal(database_url, pool_size=1) as target:
        assert [e.idempotency_key async for e in target.read_events()] == [f"key-{n}" for n in range(3)]
    verified = await verify_file(path, database_url)
    assert (verified.matched, verified.missing) == (3, 0)


async def test_an_import_batch_takes_its_entities_locks_before_its_copy(tmp_path: Path, database_url: str) -> None:
    """The COPY path locks the batch's entities first, as every write path does: a batch meeting
    an entity whose lock a live writer holds waits on that advisory lock (not on a row), and goes
    on once the writer's transaction ends."""
    events = [event(entity_id=f"account-{i % 3}") for i in range(9)]
    path = tmp_path / "credits.jsonl"
    await write_file(path, events)
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT credit_events_lock_entities(ARRAY['account-1'])")
        task = asyncio.ensure_future(import_file(path, database_url))
        deadline = time.monotonic() + 30
        while not await asyncpg_fetchval(
            database_url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventstore-import'"
            " AND datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ):
            assert not task.done(), task.result()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await asyncpg_fetchval(database_url, "SELECT count(*) FROM credit_events") == 0
        await holder.execute("COMMIT")
        result = await asyncio.wait_for(task, 30)
    finally:
        await holder.close()
    assert (result.inserted, result.already_present) == (9, 0)
    assert without_position(await db_events(database_url)) == without_position(await file_events(path))


async def test_a_line_whose_payload_exceeds_the_import_limit_is_reported_not_imported(tmp_path: Path, database_url: str) -> None:
    """The reader checks every envelope rule; the import adds the payload's size limit (1 MiB by
    default), the one rule a journal sets for itself: a journal opened with a larger limit can hold
    a line PostgreSQL's journal would refuse."""
    from eventstore.envelope import DEFAULT_MAX_PAYLOAD_BYTES

    big = event(entity_id="account-big", payload={"blob": "x" * DEFAULT_MAX_PAYLOAD_BYTES})
    small = [event(entity_id="account-1") for _ in range(3)]
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path, max_payload_bytes=2 * DEFAULT_MAX_PAYLOAD_BYTES) as journal:
        await journal.append_events(small[:2])
        await journal.append_event(big)
        await journal.append_event(small[2])
    result = await import_file(path, database_url)
    assert (result.inserted, result.corrupt, result.events) == (3, 1, 3)
    assert result.corrupt_lines[0][0] == 3 and "exceeds max_payload_bytes" in result.corrupt_lines[0][1]
    assert [e.idempotency_key for e in await db_events(database_url)] == [e.idempotency_key for e in small]
