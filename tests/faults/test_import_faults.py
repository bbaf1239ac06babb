"""Issue 7, import: ``eventstore import`` SIGKILLed mid-batch again and again while a writer
process keeps appending to the file journal; then the writer stops, a last import runs to the
end, and PostgreSQL holds exactly the file's events, in file order, with the file's versions."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from eventstore import EventEnvelope, FileEventJournal, PostgresEventJournal

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WRITER = HERE / "file_writer.py"


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}


def start_import(path: Path, url: str, batch_size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventstore", "import", str(path), "--batch-size", str(batch_size), "--database-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=environment(),
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstore", *args], capture_output=True, text=True, cwd=REPO,
                          env=environment(), timeout=300, check=False)


async def file_events(path: Path, limit: int | None = None) -> list[EventEnvelope]:
    """The file's events (the first ``limit`` of them), as FileEventJournal reads them."""
    events: list[EventEnvelope] = []
    async with FileEventJournal(path, read_only=True) as journal:
        async for e in journal.read_events(skip_corrupted=False):
            if limit is not None and len(events) >= limit:
                break
            events.append(e)
    return events


async def db_events(url: str) -> list[EventEnvelope]:
    async with PostgresEventJournal(url, pool_size=1) as journal:
        return [e async for e in journal.read_events(skip_corrupted=False)]


def unpositioned(events: list[EventEnvelope]) -> list[EventEnvelope]:
    return [msgspec.structs.replace(e, position=None) for e in events]


async def wait_for_import_backend_to_end(conn: asyncpg.Connection) -> None:
    """A statement already sent still commits after its client died: wait until its backend is gone."""
    deadline = time.monotonic() + 120
    while await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'eventstore-import'"
    ):
        assert time.monotonic() < deadline, "the killed import's backend never ended"
        await asyncio.sleep(0.02)


async def import_killed_under_writes(tmp_path: Path, url: str, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    path = tmp_path / "credits.jsonl"
    stop = tmp_path / "writer.stop"
    figures: dict[str, Any] = {"kills": 0, "killed_mid_run": 0, "rows_after_each_kill": []}
    conn = await asyncpg.connect(url)
    stderr = open(tmp_path / "writer.err", "w")  # noqa: SIM115 - closed in finally
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path), str(tmp_path / "acks"), f"imp{seed}", "small",
                               str(stop)], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert writer.stdout is not None
        ready, _, _ = await asyncio.to_thread(select.select, [writer.stdout], [], [], 120)
        assert ready and writer.stdout.readline().strip() == "ready"
        # Every import statement sleeps a little (a statement trigger), so a kill lands mid-run.
        await conn.execute(
            "CREATE FUNCTION slow_import() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.01); RETURN NULL; END $$;"
            "CREATE TRIGGER slow_import BEFORE INSERT ON credit_events FOR EACH STATEMENT EXECUTE FUNCTION slow_import()"
        )
        while len(await file_events(path, 500)) < 500:  # something to import before the first run
            assert writer.poll() is None, (tmp_path / "writer.err").read_text()
            await asyncio.sleep(0.05)
        rows = 0
        for _ in range(kills):
            process = start_import(path, url, batch_size=rng.choice([25, 50, 80]))
            target = rows + rng.randint(50, 400)
            try:
                deadline = time.monotonic() + 120
                while process.poll() is None and await conn.fetchval("SELECT count(*) FROM credit_events") < target:
                    assert time.monotonic() < deadline, "the import made no progress"
                    await asyncio.sleep(rng.uniform(0.001, 0.02))
                mid_run = process.poll() is None
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
            assert mid_run or process.returncode == 0, process.stderr.read() if process.stderr else ""
            figures["kills"] += 1
            figures["killed_mid_run"] += mid_run
            await wait_for_import_backend_to_end(conn)
            stored = await db_events(url)
            # Whole batches in file order: what PostgreSQL holds is always a prefix of the file.
            assert unpositioned(stored) == unpositioned(await file_events(path, len(stored)))
            assert len(stored) >= rows, "a killed import lost rows an earlier run committed"
            rows = len(stored)
            figures["rows_after_each_kill"].append(rows)
            assert writer.poll() is None, (tmp_path / "writer.err").read_text()
        assert figures["killed_mid_run"] >= 1
        stop.write_text("stop")
        assert await asyncio.to_thread(writer.wait, 120) == 0, (tmp_path / "writer.err").read_text()
        await conn.execute("DROP TRIGGER slow_import ON credit_events; DROP FUNCTION slow_import()")
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        stderr.close()
        await conn.close()
    # A last run imports the rest; verify finds every event of the file, identical, and nothing else.
    final = cli("import", str(path), "--json", "--database-url", url)
    assert final.returncode == 0, final.stderr
    result = json.loads(final.stdout)
    on_file = await file_events(path)
    assert result["inserted"] + result["already_present"] == len(on_file) == result["events"]
    assert result["already_present"] >= rows
    checked = cli("verify", str(path), "--json", "--database-url", url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["matched"] == len(on_file) and verdict["missing"] == verdict["different"] == 0, verdict
    assert verdict["extra_in_database"] == 0, verdict
    stored = await db_events(url)
    assert unpositioned(stored) == unpositioned(on_file)  # file order, content, entity versions
    assert len({e.idempotency_key for e in stored}) == len(stored)
    positions = [e.position for e in stored]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    figures.update(events=len(on_file), inserted_by_last_run=result["inserted"])
    return figures


async def test_import_killed_mid_batch_under_concurrent_writes(tmp_path: Path, database_url: str) -> None:
    figures = await import_killed_under_writes(tmp_path, database_url, kills=4, seed=int(time.time()))
    print(f"\nimport-kill: {json.dumps(figures)}")


@pytest.mark.long
async def test_import_killed_mid_batch_soak(tmp_path: Path, database_url: str) -> None:
    figures = await import_killed_under_writes(tmp_path, database_url, kills=25, seed=int(time.time()))
    print(f"\nimport-kill-soak: {json.dumps(figures)}")
