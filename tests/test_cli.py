"""The command line as users run it: a real subprocess, exit codes 0/1/2, one line on stderr."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from eventstore import EventEnvelope, FileEventJournal
from eventstore.postgres.schema import shipped_migration_ids

MIGRATION_IDS = shipped_migration_ids()


def cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EVENT_JOURNAL_BACKEND")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "eventstore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_schema_lifecycle(empty_database_url):
    status = cli("schema", "status", "--database-url", empty_database_url)
    assert status.returncode == 1 and "pending  0001_credit_events" in status.stdout
    up = cli("schema", "upgrade", "--database-url", empty_database_url)
    assert up.returncode == 0 and f"applied {len(MIGRATION_IDS)} migration(s)" in up.stdout
    assert cli("schema", "status", env={"DATABASE_URL": empty_database_url}).returncode == 0
    assert_one_line_error(cli("schema", "downgrade", "--database-url", empty_database_url), 2, "--yes")
    down = cli("schema", "downgrade", "--yes", "--database-url", empty_database_url)
    assert down.returncode == 0 and f"rolled back {len(MIGRATION_IDS)}" in down.stdout
    stats = cli("stats", "--backend", "postgres", "--database-url", empty_database_url)
    assert_one_line_error(stats, 1, "eventstore schema upgrade")


def test_missing_database_url_is_usage_error():
    assert_one_line_error(cli("schema", "upgrade"), 2, "--database-url", "DATABASE_URL")


@pytest.mark.parametrize("args", [["frobnicate"], ["schema"], ["demo", "--events", "zero"], ["stats", "--backend", "mongo"]])
def test_bad_usage_exits_2_without_traceback(args):
    assert_one_line_error(cli(*args), 2)


def test_unreachable_database_exits_1_without_password():
    result = cli("schema", "status", "--database-url", "postgresql://u:Hunter2pw@127.0.0.1:1/x")
    assert_one_line_error(result, 1, "127.0.0.1:1")
    assert "Hunter2pw" not in result.stderr + result.stdout


def test_stats_on_file_backend(tmp_path, database_url):
    path = tmp_path / "credits.jsonl"
    demo = cli("demo", "--events", "300", "--agents", "5", "--path", str(path))
    assert demo.returncode == 0, demo.stderr
    assert "minted - spent == sum of balances" in demo.stdout and "FAILED" not in demo.stdout
    stats = cli("stats", "--path", str(path), "--json")
    assert stats.returncode == 0 and '"backend": "file"' in stats.stdout and '"total_events": 3' in stats.stdout


# -- backend resolution (contract 0.2, "Command line") -------------------------------------------

HOLD_WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from eventstore import EventEnvelope, FileEventJournal
    async def main():
        journal = FileEventJournal(sys.argv[1])
        await journal.initialize()
        for i in range(3):
            await journal.append_event(EventEnvelope.new(
                "test.held", {"i": i}, actor_id="tester", idempotency_key=f"held-{i}"))
        print("ready", flush=True)
        time.sleep(120)
    asyncio.run(main())
    """
)
LINE_TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the journal's own variables, plus what the test sets."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("EVENT_JOURNAL_BACKEND", "EVENT_JOURNAL_PATH", "DATABASE_URL", "DATABASE_REPLICA_URLS")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventstore", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def start_python(*args: str, env: dict[str, str], cwd=None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)


def read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float = LINE_TIMEOUT) -> list[bytes]:
    """``count`` lines of the child's stdout; a failure (not a hang) after ``timeout`` seconds."""
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while buffer.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            pytest.fail(f"{count} lines not printed within {timeout} s; got {buffer!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            code = proc.wait(10)
            pytest.fail(f"exited with {code} after printing {buffer!r}; stderr: {proc.stderr.read().decode(errors='replace')}")
        buffer += chunk
    return buffer.split(b"\n")[:count]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def new_event(key: str) -> EventEnvelope:
    return EventEnvelope.new("test.cli", {"key": key}, actor_id="tester", idempotency_key=key)


def fill_postgres(url: str, keys: list[str]) -> None:
    from eventstore import PostgresEventJournal

    async def fill() -> None:
        async with PostgresEventJournal(url, pool_size=1) as journal:
            for key in keys:
                assert await journal.append_event(new_event(key)) is True

    asyncio.run(fill())


@pytest.fixture
def held_file_journal(tmp_path):
    """A JSONL journal of 3 events whose writer lock another process holds."""
    path = tmp_path / "held" / "credits.jsonl"
    holder = start_python("-c", HOLD_WRITER, str(path), env=clean_env())
    try:
        assert read_lines(holder, 1) == [b"ready"]
        yield path
    finally:
        stop(holder)


def test_stats_with_jsonl_backend_from_env_needs_no_writer_lock(held_file_journal, tmp_path):
    env = clean_env(EVENT_JOURNAL_BACKEND="jsonl", EVENT_JOURNAL_PATH=str(held_file_journal))
    stats = run_cli("stats", "--json", env=env, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    metrics = json.loads(stats.stdout)
    assert metrics["backend"] == "file" and metrics["total_events"] == 3


def test_tail_with_jsonl_backend_from_env_needs_no_writer_lock(held_file_journal, tmp_path):
    env = clean_env(EVENT_JOURNAL_BACKEND="jsonl", EVENT_JOURNAL_PATH=str(held_file_journal))
    tail = start_python("-m", "eventstore", "tail", "--after", "0", env=env, cwd=tmp_path)
    try:
        lines = [json.loads(line) for line in read_lines(tail, 3)]
    finally:
        stop(tail, signal.SIGTERM)
    assert [line["idempotency_key"] for line in lines] == ["held-0", "held-1", "held-2"]
    assert [line["position"] for line in lines] == [1, 2, 3]


def test_tail_with_database_url_follows_postgres(database_url, tmp_path):
    fill_postgres(database_url, ["pg-0", "pg-1"])
    cwd = tmp_path / "empty"
    cwd.mkdir()
    tail = start_python("-m", "eventstore", "tail", "--database-url", database_url, env=clean_env(), cwd=cwd)
    try:
        lines = [json.loads(line) for line in read_lines(tail, 2)]
    finally:
        stop(tail, signal.SIGTERM)
    assert [line["idempotency_key"] for line in lines] == ["pg-0", "pg-1"]
    assert list(cwd.iterdir()) == []  # no file journal under ./storage


def test_stats_with_database_url_reports_postgres(database_url, tmp_path):
    fill_postgres(database_url, ["pg-0", "pg-1"])
    cwd = tmp_path / "empty"
    cwd.mkdir()
    stats = run_cli("stats", "--json", "--database-url", database_url, env=clean_env(), cwd=cwd)
    assert stats.returncode == 0, stats.stderr
    metrics = json.loads(stats.stdout)
    assert metrics["backend"] == "postgres" and metrics["total_events"] == 2
    assert list(cwd.iterdir()) == []


def test_stats_with_database_url_and_backend_file_uses_the_file(database_url, tmp_path):
    fill_postgres(database_url, ["pg-0", "pg-1"])
    path = tmp_path / "one.jsonl"

    async def fill() -> None:
        async with FileEventJournal(path) as journal:
            assert await journal.append_event(new_event("file-0")) is True

    asyncio.run(fill())
    stats = run_cli("stats", "--json", "--database-url", database_url, "--backend", "file", "--path", str(path),
                    env=clean_env(), cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    metrics = json.loads(stats.stdout)
    assert metrics["backend"] == "file" and metrics["total_events"] == 1
