"""Group commit of single appends: the appends in flight on one journal share round trips.

A caller that finds an append slot free and nobody queued sends its event at once, alone (a lone
caller never waits for company: there is no timer). Callers that arrive while every slot is out
queue; the next slot to come back takes everything queued as one call of
``credit_events_append_group`` (migration 0011): one statement, one transaction and one commit
flush for all of them, with an outcome per event. So under load many events share a commit,
while each caller gets exactly what it would have got alone:

- stored: its position and version; duplicate: the original's position and version (a group
  locates duplicates for free); conflict: the entity's actual version;
- refused (a row the table refuses, e.g. an ``event_id`` stored under another key), or the whole
  group refused (a lock not granted within ``lock_timeout``, a value the table refuses): those
  events are appended again, each alone, so each caller gets the error its own event causes and
  no neighbour fails with it;
- a lost connection fails every event of that round trip with ``DatabaseUnavailableError``, as
  it fails a lone append in flight: stored or not, a retry with the same ``idempotency_key`` settles it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from .connections import Connections
from .queries import QUERIES

STORED, DUPLICATE, CONFLICT, REFUSED = "stored", "duplicate", "conflict", "refused"
#: (outcome, position, entity_version): position is None for a duplicate whose original was not located.
Outcome = tuple[str, int | None, int | None]

MAX_GROUP = 500  # events per group statement: bounds one round trip's latency and its parameter arrays

_APPEND_SQL: str = QUERIES.append_event.sql
_GROUP_SQL: str = QUERIES.append_group.sql


class GroupCommit:
    """``slots`` append round trips at a time; what arrives while all are out waits for the next
    free one and goes with everything else waiting, in arrival order."""

    def __init__(self, connections: Connections, slots: int) -> None:
        self._connections = connections
        self._free = slots
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Outcome]]] = []
        self._drains: set[asyncio.Task[None]] = set()
        self.groups = 0  # group statements sent (metrics)
        self.grouped = 0  # events they carried

    async def append(self, params: tuple[Any, ...]) -> Outcome:
        """Append one event (``event_params`` order). Raises :class:`asyncpg.PostgresError` as
        the append would alone, and the journal's errors for a lost or closed connection."""
        if self._free and not self._queue:
            self._free -= 1
            try:
                return await _alone(self._connections, params)
            finally:
                self._slot_back()
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((params, waiter))
        if self._free:
            self._free -= 1
            self._start_drain()
        return await waiter

    def _slot_back(self) -> None:
        if self._queue:
            self._start_drain()  # the slot goes on to carry what queued meanwhile
        else:
            self._free += 1

    def _start_drain(self) -> None:
        task = asyncio.ensure_future(self._drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                group = [(params, waiter) for params, waiter in group if not waiter.done()]  # callers gone
                try:
                    await self._send(group)
                except Exception as exc:  # whatever went wrong, no caller of this group waits forever
                    for _, waiter in group:
                        if not waiter.done():
                            waiter.set_exception(exc)
        except BaseException:  # cancelled (the event loop is closing): nobody will carry the rest
            for _, waiter in self._queue:
                waiter.cancel()
            self._queue = []
            raise
        finally:
            self._free += 1

    async def _send(self, group: list[tuple[tuple[Any, ...], asyncio.Future[Outcome]]]) -> None:
        if not group:
            return
        if len(group) == 1:
            params, waiter = group[0]
            await _settle(waiter, _alone(self._connections, params))
            return
        columns = [list(column) for column in zip(*(params for params, _ in group), strict=True)]
        try:
            rows = await self._connections.append_call(_GROUP_SQL, *columns, many=True)
        except asyncpg.PostgresError:
            rows = [(REFUSED, None, None)] * len(group)  # refused as a whole: each alone, below
        except Exception as exc:  # lost or closed connection: every event of this round trip is in doubt
            for _, waiter in group:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        except BaseException:
            for _, waiter in group:
                waiter.cancel()
            raise
        self.groups += 1
        self.grouped += len(group)
        refused = []
        for (params, waiter), row in zip(group, rows, strict=True):
            if row[0] == REFUSED:
                refused.append((params, waiter))
            elif not waiter.done():
                waiter.set_result((row[0], row[1], row[2]))
        for params, waiter in refused:  # after the others have their answers
            await _settle(waiter, _alone(self._connections, params))


async def _alone(connections: Connections, params: Sequence[Any]) -> Outcome:
    row = await connections.append_call(_APPEND_SQL, *params)
    if row is None:
        return DUPLICATE, None, None
    return STORED, row[0], row[1]


async def _settle(waiter: asyncio.Future[Outcome], call: Any) -> None:
    """Run ``call`` for a waiting caller and hand it the outcome or the error."""
    try:
        outcome = await call
    except Exception as exc:
        if not waiter.done():
            waiter.set_exception(exc)
        return
    except BaseException:
        if not waiter.done():
            waiter.cancel()
        raise
    if not waiter.done():
        waiter.set_result(outcome)
