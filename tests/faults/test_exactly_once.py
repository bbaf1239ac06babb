"""Exactly-once consumers (contract 0.2, checkpoints): a consumer *process*
(consumer_process.py) derives events from a source journal and stores them with its checkpoint in
one ``append_many(..., checkpoint=...)``; it is SIGKILLed at random moments and restarted until
it has consumed every source event, while this process keeps appending source events. Then the
destination must hold, for every source event, exactly the events derived from it: each derived
event has a fresh random idempotency_key, so only the atomic checkpoint can prevent a repeat.

file: the source is a JSONL journal this process writes (the consumer reads it read-only), the
derived events and the checkpoint go to a second journal the consumer owns. postgres: one
database holds both; the consumer skips its own derived events when reading, and a killed
consumer's commit may still land after its successor read the checkpoint (the successor then
gets CheckpointConflictError and resumes from the stored checkpoint).

Figures go to stdout (``pytest -s``) and to a JSON file in the test's tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

import eventstore
from eventstore import (
    BaseEventJournal,
    CheckpointConflictError,
    ConcurrencyError,
    EventEnvelope,
    FileEventJournal,
    PostgresEventJournal,
)

from ..helpers import event, read_all
from .consumer_process import ACTOR, DERIVED, SOURCE_TYPES, derived_count, source_type

HERE = Path(__file__).resolve().parent
CONSUMER = HERE / "consumer_process.py"
NAME = "orders-deriver"
GUARD = 120  # seconds: liveness bound for anything that could hang (not a timing assertion)


def consumer_env() -> dict[str, str]:
    """The consumer imports the same eventstore package as this test process."""
    package_root = str(Path(eventstore.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "EVENT_JOURNAL_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return env


def source_event(n: int) -> EventEnvelope:
    return EventEnvelope.new(source_type(n), {"n": n}, actor_id="exactly-once-test", entity_id=f"order-{n % 11}",
                             idempotency_key=f"source-{n}")


# -- the two stores ----------------------------------------------------------------------------


class Stores:
    """Where the sources are written (by this process) and where the consumer's output is read."""

    backend: str

    async def open(self) -> None: ...
    async def append_sources(self, events: list[EventEnvelope]) -> None: ...
    def consumer_args(self) -> list[str]: ...
    async def sources(self) -> list[EventEnvelope]: ...
    def destination(self) -> contextlib.AbstractAsyncContextManager[BaseEventJournal]: ...  # type: ignore[empty-body]
    async def close(self) -> None: ...


class FileStores(Stores):
    backend = "file"

    def __init__(self, tmp_path: Path) -> None:
        self.source_path = tmp_path / "source" / "orders.jsonl"
        self.dest_path = tmp_path / "derived" / "derived.jsonl"
        self.writer = FileEventJournal(self.source_path)

    async def open(self) -> None:
        await self.writer.initialize()

    async def append_sources(self, events: list[EventEnvelope]) -> None:
        assert await self.writer.append_events(events) == [True] * len(events)

    def consumer_args(self) -> list[str]:
        return ["file", str(self.source_path), str(self.dest_path)]

    async def sources(self) -> list[EventEnvelope]:
        return await read_all(self.writer)

    @contextlib.asynccontextmanager
    async def destination(self) -> AsyncIterator[BaseEventJournal]:
        async with FileEventJournal(self.dest_path) as journal:  # the consumer has exited: the lock is free
            yield journal

    async def close(self) -> None:
        await self.writer.close()


class PostgresStores(Stores):
    backend = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.journal = PostgresEventJournal(url, pool_size=2, max_overflow=2)

    async def open(self) -> None:
        await self.journal.initialize()

    async def append_sources(self, events: list[EventEnvelope]) -> None:
        assert await self.journal.append_events(events) == [True] * len(events)

    def consumer_args(self) -> list[str]:
        return ["postgres", self.url, self.url]

    async def sources(self) -> list[EventEnvelope]:
        return [e async for e in self.journal.read_events() if e.event_type in SOURCE_TYPES]

    @contextlib.asynccontextmanager
    async def destination(self) -> AsyncIterator[BaseEventJournal]:
        yield self.journal

    async def close(self) -> None:
        await self.journal.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Figures:
    backend: str
    seed: int
    sources: int = 0
    derived: int = 0
    checkpoint_only_groups: int = 0
    starts: int = 0
    kills: int = 0
    kills_with_progress: int = 0  # the killed incarnation had stored at least one group
    in_doubt: int = 0  # killed after "A" and before "C": the append_many was in flight
    in_doubt_landed: int = 0  # … and its successor found that checkpoint stored
    conflicts: int = 0  # CheckpointConflictError seen by a consumer (postgres: a late commit of a killed one)
    seconds: float = 0.0
    checkpoints_at_start: list[int] = field(default_factory=list)


class Incarnation:
    """One consumer process and the lines it printed."""

    def __init__(self, process: asyncio.subprocess.Process, feed: Feeder) -> None:
        self.process = process
        self.feed = feed
        self.lines: list[list[str]] = []
        self.ready = asyncio.Event()
        self.attempt = asyncio.Event()  # set at each "A" line: an append_many has just begun
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            words = raw.decode().split()
            if not raw.endswith(b"\n") or not words:
                continue  # a line cut by the kill
            self.lines.append(words)
            if words[0] == "ready":
                self.ready.set()
            elif words[0] == "A":
                self.attempt.set()
            elif words[0] == "C":
                self.feed.progress(int(words[2]))

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                self.process.kill()

    def words(self, kind: str) -> list[list[str]]:
        return [w for w in self.lines if w[0] == kind]

    def unanswered(self) -> int | None:
        """The checkpoint of an append_many still in flight when the process died, if any."""
        pending = None
        for words in self.lines:
            if words[0] == "A":
                pending = int(words[1])
            elif words[0] in ("C", "conflict"):
                pending = None
        return pending


async def start_consumer(stores: Stores, feed: Feeder, last: int, seed: int, pace: float, stderr: Any) -> Incarnation:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CONSUMER), *stores.consumer_args(), NAME, str(last), str(seed), str(pace),
        stdout=asyncio.subprocess.PIPE, stderr=stderr, env=consumer_env(), cwd=str(HERE),
    )
    return Incarnation(process, feed)


def stderr_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Feeder:
    """Appends source events in small batches while the consumers run, keeping ``LEAD`` sources
    ahead of what the consumer has checkpointed (so a kill rarely finds it idle) but holding the
    last ``HOLD`` back until ``min_kills`` kills (so it cannot finish before)."""

    LEAD = 100
    HOLD = 5

    def __init__(self, stores: Stores, total: int, min_kills: int, rng: random.Random) -> None:
        self.stores = stores
        self.total = total
        self.min_kills = min_kills
        self.rng = rng
        self.written = 0
        self.consumed = 0  # the highest source n a consumer saw checkpointed
        self.kills = 0
        self.more = asyncio.Event()

    def allowed(self) -> int:
        if self.kills >= self.min_kills:
            return self.total
        return min(self.total - self.HOLD, self.consumed + self.LEAD)

    def progress(self, consumed: int) -> None:
        self.consumed = max(self.consumed, consumed)
        self.more.set()

    def killed(self, kills: int) -> None:
        self.kills = kills
        self.more.set()

    async def run(self) -> None:
        while self.written < self.total:
            if self.written >= self.allowed():
                self.more.clear()
                await self.more.wait()
                continue
            end = min(self.written + self.rng.randint(1, 5), self.allowed())
            await self.stores.append_sources([source_event(n) for n in range(self.written + 1, end + 1)])
            self.written = end
            await asyncio.sleep(self.rng.uniform(0, 0.005))


async def one_incarnation(consumer: Incarnation, figures: Figures, rng: random.Random, acked: int,
                          in_flight: int | None, stderr_path: Path, *, kill: bool) -> int:
    """Waits for the consumer's ``ready``, checks the checkpoint it starts from, then (``kill``)
    SIGKILLs it after a random delay unless it exits first, more often than not only once it has said
    that an append_many begins (so that many kills land while one is in flight); returns its exit
    status (0 or -9)."""
    ready = asyncio.create_task(consumer.ready.wait())
    await asyncio.wait({ready, asyncio.create_task(consumer.process.wait())}, timeout=GUARD,
                       return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if not consumer.ready.is_set():
        raise AssertionError(f"the consumer never said ready (exit {consumer.process.returncode}): "
                             f"{stderr_tail(stderr_path)}")
    start = int(consumer.lines[0][1])
    figures.checkpoints_at_start.append(start)
    assert start >= acked, f"checkpoint {acked} was acknowledged, a restart found {start}"
    if in_flight is not None:
        figures.in_doubt += 1
        figures.in_doubt_landed += start >= in_flight
    try:
        await asyncio.wait_for(consumer.process.wait(), rng.uniform(0.05, 0.5) if kill else GUARD)
    except TimeoutError:
        if not kill:
            raise AssertionError(f"the consumer did not finish within {GUARD} s") from None
        if rng.random() < 0.75:  # aimed: right after the consumer says an append_many begins
            consumer.attempt.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.attempt.wait(), 0.3)
            # A file append can take well under a millisecond here, less than one turn of the
            # event loop's timer: spin (blocking this loop for < 1 ms) to spread the kills over it.
            until = time.perf_counter() + rng.choice([0, rng.uniform(0, 0.001)])
            while time.perf_counter() < until:
                pass
        consumer.kill()  # it may have exited meanwhile (0: done)
    code = await consumer.process.wait()
    await asyncio.wait_for(consumer.reader, GUARD)
    figures.conflicts += len(consumer.words("conflict"))
    figures.checkpoint_only_groups += sum(w[2] == "0" for w in consumer.words("A"))
    if code == 0:
        assert consumer.words("done"), "exit 0 without saying done"
    else:
        assert code == -9, f"the consumer failed (exit {code}): {stderr_tail(stderr_path)}"
    return code


async def run_with_kills(stores: Stores, tmp_path: Path, *, total: int, min_kills: int, max_kills: int,
                         seed: int, pace: float = 0.01) -> Figures:
    """Start, SIGKILL at a random moment, restart … until the consumer exits 0 having consumed
    source ``total`` (written meanwhile by a Feeder); after ``max_kills`` kills the consumer is
    left to finish."""
    figures = Figures(backend=stores.backend, seed=seed, sources=total)
    rng = random.Random(seed)
    stderr_path = tmp_path / "consumer.stderr"
    began = time.monotonic()
    feed = Feeder(stores, total, min_kills, rng)
    feed.written = feed.LEAD // 2  # some up front, the rest while the consumer runs
    await stores.append_sources([source_event(n) for n in range(1, feed.written + 1)])
    feeder = asyncio.create_task(feed.run())
    acked = 0  # the highest checkpoint an incarnation saw append_many return for
    in_flight: int | None = None  # the killed incarnation's unanswered append_many
    try:
        with stderr_path.open("ab") as stderr:
            while True:
                assert time.monotonic() - began < GUARD * 4, f"the consumer never finished: {figures}"
                if feeder.done():
                    feeder.result()  # raise a failed append of sources here
                consumer = await start_consumer(stores, feed, total, seed, pace, stderr)
                figures.starts += 1
                try:
                    code = await one_incarnation(consumer, figures, rng, acked, in_flight, stderr_path,
                                                 kill=figures.kills < max_kills)
                finally:
                    consumer.kill()
                    await consumer.process.wait()
                if (answered := consumer.words("C")):
                    acked = max(acked, int(answered[-1][1]))
                if code == 0:
                    break
                figures.kills += 1
                figures.kills_with_progress += bool(answered)
                in_flight = consumer.unanswered()
                feed.killed(figures.kills)
        await asyncio.wait_for(feeder, GUARD)
    finally:
        feeder.cancel()
    figures.seconds = round(time.monotonic() - began, 2)
    return figures


# -- the checks -------------------------------------------------------------------------------


async def check_destination(stores: Stores, figures: Figures) -> None:
    sources = await stores.sources()
    assert [s.payload["n"] for s in sources] == list(range(1, figures.sources + 1)), "the sources themselves"
    by_n = {s.payload["n"]: s for s in sources}
    async with stores.destination() as dest:
        stored = await read_all(dest)
        assert [e.position for e in stored] == sorted({e.position for e in stored})
        derived = [e for e in stored if e.event_type == DERIVED]
        foreign = [e for e in stored if e.event_type != DERIVED and e.event_type not in SOURCE_TYPES]
        assert not foreign, f"events that are neither source nor derived: {foreign[:3]}"
        if stores.backend == "file":
            assert len(derived) == len(stored), "the destination journal holds only derived events"

        # Exactly the expected derived events: per source n, k = 0 .. n % 3 once each, and no other.
        ks: dict[int, list[int]] = defaultdict(list)
        for d in derived:
            ks[d.payload["source"]].append(d.payload["k"])
        unknown = sorted(set(ks) - set(by_n))
        assert not unknown, f"derived events for unknown sources {unknown[:10]}"
        wrong = {n: sorted(ks.get(n, [])) for n, s in by_n.items()
                 if sorted(ks.get(n, [])) != list(range(derived_count(s.event_type, n)))}
        repeated = sorted(n for n, got in wrong.items() if len(got) > derived_count(by_n[n].event_type, n))
        missing = sorted(n for n, got in wrong.items() if len(got) < derived_count(by_n[n].event_type, n))
        assert not wrong, (f"{len(repeated)} sources derived more than once (e.g. {repeated[:10]}), "
                           f"{len(missing)} not at all (e.g. {missing[:10]}): {dict(list(wrong.items())[:5])} {figures}")
        assert len(derived) == sum(derived_count(s.event_type, n) for n, s in by_n.items())
        assert len({d.idempotency_key for d in derived}) == len(derived)
        for d in derived:
            source = by_n[d.payload["source"]]
            assert d.causation_id == source.event_id and d.correlation_id == source.correlation_id
            assert d.actor_id == ACTOR and d.entity_id == f"derived-{source.payload['n'] % 7}"
        # Sources were consumed in order, once: their derived events come in source order.
        order = [d.payload["source"] for d in derived]
        assert order == sorted(order), "derived events out of source order: a source was consumed twice"
        versions: dict[str, int] = Counter()
        for d in derived:
            versions[d.entity_id] += 1  # type: ignore[index]
            assert d.entity_version == versions[d.entity_id]

        last_position = sources[-1].position
        assert await dest.checkpoint(NAME) == last_position
        figures.derived = len(derived)
        await check_refused_checkpoints(dest, NAME, last_position)


async def check_refused_checkpoints(dest: BaseEventJournal, name: str, stored: int) -> None:
    """A checkpoint at or below the stored one raises CheckpointConflictError and writes nothing:
    neither the checkpoint nor the batch's events."""
    assert issubclass(CheckpointConflictError, ConcurrencyError)
    before = await read_all(dest)
    tail = before[-1].position if before else 0
    probes = [event(DERIVED, {"source": -1, "k": k}, actor_id=ACTOR) for k in range(3)]
    for given in sorted({stored, stored - 1, 1} - {0}, reverse=True):
        for batch in (probes, []):
            with pytest.raises(CheckpointConflictError) as info:
                await dest.append_many(batch, checkpoint=(name, given))
            assert isinstance(info.value, ConcurrencyError)
            assert (info.value.name, info.value.stored, info.value.given) == (name, stored, given)
    assert await dest.checkpoint(name) == stored
    assert await read_all(dest, after=tail) == [], "a refused append_many stored events"
    assert len(await read_all(dest)) == len(before)
    # The refused events were never stored: the same keys go in now, under another checkpoint name.
    other = f"{name}-other"
    assert await dest.checkpoint(other) is None
    appended = await dest.append_many(probes, checkpoint=(other, 1))
    assert [a.stored for a in appended] == [True] * 3
    assert (await dest.checkpoint(other), await dest.checkpoint(name)) == (1, stored)


# -- tests ------------------------------------------------------------------------------------


def report(tmp_path: Path, name: str, figures: Figures) -> None:
    data = asdict(figures)
    starts = data.pop("checkpoints_at_start")
    print(f"\n{name}: " + json.dumps(data))
    (tmp_path / f"{name}.json").write_text(json.dumps({**data, "checkpoints_at_start": starts}, indent=2))


async def exactly_once(stores: Stores, tmp_path: Path, *, total: int, min_kills: int, max_kills: int) -> Figures:
    seed = int(os.environ.get("EXACTLY_ONCE_SEED", time.time()))
    await stores.open()
    try:
        figures = await run_with_kills(stores, tmp_path, total=total, min_kills=min_kills, max_kills=max_kills,
                                       seed=seed)
        try:
            await check_destination(stores, figures)
        finally:
            report(tmp_path, f"exactly-once-{stores.backend}", figures)
    finally:
        await stores.close()
    assert figures.kills >= min_kills, figures
    assert figures.kills_with_progress >= min_kills // 3, f"most kills landed before any work: {figures}"
    assert figures.checkpoint_only_groups >= 1, figures
    assert figures.checkpoints_at_start == sorted(figures.checkpoints_at_start), "a checkpoint moved back"
    if stores.backend == "file":
        assert figures.conflicts == 0, "one writer at a time: no incarnation can commit after its successor started"
    return figures


@pytest.fixture(params=["file", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    if request.param == "postgres":
        return PostgresStores(request.getfixturevalue("database_url"))
    return FileStores(tmp_path)


async def test_sigkilled_consumer_derives_each_event_exactly_once(stores: Stores, tmp_path: Path) -> None:
    await exactly_once(stores, tmp_path, total=600, min_kills=12, max_kills=36)


@pytest.mark.long
async def test_sigkilled_consumer_exactly_once_soak(stores: Stores, tmp_path: Path) -> None:
    await exactly_once(stores, tmp_path, total=4000, min_kills=60, max_kills=200)


async def test_checkpoint_moves_only_forward_and_a_refused_batch_writes_nothing(journal: BaseEventJournal) -> None:
    """In process, on a fresh journal of each backend. A checkpoint's position is the consumer's
    (of another journal, possibly): it need not be a position of this journal."""
    assert await journal.checkpoint(NAME) is None
    first = [event(DERIVED, {"source": 1, "k": 0}, actor_id=ACTOR)]
    assert [a.stored for a in await journal.append_many(first, checkpoint=(NAME, 5))] == [True]
    assert await journal.checkpoint(NAME) == 5
    await check_refused_checkpoints(journal, NAME, 5)
    assert await journal.append_many([], checkpoint=(NAME, 1000)) == []  # a checkpoint alone, ahead of the journal
    assert await journal.checkpoint(NAME) == 1000
    assert [e.payload for e in await read_all(journal)] == [{"source": 1, "k": 0}] + [{"source": -1, "k": k} for k in range(3)]
