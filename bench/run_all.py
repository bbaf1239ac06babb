"""Run every benchmark, then regenerate docs/benchmarks.md and the charts.

Full mode writes bench/results/ and docs/ (bench_schema.py and bench_scale.py, sizes at 1M and 10M
rows, run on their own: ``make bench-scale``). ``--quick`` uses small
counts, writes into a temp dir and regenerates the report there: it only checks that all runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = {
    "bench_append_latency.py": ["--events", "3000"],
    "bench_concurrent_appends.py": ["--events", "4000", "--rounds", "2"],
    "bench_duplicates.py": ["--events", "2000"],
    "bench_followers.py": ["--samples", "500", "--writers", "8"],
    "bench_replay.py": ["--events", "1000000"],
    # 1M events would take about 3.5 minutes alone: 250k keeps the whole run under 15 minutes.
    "bench_import.py": ["--events", "250000"],
    "bench_queries.py": ["--events", "1000000", "--samples", "100", "--budget", "5"],
    "bench_snapshots.py": ["--events", "1000000"],
    "load.py": ["--writers", "8,32", "--subscribers", "4", "--seconds", "15"],
    "bench_schema_versions.py": ["--events", "3000"],
    "bench_eventsourcing.py": ["--samples", "1000", "--jobs", "200", "--singles", "3000"],
    "bench_telemetry.py": ["--events", "2000", "--rounds", "3"],
    # A throwaway primary and standby of its own: about 2 minutes.
    "bench_replicas.py": ["--events", "100000", "--seconds", "5", "--rounds", "2"],
}
# bench_schema.py (sizes, WAL, GIN and the hot-entity ceiling at 1M rows, docs/operations.md: about
# 5 minutes) and bench_scale.py (1M and 10M events, about 10 minutes) run on their own: make bench-scale.
QUICK = {
    "bench_append_latency.py": ["--events", "300"],
    "bench_concurrent_appends.py": ["--events", "320", "--rounds", "1"],
    "bench_duplicates.py": ["--events", "200"],
    "bench_followers.py": ["--samples", "30", "--writers", "2"],
    "bench_replay.py": ["--events", "20000"],
    "bench_import.py": ["--events", "5000"],
    "bench_queries.py": ["--events", "20000", "--samples", "10", "--budget", "2"],
    "bench_snapshots.py": ["--events", "20000", "--deltas", "100,1000,10000", "--reps", "2"],
    "load.py": ["--writers", "4", "--subscribers", "2", "--seconds", "2"],
    "bench_schema.py": ["--quick"],
    "bench_schema_versions.py": ["--events", "200"],
    "bench_eventsourcing.py": ["--samples", "100", "--jobs", "20", "--singles", "200"],
    "bench_telemetry.py": ["--events", "100", "--rounds", "1"],
    "bench_replicas.py": ["--events", "5000", "--seconds", "1", "--rounds", "1"],
    "bench_scale.py": ["--sizes", "10000,50000", "--samples", "100"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, results in a temp dir (CI smoke run)")
    args = parser.parse_args()
    env = dict(os.environ)
    report_args: list[str] = []
    temp = tempfile.TemporaryDirectory(prefix="es_bench_quick_") if args.quick else None
    if temp is not None:
        env["BENCH_RESULTS"] = temp.name
        report_args = ["--results", temp.name, "--out", temp.name]
    started = time.perf_counter()
    try:
        for script, script_args in (QUICK if args.quick else FULL).items():
            print(f"\n=== {script} {' '.join(script_args)}", flush=True)
            t = time.perf_counter()
            subprocess.run([sys.executable, str(HERE / script), *script_args], check=True, env=env)
            print(f"=== {script} took {time.perf_counter() - t:.0f}s", flush=True)
        subprocess.run([sys.executable, str(HERE / "report.py"), *report_args], check=True, env=env)
    finally:
        if temp is not None:
            temp.cleanup()
    print(f"\nall benchmarks done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
