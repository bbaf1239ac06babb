"""The package's layout holds what it promises: a file-only user never loads the PostgreSQL
driver, and tests and benchmarks reach eventstore through public names or documented modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_and_a_file_round_trip_leave_asyncpg_unimported(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        import eventstore
        from eventstore import EventEnvelope, create_event_journal

        async def main(path):
            async with await create_event_journal("file", path=path) as journal:
                event = EventEnvelope.new("layout.checked", {"n": 1}, actor_id="test", entity_id="e")
                assert await journal.append_event(event, expected_version=0)
                assert [e.event_id async for e in journal.read_events()] == [event.event_id]
                assert [e.event_id async for e in journal.query_events(event_type="layout.checked")] == [event.event_id]

        asyncio.run(main(sys.argv[1]))
        loaded = sorted(m for m in ("asyncpg", "aiosql", "psycopg", "yoyo") if m in sys.modules)
        print(",".join(loaded) or "none")
        """
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "j.jsonl")], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "none"


def _python_files() -> list[Path]:
    return sorted([*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("bench").glob("*.py")])


def test_tests_and_benchmarks_import_no_private_eventstore_name() -> None:
    offences: list[str] = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eventstore"):
                parts = node.module.split(".")  # type: ignore[union-attr]
                names = [alias.name for alias in node.names]
                if any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names):
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("eventstore") and any(p.startswith("_") for p in alias.name.split(".")):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {alias.name}")
    assert offences == []


def test_tests_and_benchmarks_touch_no_private_journal_attribute() -> None:
    private = re.compile(r"\b\w*(journal|reopened|reader|writer)\w*\._[a-z]\w*")
    offences = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _python_files() if path.name != "test_layout.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offences == []


def test_no_module_loads_another_by_file_path() -> None:
    offences = [
        str(path.relative_to(ROOT)) for path in _python_files()
        if path.name != "test_layout.py" and "spec_from_file_location" in path.read_text()
    ]
    assert offences == []
