"""The command line as users run it: a real subprocess, exit codes 0/1/2, one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


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
    assert up.returncode == 0 and "applied 4 migration(s)" in up.stdout
    assert cli("schema", "status", env={"DATABASE_URL": empty_database_url}).returncode == 0
    assert_one_line_error(cli("schema", "downgrade", "--database-url", empty_database_url), 2, "--yes")
    down = cli("schema", "downgrade", "--yes", "--database-url", empty_database_url)
    assert down.returncode == 0 and "rolled back 4" in down.stdout
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
