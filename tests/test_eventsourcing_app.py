"""The bank-accounts system of examples/eventsourcing_bank.py, written as eventsourcing's
documentation writes one and stored in eventstore by ``PERSISTENCE_MODULE`` alone: snapshots on,
a process application consuming another's events; killed (SIGKILL) at random moments and
restarted, it ends with every deposit made once and every credit in the ledgers exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "eventsourcing_bank.py"
DEPOSITS = 350
KILLS = 3


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EVENT_JOURNAL_BACKEND", "EVENT_JOURNAL_PATH")}
    return {**env, "PERSISTENCE_MODULE": "eventstore.integrations.eventsourcing", **extra}


def _kill_mid_run(env: dict[str, str], rng: random.Random) -> int:
    """Start a run, SIGKILL it after a random number of progress lines and a random few ms."""
    child = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "run", str(DEPOSITS)], env=env, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    lines = rng.randint(1, 3)
    last = -1
    for line in child.stdout:
        last = int(line.split()[1])
        lines -= 1
        if lines == 0:
            break
    time.sleep(rng.uniform(0, 0.05))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before it was killed"
    return last


def _run_killed_and_restarted(env: dict[str, str]) -> dict[str, object]:
    rng = random.Random(int(os.environ.get("EVENTSTORE_SEED", "0")) or None)
    progress = [_kill_mid_run(env, rng) for _ in range(KILLS)]
    assert progress == sorted(progress), f"a restart went back: {progress}"
    finished = subprocess.run([sys.executable, str(EXAMPLE), "run", str(DEPOSITS)], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    verified = subprocess.run([sys.executable, str(EXAMPLE), "verify", str(DEPOSITS)], env=env, capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]
    return json.loads(verified.stdout)


def test_bank_system_on_postgres_survives_kills(database_url: str) -> None:
    report = _run_killed_and_restarted(_env({"DATABASE_URL": database_url}))
    assert report["problems"] == [] and report["accounts_with_snapshots"] == 7

    async def counts() -> tuple[int, int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            credits = await conn.fetchval(
                "SELECT count(*) FROM bankaccounts.credit_events WHERE event_type LIKE '%BankAccount.Credited'"
            )
            recorded = await conn.fetchval("SELECT count(*) FROM statements.credit_events WHERE event_type LIKE '%Ledger.Recorded'")
            tracked = await conn.fetchval("SELECT position FROM statements.credit_checkpoints WHERE name = 'BankAccounts'")
            return credits, recorded, tracked
        finally:
            await conn.close()

    credits, recorded, tracked = asyncio.run(counts())
    # Each application has its own schema; every deposit is one credit, recorded once.
    assert credits == recorded == DEPOSITS
    assert tracked >= DEPOSITS


def test_bank_system_on_files_survives_kills(tmp_path: Path) -> None:
    report = _run_killed_and_restarted(_env({
        "EVENT_JOURNAL_BACKEND": "file",
        "BANKACCOUNTS_EVENT_JOURNAL_PATH": str(tmp_path / "accounts.jsonl"),
        "STATEMENTS_EVENT_JOURNAL_PATH": str(tmp_path / "statements.jsonl"),
    }))
    assert report["problems"] == [] and report["accounts_with_snapshots"] == 7
