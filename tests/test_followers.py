"""Followers that page with ``after=<last position seen>`` miss nothing while eight writers commit.

The follower torture test, run against both backends (CONTRACT.md, "Reads in position order never
skip"). Eight writers append single events and batches of 2-5, with and without an entity, under
two event types, now and then retrying a key already stored. PostgreSQL: each writer is its own
journal (its own pool). File: one process may write, so the writers are eight concurrent tasks on
one journal. Meanwhile followers poll the way a projection without a subscription does:

1. ``read_events(after=last)`` until exhausted, again and again;
2. ``query_events(after=last, limit=50)``;
3. ``query_events(event_type=..., after=last, limit=50)``: one type given as a string, the other
   as a list;
4. ``last_position()``, each poll followed by a read of the positions it vouches for (on
   PostgreSQL also a plain ``SELECT`` at once: the journal's own read waits for commits in flight,
   so only the raw snapshot would show a value vouching for a row not yet visible).

PostgreSQL gives every follower its own journal; the file backend runs each follower twice, on the
writer's journal and on a second, ``read_only`` journal of the same file.

After the writers stop (and every follower has read once more after that), compared with a fresh
full read: each paging follower saw every stored position (of its types) exactly once, in strictly
increasing order; ``last_position()`` never decreased, every stored position at or below a polled
value was readable at that poll (no event ever appears at or below it later), and the final value
is the highest stored position (PostgreSQL may be higher: a refused duplicate burns an id).

What it catches: a PostgreSQL reader that takes ``id > N`` literally returns N+2 while N+1 is still
uncommitted, and a follower resuming after N+2 loses N+1 for good.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from eventstore import BaseEventJournal

from .helpers import event

WRITERS = 8
PAGE = 50
TYPES = ("credits.minted", "credits.spent")
STRING_TYPE, LIST_TYPE = TYPES  # followed by query_events(event_type="...") and (event_type=["..."])
ENTITIES = 12  # shared by all writers: appends to one entity from several pools contend
GUARD = 300  # seconds per round: a hang fails the test instead of blocking the run (not a timing assertion)


@dataclass(frozen=True)
class Load:
    rounds: int
    operations: int  # appends (single or batch) per writer per round
    lanes: int  # appends each writer has in flight at once (a PostgreSQL writer's pool holds 2)


DEFAULT = Load(rounds=3, operations=150, lanes=2)
SOAK = Load(rounds=12, operations=600, lanes=2)


@dataclass
class Follower:
    """A paging follower: what it read, as (position, idempotency_key), in the order it read them."""

    name: str
    journal: BaseEventJournal
    types: tuple[str, ...] = TYPES  # the types it should see
    query: dict[str, Any] | None = None  # None: read_events; else query_events(**query, after=, limit=PAGE)
    seen: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Poll:
    after: int  # the previous polled value
    polled: int  # last_position() at this poll
    readable: frozenset[int]  # positions in (after, polled] that read_events(after=after) returned just after
    visible: frozenset[int] | None  # PostgreSQL: those a plain SELECT saw right after the poll


@dataclass
class Poller:
    name: str
    journal: BaseEventJournal
    raw: asyncpg.Connection | None = None  # PostgreSQL: a connection outside the journal
    polls: list[Poll] = field(default_factory=list)


async def pause(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, 0.002))


async def write(journal: BaseEventJournal, rng: random.Random, operations: int, tag: str, keys: list[str]) -> None:
    """``operations`` appends: single events and batches of 2-5, about half of them on an entity;
    one in twenty retries a key this lane stored before (refused, and on PostgreSQL an id burned)."""
    for n in range(operations):
        if keys and rng.random() < 0.05:
            assert await journal.append_event(event(TYPES[0], {"retry": n}, idempotency_key=rng.choice(keys))) is False
            continue
        size = 1 if rng.random() < 0.6 else rng.randint(2, 5)
        batch = [
            event(
                rng.choice(TYPES),
                {"writer": tag, "n": n, "i": i},
                entity_id=f"acct-{rng.randrange(ENTITIES)}" if rng.random() < 0.5 else None,
            )
            for i in range(size)
        ]
        if size == 1:
            assert await journal.append_event(batch[0]) is True
        else:
            assert await journal.append_events(batch) == [True] * size
        keys.extend(e.idempotency_key for e in batch)


async def write_all(writers: list[BaseEventJournal], load: Load, round_: int, written: list[list[str]],
                    done: asyncio.Event) -> None:
    """Every writer's lanes at once; ``done`` is set when every append has returned."""
    await asyncio.gather(*(
        write(writers[lane % WRITERS], random.Random(f"{round_}/{lane}"), load.operations // load.lanes,
              f"{round_}/{lane}", written[lane])
        for lane in range(WRITERS * load.lanes)
    ))
    done.set()


async def follow(follower: Follower, start: int, done: asyncio.Event, rng: random.Random) -> None:
    """Page from ``start`` until a read that began after the writers stopped comes back short."""
    last = start
    while True:
        finished = done.is_set()  # every append had returned before this read starts
        if follower.query is None:
            events = follower.journal.read_events(after=last)
        else:
            events = follower.journal.query_events(**follower.query, after=last, limit=PAGE)
        count = 0
        async with aclosing(events):
            async for e in events:
                follower.seen.append((e.position, e.idempotency_key))
                last = e.position
                count += 1
        if follower.query is None or count < PAGE:
            if finished:
                return
            await pause(rng)


async def poll(poller: Poller, start: int, done: asyncio.Event, rng: random.Random) -> None:
    """Poll ``last_position()``; after each poll read what it vouches for: (previous poll, this poll]."""
    previous = start
    while True:
        finished = done.is_set()
        polled = await poller.journal.last_position()
        assert isinstance(polled, int)
        visible = None
        if poller.raw is not None:
            rows = await poller.raw.fetch("SELECT id FROM credit_events WHERE id > $1 AND id <= $2", previous, polled)
            visible = frozenset(row["id"] for row in rows)
        readable: set[int] = set()
        async with aclosing(poller.journal.read_events(after=previous)) as events:
            async for e in events:
                if e.position > polled:
                    break
                readable.add(e.position)
        poller.polls.append(Poll(previous, polled, frozenset(readable), visible))
        previous = max(previous, polled)  # a decrease is reported at the end, with the others
        if finished:
            return
        await pause(rng)


def follower_problems(follower: Follower, stored: list[tuple[int, str, str]]) -> dict[str, Any]:
    expected = [(position, key) for position, key, event_type in stored if event_type in follower.types]
    positions = [position for position, _ in follower.seen]
    counts = Counter(positions)
    wanted = {position for position, _ in expected}
    problems = {
        "missed": sorted(wanted - counts.keys()),
        "repeated": sorted(p for p, c in counts.items() if c > 1),
        "unexpected": sorted(counts.keys() - wanted),
        "out_of_order": sum(a >= b for a, b in zip(positions, positions[1:])),
    }
    problems = {k: v for k, v in problems.items() if v}
    if not problems and follower.seen != expected:
        problems["different_events"] = sum(a != b for a, b in zip(follower.seen, expected))
    return problems


def poller_problems(poller: Poller, stored: list[tuple[int, str, str]], final: int) -> dict[str, Any]:
    positions = [position for position, _, _ in stored]
    values = [p.polled for p in poller.polls]
    late: list[int] = []  # stored at or below a polled value, but not readable at that poll
    invisible: list[int] = []  # stored at or below a polled value, but not yet committed at that poll
    for p in poller.polls:
        due = positions[bisect.bisect_right(positions, p.after):bisect.bisect_right(positions, p.polled)]
        late.extend(position for position in due if position not in p.readable)
        if p.visible is not None:
            invisible.extend(position for position in due if position not in p.visible)
    problems = {
        "decreased": [(a, b) for a, b in zip(values, values[1:]) if b < a],
        "appeared_later": sorted(late),
        "not_yet_committed": sorted(invisible),
        "last_poll_not_final": [] if values and values[-1] == final else [values[-1:], final],
    }
    return {k: v for k, v in problems.items() if v}


async def torture(request: pytest.FixtureRequest, open_journal, load: Load, primary_url: str | None = None) -> None:
    probe = await open_journal()
    postgres = probe.backend == "postgres"
    raw = await asyncpg.connect(primary_url or request.getfixturevalue("database_url")) if postgres else None
    try:
        if postgres:
            await probe.close()  # each round opens its own pools
        await rounds(open_journal, load, postgres, probe, raw)
    finally:
        if raw is not None:
            await raw.close()


async def rounds(open_journal, load: Load, postgres: bool, probe: BaseEventJournal, raw: asyncpg.Connection | None) -> None:
    start = 0
    for round_ in range(load.rounds):
        if postgres:
            writers = [await open_journal(pool_size=2) for _ in range(WRITERS)]
            readers = [await open_journal(pool_size=2) for _ in range(5)]
        else:
            if round_:
                probe = await open_journal()  # the previous round's writer was closed: reopen the file
            writers = [probe] * WRITERS
            reader = await open_journal(read_only=True)
            readers = [probe, reader] * 5  # each follower once on the writer's journal, once read-only
        followers: list[Follower] = []
        pollers: list[Poller] = []
        for i, journal in enumerate(readers):
            where = f"{journal.backend}#{i}"
            kind = i // 2 if not postgres else i
            if kind == 0:
                followers.append(Follower(f"read_events {where}", journal))
            elif kind == 1:
                followers.append(Follower(f"query_events {where}", journal, query={}))
            elif kind == 2:
                followers.append(Follower(f"query_events(event_type=str) {where}", journal, (STRING_TYPE,),
                                          {"event_type": STRING_TYPE}))
            elif kind == 3:
                followers.append(Follower(f"query_events(event_type=[...]) {where}", journal, (LIST_TYPE,),
                                          {"event_type": [LIST_TYPE]}))
            else:
                pollers.append(Poller(f"last_position {where}", journal, raw))

        done = asyncio.Event()
        written: list[list[str]] = [[] for _ in range(WRITERS * load.lanes)]
        async with asyncio.timeout(GUARD), asyncio.TaskGroup() as tasks:
            for i, f in enumerate(followers):
                tasks.create_task(follow(f, start, done, random.Random(f"{round_}/f{i}")))
            for i, p in enumerate(pollers):
                tasks.create_task(poll(p, start, done, random.Random(f"{round_}/p{i}")))
            tasks.create_task(write_all(writers, load, round_, written, done))
        for journal in {id(j): j for j in writers + readers}.values():
            await journal.close()

        check = await open_journal(read_only=True) if not postgres else await open_journal(pool_size=2)
        try:
            stored = [(e.position, e.idempotency_key, e.event_type) async for e in check.read_events(after=start)]
            final = await check.last_position()
        finally:
            await check.close()
        assert sorted(key for _, key, _ in stored) == sorted(key for lane in written for key in lane)
        assert stored and (final >= stored[-1][0] if postgres else final == stored[-1][0])
        problems = {f.name: follower_problems(f, stored) for f in followers}
        problems.update({p.name: poller_problems(p, stored, final) for p in pollers})
        problems = {name: found for name, found in problems.items() if found}
        assert problems == {}, f"round {round_ + 1} of {load.rounds}, positions {start + 1}..{final}"
        start = final


async def test_followers_miss_nothing_while_eight_writers_commit(request, open_journal):
    await torture(request, open_journal, DEFAULT)


@pytest.mark.long
async def test_followers_miss_nothing_soak(request, open_journal):
    await torture(request, open_journal, SOAK)


async def test_followers_reading_from_a_standby_miss_nothing(request, replicated_urls, delayed_standby):
    """The same torture with every follower's pages served by a streaming standby while the
    writers commit on the primary (the fence is the primary's, the standby waits for its WAL).
    The standby applies each commit 20 ms late: a reader that did not wait for it would miss
    events committed out of position order."""
    from eventstore import PostgresEventJournal

    primary_url, standby_url = replicated_urls
    delayed_standby(20)
    opened: list[PostgresEventJournal] = []

    async def open_journal(**options: Any) -> PostgresEventJournal:
        journal = PostgresEventJournal(primary_url, replica_urls=[standby_url], **{"pool_size": 4, **options})
        await journal.initialize()
        opened.append(journal)
        return journal

    try:
        await torture(request, open_journal, DEFAULT, primary_url)
    finally:
        for journal in opened:
            await journal.close()
    metrics = [journal.get_metrics() for journal in opened]
    assert sum(m["replicas"][0]["pages"] for m in metrics) > 100, metrics
    assert sum(m["replica_fallback_pages"] for m in metrics) == 0, metrics
