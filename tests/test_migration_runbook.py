"""docs/migration.md, step by step: a real writer process keeps appending to the file journal while
the import runs; catch-up; stop the writer; final import and verify; switch to PostgreSQL; and back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_migrate import REPO, cli, db_events, file_events, without_position

WRITER = r"""
import asyncio, signal, sys
from eventstore import EventEnvelope, FileEventJournal

async def main(path):
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    written = 0
    async with FileEventJournal(path) as journal:
        while not stop.is_set():
            await journal.append_events([
                EventEnvelope.new("credits.transferred", {"amount": written + k}, actor_id="writer",
                                  entity_id=f"agent-{(written + k) % 13}")
                for k in range(20)
            ])
            written += 20
            await asyncio.sleep(0.005)
        # A last event on the way out: written after the catch-up import, for certain.
        await journal.append_event(EventEnvelope.new("service.stopped", {"events": written}, actor_id="writer",
                                                     entity_id="agent-0"))
    print(written + 1, flush=True)

asyncio.run(main(sys.argv[1]))
"""

APPEND_ONE = r"""
import asyncio, json
from eventstore import EventEnvelope, create_event_journal

async def main():
    journal = await create_event_journal()
    async with journal:
        await journal.append_event(EventEnvelope.new("credits.granted", {"amount": 5}, actor_id="service",
                                                     entity_id="agent-0"))
        last = [e async for e in journal.read_events()][-1]
    print(json.dumps({"backend": journal.backend, "entity_version": last.entity_version}))

asyncio.run(main())
"""


def run_python(code: str, env: dict[str, str]) -> dict:
    environment = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_switch_over_and_back(tmp_path: Path, database_url: str) -> None:
    journal = tmp_path / "storage" / "events" / "credits.jsonl"
    db = ["--database-url", database_url]

    # 1. Schema (the fixture's database already has it: upgrading again is a no-op).
    assert cli("schema", "upgrade", *db).returncode == 0

    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(journal)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not journal.exists() or journal.stat().st_size < 100_000:
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.02)

        # 2-3. Dry run, then the bulk import while the service still writes the file.
        done = cli("import", str(journal), "--dry-run", "--json", *db)
        assert done.returncode == 0 and json.loads(done.stdout)["corrupt"] == 0
        done = cli("import", str(journal), "--json", *db)
        assert done.returncode == 0, done.stderr
        first = json.loads(done.stdout)["inserted"]
        assert first > 0 and writer.poll() is None  # the writer was running throughout

        # 4. Catch-up import: only what was written since.
        time.sleep(0.2)
        done = cli("import", str(journal), "--json", *db)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["already_present"] >= first and report["inserted"] > 0
    finally:
        # 5. Stop the writer.
        writer.send_signal(signal.SIGTERM)
        out, _ = writer.communicate(timeout=30)
    assert writer.returncode == 0
    total = int(out)

    # At least its last event is not in PostgreSQL yet: verify says so.
    done = cli("verify", str(journal), "--json", *db)
    missing = json.loads(done.stdout)["missing"]
    assert done.returncode == 1 and missing >= 1

    # 6. Final import, then verify.
    done = cli("import", str(journal), "--json", *db)
    assert done.returncode == 0 and json.loads(done.stdout)["inserted"] == missing
    done = cli("verify", str(journal), *db)
    assert done.returncode == 0, done.stdout
    assert f"OK: {total} file events, {total} identical, 0 missing, 0 different" in done.stdout
    file_side = await file_events(journal)
    assert without_position(await db_events(database_url)) == without_position(file_side)
    agent0 = max(e.entity_version for e in file_side if e.entity_id == "agent-0")

    # 7. Switch: the service on PostgreSQL continues the entity's versions.
    after = run_python(APPEND_ONE, {"EVENT_JOURNAL_BACKEND": "postgres", "DATABASE_URL": database_url})
    assert after == {"backend": "postgres", "entity_version": agent0 + 1}
    # 8. The old file still verifies; the new event is extra in the database.
    done = cli("verify", str(journal), "--json", *db)
    assert done.returncode == 0 and json.loads(done.stdout)["extra_in_database"] == 1

    # The way back: stop the service (it has exited), export, verify, run on the file.
    back = tmp_path / "storage" / "events" / "credits-from-postgres.jsonl"
    done = cli("export", str(back), *db)
    assert done.returncode == 0 and f"exported {total + 1} event(s)" in done.stdout
    done = cli("verify", str(back), "--json", *db)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["extra_in_database"] == 0 and report["matched"] == total + 1
    after = run_python(APPEND_ONE, {"EVENT_JOURNAL_BACKEND": "file", "EVENT_JOURNAL_PATH": str(back)})
    assert after == {"backend": "file", "entity_version": agent0 + 2}
    assert (await file_events(back))[:-1] == await db_events(database_url)
