"""A real wheel, installed into a fresh venv and imported from outside the checkout, ships the
SQL and the migrations and can append and read on both backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import eventstore
    from eventstore import EventEnvelope, create_event_journal
    from eventstore.postgres.schema import upgrade_schema
    assert "site-packages" in eventstore.__file__, eventstore.__file__

    async def main(path, url):
        for backend in ("file", "postgres"):
            if backend == "postgres":
                upgrade_schema(url)
            journal = await create_event_journal(backend, path=path, database_url=url, pool_size=1, max_overflow=0)
            e = EventEnvelope.new("wheel.checked", {"ok": True}, actor_id="packaging-test", entity_id="w")
            assert await journal.append_event(e) is True
            events = [x async for x in journal.read_events()]
            assert events[-1].event_id == e.event_id, events
            await journal.close()
        print("wheel ok")

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_wheel_installs_and_works_outside_the_checkout(tmp_path, database_url):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("eventstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "eventstore/_sql/events.sql" in names and "eventstore/_migrations/0001_credit_events.sql" in names
    assert "eventstore/py.typed" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "--quiet", str(wheel)], check=True, capture_output=True)
    result = subprocess.run(
        [venv / "bin" / "python", "-c", SCRIPT, str(tmp_path / "j" / "credits.jsonl"), database_url],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wheel ok"
    cli = subprocess.run([venv / "bin" / "eventstore", "schema", "status", "--database-url", database_url],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and "applied  0001_credit_events" in cli.stdout
