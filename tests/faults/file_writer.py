"""A writer *process* for the fault tests: appends to a FileEventJournal in a loop until it is
killed (or, given a stop file, until that file exists; then it closes the journal and exits 0).

    python file_writer.py JOURNAL ACKS SEED MODE [STOP_FILE]

MODE: ``mix`` (single appends, concurrent appends sharing a group commit, ``append_events``
batches, now and then a batch of 20-80 kB events), ``big`` (only batches of 100-300 kB events:
writes of megabytes, so a kill can land mid-write) or ``small`` (only small events).

Prints ``ready`` on stdout once the journal is open. The ACKS file gets, with one ``write()``
each (no buffering: what was written survives a SIGKILL of this process):

* ``B key key …`` before an ``append_events`` call: the batch that must be stored all or none;
* ``A key`` after an append of that key returned True: the acknowledgement.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from eventstore import EventEnvelope, FileEventJournal

ENTITIES = [f"acct-{i}" for i in range(8)]


class Writer:
    def __init__(self, journal: FileEventJournal, ack_fd: int, seed: str, rng: random.Random) -> None:
        self.journal = journal
        self.ack_fd = ack_fd
        self.seed = seed
        self.rng = rng
        self.n = 0
        self.last: EventEnvelope | None = None

    def event(self, size: int = 0) -> EventEnvelope:
        self.n += 1
        rng = self.rng
        entity = None if rng.random() < 0.1 else rng.choice(ENTITIES)
        payload: dict[str, object] = {"n": self.n, "amount": rng.randint(1, 100)}
        if size:
            payload["blob"] = chr(ord("a") + self.n % 26) * size
        return EventEnvelope.new(
            "credits.minted", payload, actor_id="fault-writer", entity_id=entity,
            idempotency_key=f"{self.seed}-{self.n}",
        )

    def ack(self, keys: list[str]) -> None:
        if keys:
            os.write(self.ack_fd, "".join(f"A {k}\n" for k in keys).encode())

    async def single(self) -> None:
        for _ in range(self.rng.randint(1, 8)):
            if self.last is not None and self.rng.random() < 0.1:
                await self.journal.append_event(self.last)  # a retry of a stored event: refused
                continue
            e = self.event()
            if await self.journal.append_event(e):
                self.ack([e.idempotency_key])
            self.last = e

    async def one(self, e: EventEnvelope) -> None:
        if await self.journal.append_event(e):
            self.ack([e.idempotency_key])

    async def batch(self, count: int, size: int = 0) -> None:
        events = [self.event(size) for _ in range(count)]
        os.write(self.ack_fd, ("B " + " ".join(e.idempotency_key for e in events) + "\n").encode())
        flags = await self.journal.append_events(events)
        self.ack([e.idempotency_key for e, stored in zip(events, flags, strict=True) if stored])

    async def concurrent(self) -> None:
        # Several tasks in one loop iteration: they share one write and one fsync (group commit);
        # a batch among them goes into the same flush.
        tasks = [self.one(self.event()) for _ in range(self.rng.randint(4, 32))]
        if self.rng.random() < 0.5:
            tasks.append(self.batch(self.rng.randint(2, 10)))
        await asyncio.gather(*tasks)

    async def big(self) -> None:
        await self.batch(self.rng.randint(3, 8), self.rng.randint(100_000, 300_000))

    async def medium(self) -> None:
        await self.batch(self.rng.randint(2, 4), self.rng.randint(20_000, 80_000))


async def main(path: str, ack_path: str, seed: str, mode: str, stop_path: str | None) -> None:
    rng = random.Random(seed)
    ack_fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    journal = FileEventJournal(path)
    await journal.initialize()
    print("ready", flush=True)
    writer = Writer(journal, ack_fd, seed, rng)
    if mode == "big":
        steps = [writer.big]
    elif mode == "small":
        steps = [writer.single, writer.concurrent, lambda: writer.batch(rng.randint(2, 20))]
    else:
        steps = [writer.single, writer.concurrent, lambda: writer.batch(rng.randint(2, 20))] * 4 + [writer.medium]
    while stop_path is None or not os.path.exists(stop_path):
        await rng.choice(steps)()
    await journal.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None))
