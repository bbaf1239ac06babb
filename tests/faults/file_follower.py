"""A reader *process* for the load test: follows a FileEventJournal read-only with subscribe()
until STOP_FILE holds the number of events to expect and it has seen that many (or the file
says 0), then prints one JSON line: count, whether positions came 1, 2, 3 … and the lag between
each event's timestamp (set just before its append) and its delivery here.

    python file_follower.py JOURNAL STOP_FILE
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

from eventstore import FileEventJournal


async def main(path: str, stop_path: str) -> None:
    journal = FileEventJournal(path, read_only=True)
    await journal.initialize()
    lags: list[float] = []
    state = {"count": 0, "last": 0, "in_order": True}
    keys = hashlib.sha256()

    async def follow() -> None:
        async for e in journal.subscribe():
            lags.append(time.time() - e.timestamp.timestamp())
            assert e.position is not None
            state["in_order"] = bool(state["in_order"]) and e.position == state["last"] + 1
            state["last"] = e.position
            state["count"] += 1
            keys.update(e.idempotency_key.encode() + b"\n")

    task = asyncio.create_task(follow())
    print("ready", flush=True)
    deadline = None
    while True:
        await asyncio.sleep(0.05)
        if deadline is None and os.path.exists(stop_path):
            deadline = time.monotonic() + 120
        if deadline is not None:
            text = open(stop_path).read().strip()
            if text and (state["count"] >= int(text) or time.monotonic() > deadline):
                break
    task.cancel()
    await journal.close()
    lags.sort()
    pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 2)) if lags else (lambda q: None)
    print(json.dumps({**state, "keys_sha256": keys.hexdigest(), "lag_ms": {"p50": pick(0.5), "p99": pick(0.99),
                                                                         "max": pick(1.0)}}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
