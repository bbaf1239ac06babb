"""Issue 7, file backend: a writer process SIGKILLed at random moments, a real full disk (a small
tmpfs) and an injected ENOSPC in the middle of a group commit, and a load run with live
subscribers. Figures go to stdout (``pytest -s``) and to a JSON file in the test's tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

import eventstore.file.commit
from eventstore import EventEnvelope, FileEventJournal, JournalWriteError

from ..helpers import event, read_all, unstamped

HERE = Path(__file__).resolve().parent
WRITER = HERE / "file_writer.py"


# -- SIGKILL rounds ---------------------------------------------------------------------------


@dataclass
class KillStats:
    rounds: int = 0
    aimed_rounds: int = 0  # the kill was sent while a write() of several lines was visibly half done
    torn_tails: int = 0  # recoveries that moved bytes to a sidecar
    incomplete_batches_cut: int = 0  # sidecars holding whole lines: the start of a batch never finished
    acknowledged: int = 0  # over all journals
    stored: int = 0
    journal_acknowledged: int = 0  # in the current journal
    batch_checks: int = 0  # (announced batch, round) pairs found all-or-none
    largest_file_bytes: int = 0
    seconds: float = 0.0
    per_round: list[dict[str, Any]] = field(default_factory=list)


def read_acks(path: Path) -> tuple[list[str], list[list[str]]]:
    """Acknowledged keys and the batches announced, from the writer's side file."""
    acked: list[str] = []
    batches: list[list[str]] = []
    if not path.exists():
        return acked, batches
    for line in path.read_text().split("\n")[:-1]:  # a line without its newline was never finished
        kind, _, rest = line.partition(" ")
        if kind == "A":
            acked.append(rest)
        elif kind == "B":
            batches.append(rest.split(" "))
    return acked, batches


def start_writer(journal: Path, acks: Path, seed: str, mode: str, stderr: Any, stop: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, str(WRITER), str(journal), str(acks), seed, mode]
    if stop is not None:
        args.append(str(stop))
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    if not ready or process.stdout.readline().strip() != "ready":
        process.kill()
        process.wait()
        raise AssertionError(f"writer did not start: {Path(stderr.name).read_text()[-2000:]}")
    return process


#: Longer than any line the writer's ``big`` mode writes (payloads up to 300 kB).
LONGEST_LINE = 320_000


def wait_mid_write(path: Path, timeout: float) -> bool:
    """Spin until a write() is visibly in progress and has already written a whole line: the file
    ended inside a line at every look (microseconds apart; between two writes it ends with a
    newline for a whole fsync) while it grew by more than any line is long. False on timeout."""
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        first: int | None = None
        while time.monotonic() < deadline:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                if first is None:
                    first = size
                elif size - first > LONGEST_LINE:
                    return True
            else:
                first = None
        return False
    finally:
        os.close(fd)


async def check_after_kill(path: Path, acks_path: Path, before: list[tuple[str, int, str | None, int | None]],
                           stats: KillStats) -> list[tuple[str, int, str | None, int | None]]:
    """Every contract rule a SIGKILL must not break; returns (key, position, entity, version) of
    every stored event for the next round's "nothing earlier changed" check."""
    raw = path.read_bytes()
    acked, batches = read_acks(acks_path)
    journal = FileEventJournal(path)  # the lock: a killed writer keeps none
    await journal.initialize()
    try:
        kept = path.read_bytes()
        assert raw.startswith(kept) and (not kept or kept.endswith(b"\n"))
        sidecar = journal.torn_tail_path
        if sidecar is None:
            assert kept == raw, "the file ended inside a line but nothing was moved to a sidecar"
        else:
            stats.torn_tails += 1
            assert sidecar.parent == path.parent and sidecar.name.startswith(path.name + ".torn-")
            assert kept + sidecar.read_bytes() == raw, "the sidecar must hold exactly the bytes cut off"
            if b"\n" in sidecar.read_bytes():
                stats.incomplete_batches_cut += 1
        assert journal.get_metrics()["corrupted_lines_at_open"] == 0
        events = [e async for e in journal.read_events(skip_corrupted=False)]  # strict: nothing corrupt
        assert len(events) == len(kept.splitlines()), "every line is one distinct event"
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        counts = Counter(e.idempotency_key for e in events)
        assert max(counts.values(), default=1) == 1, [k for k, c in counts.items() if c > 1][:5]
        missing = [k for k in acked if k not in counts]
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
        versions: dict[str, int] = {}
        for e in events:
            if e.entity_id is None:
                assert e.entity_version is None
            else:
                versions[e.entity_id] = versions.get(e.entity_id, 0) + 1
                assert e.entity_version == versions[e.entity_id], (e.entity_id, e.entity_version)
        for batch in batches:
            present = sum(key in counts for key in batch)
            assert present in (0, len(batch)), f"append_events batch stored in part: {present} of {len(batch)}"
        stats.batch_checks += len(batches)
        summary = [(e.idempotency_key, e.position, e.entity_id, e.entity_version) for e in events]  # type: ignore[misc]
        assert summary[: len(before)] == before, "a kill changed events stored before it"
        # The journal accepts appends after the kill, numbering after what is there.
        probe = event(entity_id="acct-0")
        assert await journal.append_event(probe, expected_version=versions.get("acct-0", 0)) is True
        (stored,) = [e async for e in journal.read_events(after=len(events))]
        assert unstamped(stored) == probe and stored.position == len(events) + 1
        summary.append((probe.idempotency_key, len(events) + 1, "acct-0", versions.get("acct-0", 0) + 1))
        stats.journal_acknowledged = len(acked)
        stats.largest_file_bytes = max(stats.largest_file_bytes, len(raw))
    finally:
        await journal.close()
    return summary


def kill_rounds(tmp_path: Path, rounds: int, seed: int, per_journal: int = 5, extra_aimed: int = 6) -> KillStats:
    """``rounds`` writer processes, each SIGKILLed at a random moment; every third one with
    only batches of large events, killed while a write() of a batch is visibly half done (the
    write sometimes finishes before the signal lands: then up to ``extra_aimed`` more such rounds
    run until one kill cut a batch short). A new journal every ``per_journal`` rounds keeps the
    files (and the checks) small."""
    rng = random.Random(seed)
    stats = KillStats()
    began = time.monotonic()
    summary: list[tuple[str, int, str | None, int | None]] = []
    path = acks = tmp_path
    acknowledged_before = stored_before = 0
    number = -1
    while (number := number + 1) < rounds or (number < rounds + extra_aimed and not stats.incomplete_batches_cut):
        if number % per_journal == 0:
            folder = tmp_path / f"journal-{number // per_journal}"
            folder.mkdir()
            path, acks, summary = folder / "credits.jsonl", folder / "acks", []
            acknowledged_before, stored_before = stats.acknowledged, stats.stored
        aimed = number % 3 == 2 or number >= rounds
        with open(tmp_path / f"writer-{number}.err", "w") as stderr:
            process = start_writer(path, acks, f"s{seed}r{number}", "big" if aimed else "mix", stderr)
            try:
                time.sleep(rng.uniform(0.0, 0.15) if aimed else rng.uniform(0.05, 0.6))
                hit = aimed and wait_mid_write(path, timeout=10)
                assert process.poll() is None, f"writer died on its own: {Path(stderr.name).read_text()[-2000:]}"
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
        assert process.returncode == -signal.SIGKILL
        torn_before = stats.torn_tails
        summary = asyncio.run(check_after_kill(path, acks, summary, stats))
        stats.acknowledged = acknowledged_before + stats.journal_acknowledged
        stats.stored = stored_before + len(summary)
        stats.rounds += 1
        stats.aimed_rounds += hit
        stats.per_round.append({"aimed": aimed, "hit_mid_write": hit, "torn": stats.torn_tails > torn_before,
                                "stored": stats.stored, "acknowledged": stats.acknowledged})
    stats.seconds = round(time.monotonic() - began, 2)
    return stats


def report(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name}: " + json.dumps({k: v for k, v in figures.items() if k != "per_round"}))
    (tmp_path / f"{name}.json").write_text(json.dumps(figures, indent=2))


def test_sigkilled_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    stats = kill_rounds(tmp_path, rounds=9, seed=int(time.time()))
    report(tmp_path, "sigkill", asdict(stats))
    assert stats.rounds >= 9
    # Aimed rounds kill while a batch's write() is visibly half done: the kernel stops a write at a
    # page boundary on SIGKILL, so such a round leaves a torn tail after whole lines of the batch.
    assert stats.aimed_rounds >= 1 and stats.torn_tails >= 1 and stats.incomplete_batches_cut >= 1, stats


@pytest.mark.long
def test_sigkilled_writer_soak(tmp_path: Path) -> None:
    stats = kill_rounds(tmp_path, rounds=120, seed=int(time.time()))
    report(tmp_path, "sigkill-soak", asdict(stats))
    assert stats.rounds >= 120 and stats.torn_tails >= 10, stats


# -- full disk --------------------------------------------------------------------------------


class QuotaOs:
    """Stands in for ``os`` inside eventstore.file.commit when no tmpfs can be mounted: writes to the
    journal stop at ``quota`` bytes of file size with ENOSPC, like a full disk (a short write first)."""

    def __init__(self, quota: int) -> None:
        self.quota = quota

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        room = self.quota - os.fstat(fd).st_size
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, bytes(data[:room]))


@contextlib.contextmanager
def small_disk(
    folder: Path, size: int, monkeypatch: pytest.MonkeyPatch, *, inject: bool
) -> Iterator[Callable[[], None]]:
    """A real ``size``-byte tmpfs at ``folder`` (as root), or with ``inject`` (or when mounting
    fails) an injected quota; yields a function that frees a quarter of the space again."""
    folder.mkdir()
    mounted = not inject and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False
    ).returncode == 0
    try:
        filler = folder / "filler"
        if mounted:
            filler.write_bytes(b"\0" * (size // 4))  # freed later, to make room again

            def free() -> None:
                filler.unlink()
        else:
            quota = QuotaOs(size - size // 4)
            monkeypatch.setattr(eventstore.file.commit, "os", quota)

            def free() -> None:
                quota.quota += size // 4
        yield free
    finally:
        monkeypatch.undo()
        if mounted and subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
async def test_full_disk_refuses_appends_cleanly_and_recovers_when_space_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: str
) -> None:
    folder = tmp_path / "disk"
    with small_disk(folder, 4 << 20, monkeypatch, inject=disk == "injected") as free:
        if disk == "tmpfs" and os.geteuid() == 0:
            assert os.path.ismount(folder), "as root the test mounts a real tmpfs"
        path = folder / "credits.jsonl"
        acknowledged: list[EventEnvelope] = []
        async with FileEventJournal(path) as journal:
            with pytest.raises(JournalWriteError) as failure:
                for i in range(10_000):
                    e = event(payload={"i": i, "blob": "x" * 50_000}, entity_id=f"acct-{i % 3}")
                    size_before = path.stat().st_size
                    assert await journal.append_event(e) is True
                    acknowledged.append(e)
            assert failure.value.errno == errno.ENOSPC
            assert "No space left on device" in str(failure.value) and str(path) in str(failure.value)
            assert "nothing of this append was stored" in str(failure.value)
            assert path.stat().st_size == size_before, "the part of the line that fit was cut off again"
            assert len(acknowledged) > 10
            # A group commit on the full disk: every append of it fails, none is stored.
            group = [event(payload={"blob": "y" * 50_000}, entity_id="acct-0") for _ in range(12)]
            results = await asyncio.gather(
                *(journal.append_event(e) for e in group[:8]), journal.append_events(group[8:]), return_exceptions=True
            )
            assert all(isinstance(r, JournalWriteError) and r.errno == errno.ENOSPC for r in results), results
            assert path.stat().st_size == size_before
            # Readable, strictly: everything acknowledged, identical, and not one partial line.
            stored = [e async for e in journal.read_events(skip_corrupted=False)]
            assert [unstamped(e) for e in stored] == acknowledged
            assert [e.position for e in stored] == list(range(1, len(acknowledged) + 1))
            assert path.read_bytes().endswith(b"\n")
            free()
            # The same journal carries on, numbering after the last stored event; a failed append may be retried.
            versions = Counter(e.entity_id for e in acknowledged)
            assert await journal.append_event(group[0], expected_version=versions["acct-0"]) is True
            assert await journal.append_events(group[8:]) == [True] * 4
        async with FileEventJournal(path) as reopened:
            assert reopened.torn_tail_path is None
            stored = [e async for e in reopened.read_events(skip_corrupted=False)]
            assert [unstamped(e) for e in stored] == acknowledged + [group[0], *group[8:]]
            assert [e.entity_version for e in stored if e.entity_id == "acct-0"] == list(range(1, versions["acct-0"] + 6))
            assert await reopened.append_event(event(entity_id="acct-1"), expected_version=versions["acct-1"]) is True


class DiskFillsMidWrite:
    """``os`` for eventstore.file.commit whose next journal write() stores half its bytes, and the one
    after that blocks until ``release`` and then fails with ENOSPC."""

    def __init__(self) -> None:
        self.in_write = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.calls += 1
        if self.calls == 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        self.in_write.set()
        self.release.wait(60)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_enospc_in_the_middle_of_a_group_commit_fails_every_append_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credits.jsonl"
    async with FileEventJournal(path) as journal:
        before = [event(entity_id=f"acct-{i % 3}") for i in range(10)]
        assert await journal.append_events(before) == [True] * 10
        size = path.stat().st_size
        delivered: list[EventEnvelope] = []

        async def follow() -> None:
            async for e in journal.subscribe():
                delivered.append(e)

        follower = asyncio.create_task(follow())
        disk = DiskFillsMidWrite()
        monkeypatch.setattr(eventstore.file.commit, "os", disk)
        first = [event(entity_id=f"acct-{i % 3}") for i in range(50)]
        batch = [event(entity_id="acct-1") for _ in range(5)]
        wave1 = [asyncio.ensure_future(journal.append_event(e)) for e in first]
        wave1.append(asyncio.ensure_future(journal.append_events(batch)))
        assert await asyncio.to_thread(disk.in_write.wait, 60), "the group's write never started"
        # Appends staged while the failing write is in flight were numbered on top of it: they fail too.
        second = [event(entity_id=f"acct-{i % 3}") for i in range(20)]
        wave2 = [asyncio.ensure_future(journal.append_event(e, expected_version=None)) for e in second]
        for _ in range(1000):
            if journal.group_commit.staged == len(second):
                break
            await asyncio.sleep(0)
        assert journal.group_commit.staged == len(second)
        disk.release.set()
        results = await asyncio.gather(*wave1, *wave2, return_exceptions=True)
        monkeypatch.undo()
        assert len(results) == 71
        assert all(isinstance(r, JournalWriteError) and r.errno == errno.ENOSPC for r in results), results
        assert path.stat().st_size == size, "half a group commit was left in the file"
        assert [unstamped(e) async for e in journal.read_events(skip_corrupted=False)] == before
        # Nothing of the failed appends counts: versions, positions and keys are as before them.
        assert await journal.append_event(first[0], expected_version=4) is True  # acct-0: events 0, 3, 6, 9
        assert await journal.append_events(batch, expected_versions={"acct-1": 3}) == [True] * 5
        stored = await read_all(journal)
        assert [e.position for e in stored] == list(range(1, 17))
        assert [e.entity_version for e in stored[10:]] == [5, 4, 5, 6, 7, 8]
        for _ in range(600):
            if len(delivered) >= 16:
                break
            await asyncio.sleep(0.05)
        follower.cancel()
        assert [e.position for e in delivered] == list(range(1, 17)), "the subscriber saw a failed append"
        assert [e.idempotency_key for e in delivered] == [e.idempotency_key for e in stored]
    async with FileEventJournal(path) as reopened:
        assert reopened.torn_tail_path is None
        assert await read_all(reopened) == stored


# -- load -------------------------------------------------------------------------------------

FOLLOWER = HERE / "file_follower.py"


def percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "p999": None, "max": None}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999), "max": pick(1.0)}


async def file_load(tmp_path: Path, tasks: int, seconds: float) -> dict[str, Any]:
    """``tasks`` coroutines append for ``seconds`` to one journal, a subscriber in this process and
    one in another process follow live; afterwards everything acknowledged is checked."""
    path = tmp_path / "credits.jsonl"
    stop = tmp_path / "follower.stop"
    rng = random.Random(7)
    started: dict[str, float] = {}
    latencies: list[float] = []
    acked: list[str] = []
    delivered: list[tuple[int, str, float]] = []
    async with FileEventJournal(path) as journal:
        follower = subprocess.Popen([sys.executable, str(FOLLOWER), str(path), str(stop)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            assert follower.stdout is not None
            ready, _, _ = await asyncio.to_thread(select.select, [follower.stdout], [], [], 120)
            assert ready and follower.stdout.readline().strip() == "ready", follower.stderr
            subscriber_ready = asyncio.Event()

            async def subscriber() -> None:
                subscriber_ready.set()
                async for e in journal.subscribe():
                    delivered.append((e.position or 0, e.idempotency_key, time.perf_counter()))

            subscription = asyncio.create_task(subscriber())
            await subscriber_ready.wait()

            async def appender(number: int) -> None:
                count = 0
                while time.perf_counter() < deadline:
                    count += 1
                    e = event(payload={"task": number, "n": count, "note": "x" * rng.randint(10, 400)},
                              entity_id=f"acct-{rng.randrange(tasks * 2)}", idempotency_key=f"t{number}-{count}")
                    began = started[e.idempotency_key] = time.perf_counter()
                    assert await journal.append_event(e) is True
                    latencies.append(time.perf_counter() - began)
                    acked.append(e.idempotency_key)

            began = time.perf_counter()
            deadline = began + seconds
            await asyncio.gather(*(appender(i) for i in range(tasks)))
            elapsed = time.perf_counter() - began
            fsyncs = journal.get_metrics()["fsyncs"]
            for _ in range(1200):  # the subscriber catches up (generous: the machine is shared)
                if len(delivered) >= len(acked):
                    break
                await asyncio.sleep(0.05)
            subscription.cancel()
            stop.write_text(str(len(acked)))
            out, err = await asyncio.to_thread(follower.communicate, timeout=180)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        assert follower.returncode == 0, err
        remote = json.loads(out.strip().splitlines()[-1])
        stored = [e async for e in journal.read_events(skip_corrupted=False)]
    # Every acknowledged event stored once, in one gap-free order, with per-entity versions 1..n.
    keys = [e.idempotency_key for e in stored]
    assert sorted(keys) == sorted(acked) and len(set(keys)) == len(keys)
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    versions: Counter[str] = Counter()
    for e in stored:
        assert e.entity_id is not None
        versions[e.entity_id] += 1
        assert e.entity_version == versions[e.entity_id]
    # The live subscriber saw every event exactly once, in position order; so did the other process.
    assert [(p, k) for p, k, _ in delivered] == [(e.position, e.idempotency_key) for e in stored]
    assert remote["count"] == len(stored) and remote["in_order"] and remote["last"] == len(stored), remote
    assert remote["keys_sha256"] == hashlib.sha256("".join(k + "\n" for k in keys).encode()).hexdigest()
    return {
        "tasks": tasks, "seconds": round(elapsed, 2), "appends": len(acked),
        "appends_per_s": round(len(acked) / elapsed), "fsyncs": fsyncs,
        "events_per_fsync": round(len(acked) / max(fsyncs, 1), 1),
        "append_latency_ms": percentiles(latencies),
        "subscriber_lag_ms": percentiles([at - started[key] for _, key, at in delivered]),
        "other_process_lag_ms": remote["lag_ms"],
    }


async def test_file_load_with_live_subscribers(tmp_path: Path) -> None:
    figures = await file_load(tmp_path, tasks=16, seconds=4)
    report(tmp_path, "file-load", figures)


@pytest.mark.long
async def test_file_load_soak(tmp_path: Path) -> None:
    figures = await file_load(tmp_path, tasks=64, seconds=60)
    report(tmp_path, "file-load-soak", figures)
