"""Shared pieces of the benchmarks: scratch databases, events, percentiles, machine facts, results."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from eventstore.envelope import ENCODER, EventEnvelope

PGHOST = os.environ.get("PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGPORT", "5432"))
PGUSER = os.environ.get("PGUSER", "postgres")
# run_all.py --quick points this at a temp dir, so quick numbers never replace committed ones.
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")

# The bare INSERT a careful engineer would write: prepared, named arbiter, id returned.
BARE_INSERT = """INSERT INTO bare_events (event_id, idempotency_key, event_type, schema_version, "timestamp",
    actor_id, correlation_id, causation_id, payload, entity_id, entity_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"""


def url(db: str) -> str:
    return f"postgresql://{PGUSER}@{PGHOST}:{PGPORT}/{db}"


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(host=PGHOST, port=PGPORT, user=PGUSER, database="postgres")


async def create_db(tag: str, *, schema: bool = True, bare_table: bool = False) -> str:
    """A fresh ``es_bench_*`` database, with the eventstore schema and optionally ``bare_events``:
    a copy of ``credit_events`` with the same columns, constraints and indexes, but no triggers."""
    name = f"es_bench_{tag}_{os.getpid()}"
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    if schema:
        from eventstore.postgres.schema import upgrade_schema

        await asyncio.to_thread(upgrade_schema, url(name))
        if bare_table:
            conn = await asyncpg.connect(url(name))
            try:
                await conn.execute("CREATE TABLE bare_events (LIKE credit_events INCLUDING ALL)")
            finally:
                await conn.close()
    return name


async def drop_db(name: str) -> None:
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def bare_connection(db: str) -> asyncpg.Connection:
    """An asyncpg connection with the same binary jsonb codec the journal uses (bytes in, no re-encoding)."""
    conn = await asyncpg.connect(url(db))
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=lambda b: b"\x01" + b, decoder=lambda b: b[1:], format="binary"
    )
    return conn


def make_events(n: int, *, entities: int = 100, prefix: str = "e") -> list[EventEnvelope]:
    """``n`` realistic credit events spread over ``entities`` entity streams."""
    return [
        EventEnvelope.new(
            "CreditGranted",
            {"account": f"acct-{i % entities}", "amount": i % 997, "currency": "EUR", "note": "bench"},
            actor_id="bench",
            entity_id=f"{prefix}-{i % entities}",
        )
        for i in range(n)
    ]


def bare_args(event: EventEnvelope, version: int | None) -> tuple[Any, ...]:
    """The row the journal would store, encoded the way a bare client must encode it."""
    return (
        event.event_id, event.idempotency_key, event.event_type, event.schema_version, event.timestamp,
        event.actor_id, event.correlation_id, event.causation_id, ENCODER.encode(event.payload),
        event.entity_id, version,
    )


def file_line(event: EventEnvelope, position: int, version: int | None) -> bytes:
    """The exact line FileEventJournal writes for this event."""
    return ENCODER.encode(msgspec.structs.replace(event, position=position, entity_version=version)) + b"\n"


async def timed(calls: list[Any]) -> list[float]:
    """Seconds each awaited call took, one after another."""
    samples = []
    clock = time.perf_counter
    for call in calls:
        t0 = clock()
        await call()
        samples.append(clock() - t0)
    return samples


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def latency_summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": percentile(s, 50), "p99": percentile(s, 99), "p999": percentile(s, 99.9), "n": len(s)}


def max_rss_kib() -> int:
    """Peak resident set size of this process so far (KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> int:
    """Reset the peak RSS (Linux: ``5 > /proc/self/clear_refs`` resets VmHWM) and return the RSS now (KiB),
    so a later :func:`peak_rss_kib` measures what happened since, not an import-time peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS:")
    except OSError:
        return max_rss_kib()


def current_rss_kib() -> int:
    """RSS now (VmRSS), or ru_maxrss where /proc is missing."""
    try:
        return _status_kib("VmRSS:")
    except OSError:
        return max_rss_kib()


def peak_rss_kib() -> int:
    """Peak RSS since :func:`reset_peak_rss` (VmHWM), or ru_maxrss where /proc is missing."""
    try:
        return _status_kib("VmHWM:")
    except OSError:
        return max_rss_kib()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


async def machine_facts(temp_dir: str | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "asyncpg": asyncpg.__version__,
        "msgspec": msgspec.__version__,
        "file_sync": "os.write + os.fdatasync (the file journal's group commit write)",
        "utc": datetime.now(UTC).isoformat(timespec="seconds"),
        # Other work on the host shows up here: the numbers are noisier when it is above 0.
        "loadavg_1_5_15_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if temp_dir:
        facts["temp_dir_fs"] = _fs_type(temp_dir)
    try:
        conn = await _admin()
    except (OSError, asyncpg.PostgresError) as exc:
        facts["postgres"] = f"unavailable: {exc}"
        return facts
    try:
        facts["postgres"] = await conn.fetchval("SELECT version()")
        for setting in ("synchronous_commit", "wal_sync_method", "fsync", "shared_buffers", "wal_buffers",
                        "commit_delay", "full_page_writes", "max_connections"):
            facts[f"pg_{setting}"] = await conn.fetchval(f"SHOW {setting}")
    finally:
        await conn.close()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fs_type(path: str) -> str:
    try:
        best = ("", "unknown")
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, fstype, *_ = line.split()
            if path.startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype)
        return f"{best[1]} (mounted at {best[0]})"
    except OSError:
        return "unknown"


def compare(name: str, value: float, raw_name: str, raw: float, unit: str, *,
            target: str | None = None, lower_is_better: bool = False) -> dict[str, Any]:
    """One result row: the figure, the raw limit measured in the same run, their ratio and the target.

    ``target`` is ``"<= 1.15"`` or ``">= 0.8"`` on ``value / raw``, or ``"< 100 ms"`` (a unit
    after the bound) on ``value`` itself."""
    ratio = value / raw if raw else float("nan")
    met = None
    if target:
        op, bound, *absolute = target.split()
        measured = value if absolute else ratio
        met = measured <= float(bound) if op in ("<=", "<") else measured >= float(bound)
    return {"name": name, "value": value, "raw_name": raw_name, "raw": raw, "unit": unit,
            "ratio": ratio, "target": target, "met": met, "lower_is_better": lower_is_better}


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'figure':44} {'value':>12} {'raw limit':>40} {'ratio':>7}  target")
    for r in rows:
        verdict = "" if r["met"] is None else ("met" if r["met"] else "MISSED")
        raw = f"{r['raw_name']} {fmt(r['raw'])}"
        print(f"{r['name']:44} {fmt(r['value']):>12} {raw:>40} {r['ratio']:7.2f}  {r['target'] or '-'} {verdict}"
              f"  [{r['unit']}]")


def fmt(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def write_result(figure: str, rows: list[dict[str, Any]], params: dict[str, Any], machine: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{date.today().isoformat()}-{figure}.json"
    doc = {"figure": figure, "params": params, "machine": machine, "rows": rows, **(extra or {})}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


