"""A consumer *process* for the exactly-once crash test (test_exactly_once.py): it reads source
events, derives events from them and stores the derived events together with its checkpoint in
one atomic ``append_many(..., checkpoint=(NAME, position))``, until it has consumed the source
event numbered LAST; then it closes its journals and exits 0. The test SIGKILLs it at random
moments and starts it again, and again.

    python consumer_process.py file SOURCE.jsonl DEST.jsonl NAME LAST SEED [PACE]
    python consumer_process.py postgres URL URL NAME LAST SEED [PACE]

file: the source journal is opened read-only (the test process is its writer) and the derived
events go to DEST, a second journal this process owns as writer. postgres: source and derived
events live in the same database, so reading skips every event type that is not a source type.

Source events carry ``payload["n"]``: 1, 2, 3 … in position order. ``orders.placed`` n derives
``n % 3 + 1`` events ``orders.derived`` with payload ``{"source": n, "k": k}``; ``orders.viewed``
derives nothing. Sources are handled in small groups whose ends depend only on n and SEED (so a
restarted consumer forms the same groups): one ``append_many`` per group, checkpointed at the
group's last source position; a group of ``orders.viewed`` only is a checkpoint-only write.
Every derived event has a fresh random idempotency_key: keys cannot hide a repeat, only the
atomic checkpoint can make the processing exactly-once.

Prints, one line each, flushed (the test reads them): ``ready CHECKPOINT`` once the journals are
open; ``A POSITION COUNT`` before an append_many, ``C POSITION N`` after it returned; ``conflict
STORED GIVEN`` on CheckpointConflictError (an earlier incarnation's in-flight commit landed after
this one read the checkpoint: resume from the stored one); ``done CHECKPOINT`` before exiting 0.
A broken invariant (a skipped or repeated source, a checkpoint not read back) exits 3 with the
reason on stderr. PACE (default 0.01) bounds the random pause after each group, in seconds.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from typing import Any

from eventstore import BaseEventJournal, CheckpointConflictError, EventEnvelope, FileEventJournal

PLACED = "orders.placed"
VIEWED = "orders.viewed"
SOURCE_TYPES = (PLACED, VIEWED)
DERIVED = "orders.derived"
ACTOR = "exactly-once-consumer"
PAGE = 50  # events per read_events call: no cursor is held open across appends


def source_type(n: int) -> str:
    """The type of source event n (the test writes these): every fifth derives nothing."""
    return VIEWED if n % 5 == 0 else PLACED


def derived_count(event_type: str, n: int) -> int:
    return n % 3 + 1 if event_type == PLACED else 0


def group_ends_at(n: int, last: int, seed: str) -> bool:
    """Whether a group of sources ends with source n; depends only on (n, last, seed). n % 5 == 4
    and n % 5 == 0 always end one, so each source ``orders.viewed`` is a group of its own (a
    checkpoint-only write); otherwise groups of 1-4 sources, at random."""
    return n == last or n % 5 in (0, 4) or random.Random(f"{seed}:{n}").random() < 0.4


def derive(source: EventEnvelope) -> list[EventEnvelope]:
    n = source.payload["n"]
    return [
        EventEnvelope.new(
            DERIVED, {"source": n, "k": k}, actor_id=ACTOR, entity_id=f"derived-{n % 7}",
            idempotency_key=str(uuid.uuid4()),  # fresh on every attempt: no key can hide a repeat
            correlation_id=source.correlation_id, causation_id=source.event_id,
        )
        for k in range(derived_count(source.event_type, n))
    ]


class Broken(Exception):
    """An invariant the consumer relies on does not hold: exit 3."""


def say(*words: Any) -> None:
    print(*words, flush=True)


async def page(journal: BaseEventJournal, after: int) -> list[EventEnvelope]:
    """Up to PAGE events after ``after``; the read is closed before anything is appended."""
    events = journal.read_events(after=after)
    found: list[EventEnvelope] = []
    try:
        async for e in events:
            found.append(e)
            if len(found) >= PAGE:
                break
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return found


async def source_at(src: BaseEventJournal, position: int) -> EventEnvelope:
    """The event a checkpoint points at: it must be a source event that ends a group."""
    found = await page(src, position - 1)
    if not found or found[0].position != position or found[0].event_type not in SOURCE_TYPES:
        raise Broken(f"checkpoint {position} is not the position of a source event: {found[:1]}")
    return found[0]


async def consume(src: BaseEventJournal, dest: BaseEventJournal, name: str, last: int, seed: str,
                  pace: float, rng: random.Random) -> None:
    while True:  # once per CheckpointConflictError
        position = await dest.checkpoint(name) or 0
        next_n = 1
        if position:
            at = await source_at(src, position)
            if not group_ends_at(at.payload["n"], last, seed):
                raise Broken(f"checkpoint {position} is source n={at.payload['n']}, which ends no group")
            next_n = at.payload["n"] + 1
        say("ready", position)
        if next_n > last:
            break
        if await follow(src, dest, name, last, seed, pace, rng, position, next_n):
            break
    say("done", await dest.checkpoint(name))


async def follow(src: BaseEventJournal, dest: BaseEventJournal, name: str, last: int, seed: str, pace: float,
                 rng: random.Random, position: int, next_n: int) -> bool:
    """Consume from ``position`` until source ``last`` is checkpointed (True) or a checkpoint
    conflict says to start over from the stored checkpoint (False)."""
    cursor = position  # the last position read; sources after the checkpoint wait in `pending`
    pending: list[EventEnvelope] = []
    while True:
        events = await page(src, cursor)
        if not events:
            await asyncio.sleep(0.01)  # the source has nothing new yet
            continue
        for e in events:
            if e.position <= cursor:
                raise Broken(f"read_events(after={cursor}) returned position {e.position}")
            cursor = e.position
            if e.event_type not in SOURCE_TYPES:
                continue  # postgres: this consumer's own derived events, between the sources
            n = e.payload["n"]
            if n != next_n:
                raise Broken(f"expected source n={next_n} after position {position}, read n={n} at {e.position}")
            next_n += 1
            pending.append(e)
            if not group_ends_at(n, last, seed):
                continue
            derived = [d for s in pending for d in derive(s)]
            say("A", e.position, len(derived))
            try:
                appended = await dest.append_many(derived, checkpoint=(name, e.position))
            except CheckpointConflictError as exc:
                say("conflict", exc.stored, exc.given)
                if exc.name != name or exc.given != e.position or exc.stored < exc.given:
                    raise Broken(f"a CheckpointConflictError that does not fit: {exc!r}") from exc
                return False
            say("C", e.position, n)
            if len(appended) != len(derived) or not all(a.stored for a in appended):
                raise Broken(f"append_many of {len(derived)} fresh events answered {appended}")
            if [a.position for a in appended] != sorted({a.position for a in appended}):
                raise Broken(f"append_many positions not increasing: {appended}")
            if rng.random() < 0.2 and (stored := await dest.checkpoint(name)) != e.position:
                raise Broken(f"checkpoint({name!r}) is {stored} right after append_many stored {e.position}")
            position = e.position
            pending = []
            if n == last:
                return True
            await asyncio.sleep(rng.uniform(0, pace))


async def main(backend: str, source: str, dest_where: str, name: str, last: int, seed: str, pace: float) -> None:
    rng = random.Random()  # pauses differ between incarnations, so kills land at new places
    if backend == "file":
        src: BaseEventJournal = FileEventJournal(source, read_only=True)
        dest: BaseEventJournal = FileEventJournal(dest_where)
        await src.initialize()
        await dest.initialize()
        journals = [src, dest]
    elif backend == "postgres":
        from eventstore import PostgresEventJournal

        if source != dest_where:
            raise SystemExit("postgres: source and destination are one database (give the same URL twice)")
        src = dest = PostgresEventJournal(source, pool_size=2, max_overflow=2)
        await src.initialize()
        journals = [src]
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    try:
        await consume(src, dest, name, last, seed, pace, rng)
    finally:
        for journal in journals:
            await journal.close()


if __name__ == "__main__":
    if len(sys.argv) not in (7, 8):
        raise SystemExit(__doc__)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6],
                         float(sys.argv[7]) if len(sys.argv) > 7 else 0.01))
    except Broken as broken:
        print(f"BROKEN: {broken}", file=sys.stderr, flush=True)
        sys.exit(3)
