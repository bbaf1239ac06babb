"""Projections: fold events into state, resuming from the latest snapshot.

A projection is a name, an initial state and a fold ``apply(state, event) -> state``.
``project`` loads the newest snapshot, replays only the events after its position, and
saves a snapshot every ``snapshot_every`` events, so a restart costs the delta, not the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from .base import BaseEventJournal
from .envelope import EventEnvelope

S = TypeVar("S")
log = logging.getLogger("eventstore.projections")


@dataclass(frozen=True)
class Projection(Generic[S]):
    """``initial`` builds a fresh state; ``apply`` folds one event into it (it may mutate and
    return the same object); ``state_type`` converts a snapshot's JSON back (default: as is)."""

    name: str
    initial: Callable[[], S]
    apply: Callable[[S, EventEnvelope], S]
    state_type: Any = None


@dataclass(frozen=True)
class ProjectionResult(Generic[S]):
    state: S
    position: int  # the last position folded in (or the snapshot's)
    events_applied: int
    snapshot_position: int | None  # where replay started from, None for a full replay
    snapshots_saved: int
    seconds: float


async def project(
    journal: BaseEventJournal,
    projection: Projection[S],
    *,
    snapshot_every: int | None = None,
    use_snapshot: bool = True,
) -> ProjectionResult[S]:
    """Bring ``projection`` up to date with ``journal``. ``use_snapshot=False`` forces a full
    replay (the reference the snapshot path must agree with)."""
    started = time.perf_counter()
    state: S = projection.initial()
    position = 0
    snapshot_position: int | None = None
    if use_snapshot:
        snapshot = await journal.load_snapshot(projection.name)
        if snapshot is not None:
            try:
                state = (
                    msgspec.convert(snapshot.state, projection.state_type)
                    if projection.state_type is not None
                    else snapshot.state
                )
                position = snapshot_position = snapshot.position
            except (msgspec.ValidationError, TypeError) as exc:
                log.warning("snapshot %r does not fit the projection (%s); full replay", projection.name, exc)
                state = projection.initial()
    applied = saved = 0
    fold = projection.apply
    async for event in journal.read_events(after=position):
        state = fold(state, event)
        position = event.position or position
        applied += 1
        if snapshot_every and applied % snapshot_every == 0:
            await journal.save_snapshot(projection.name, position, state)
            saved += 1
    return ProjectionResult(state, position, applied, snapshot_position, saved, time.perf_counter() - started)
