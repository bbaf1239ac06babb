"""eventsourcing's recorders over one eventstore journal.

- :class:`EventstoreAggregateRecorder` / :class:`EventstoreApplicationRecorder`: records are the
  journal's events; a notification id is a position (so notifications never skip, by the fence).
- :class:`EventstoreTrackingRecorder` / :class:`EventstoreProcessRecorder`: tracking is the
  journal's checkpoints, stored in the same atomic write as the events a process records.
- :class:`EventstoreSnapshotRecorder`: snapshots are the journal's snapshots, the newest per aggregate.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from ...envelope import EventEnvelope
from ...errors import EventStoreError
from .mapping import decode_state, persistence_error, state_fields
from .store import SNAPSHOT_PREFIX, JournalStore

PAGE = 500  # notifications handed to a subscriber's thread per hop


class EventstoreAggregateRecorder(AggregateRecorder):
    """Aggregate records as journal events (``insert_events`` returns no notification ids)."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events, None)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        checkpoint = None if tracking is None else (tracking.application_name, tracking.notification_id)
        if not stored_events and checkpoint is None:
            return []
        return [where.position for where in self.store.run(self.store.insert(stored_events, checkpoint))]

    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self.store.run(self.store.select_events(originator_id, gt, lte, desc, limit))


class EventstoreApplicationRecorder(EventstoreAggregateRecorder, ApplicationRecorder):
    """The application sequence is the journal's position order."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, None)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        after = 0 if start is None else max(start - 1 if inclusive_of_start else start, 0)
        if limit < 1 or (stop is not None and stop <= after):
            return []
        return self.store.run(self.store.select_notifications(after, limit, stop, topics))

    def max_notification_id(self) -> int | None:
        """The journal's settled high-water mark: no notification will appear at or below it later."""
        return self.store.run(self.store.max_position())

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return JournalSubscription(self, gt=gt, topics=topics)


class EventstoreTrackingRecorder(TrackingRecorder):
    """Tracking records as checkpoints: one per upstream application, only moving forward."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store

    def insert_tracking(self, tracking: Tracking) -> None:
        checkpoint = (tracking.application_name, tracking.notification_id)
        self.store.run(self.store.sync.journal.append_many([], checkpoint=checkpoint))

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.store.run(self.store.sync.journal.checkpoint(application_name))


class EventstoreProcessRecorder(EventstoreApplicationRecorder, EventstoreTrackingRecorder, ProcessRecorder):
    """An application recorder whose inserts may carry the tracking of what they processed."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"))


class EventstoreSnapshotRecorder(AggregateRecorder):
    """Snapshots in the journal's snapshot store, which keeps the newest of each aggregate. A
    snapshot older than the stored one, or a different one at its version, is refused
    (``IntegrityError``; the same one again is accepted); one asked for below the newest is not
    found, and the aggregate is then replayed from its first event."""

    def __init__(self, store: JournalStore) -> None:
        self.store = store

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        for stored in stored_events:
            self.store.run(self._save(stored))
        return None

    async def _save(self, stored: StoredEvent) -> None:
        journal = self.store.sync.journal
        name = SNAPSHOT_PREFIX + str(stored.originator_id)
        version = stored.originator_version
        state = {"topic": stored.topic, **state_fields(stored.state)}
        await journal.save_snapshot(name, version, state)
        kept = await journal.load_snapshot(name)
        if kept is None or kept.position != version or kept.state != state:
            raise IntegrityError(f"a snapshot of {stored.originator_id} at version {kept and kept.position} is already stored")

    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        snapshot = self.store.run(self.store.sync.journal.load_snapshot(SNAPSHOT_PREFIX + str(originator_id)))
        if snapshot is None or limit == 0:
            return []
        version = snapshot.position
        if (gt is not None and version <= gt) or (lte is not None and version > lte):
            return []
        state = decode_state(snapshot.state)
        if state is None:
            raise DataError(f"the snapshot {SNAPSHOT_PREFIX}{originator_id} was not written by EventstoreSnapshotRecorder")
        return [StoredEvent(originator_id, version, snapshot.state["topic"], state)]


class JournalSubscription(Subscription[ApplicationRecorder]):
    """Notifications after ``gt`` as the journal's ``subscribe`` delivers them (never skipping or
    repeating), filtered by topic, handed to the iterating thread a page at a time."""

    def __init__(self, recorder: EventstoreApplicationRecorder, gt: int | None, topics: Sequence[str]) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._store = recorder.store
        self._loop = self._store.sync.loop
        self._buffer: collections.deque[EventEnvelope | BaseException] = collections.deque()
        self._queue: asyncio.Queue[EventEnvelope | BaseException] = asyncio.Queue(PAGE)
        self._waiting: concurrent.futures.Future[list[EventEnvelope | BaseException]] | None = None
        self._follower = asyncio.run_coroutine_threadsafe(self._follow(gt or 0, frozenset(topics)), self._loop)

    async def _follow(self, after: int, topics: frozenset[str]) -> None:
        try:
            async with contextlib.aclosing(self._store.sync.journal.subscribe(after=after)) as events:
                async for event in events:
                    if not topics or event.event_type in topics:
                        await self._queue.put(event)
        except Exception as exc:  # handed to the iterating thread, which raises it
            await self._queue.put(exc)

    async def _take(self) -> list[EventEnvelope | BaseException]:
        items = [await self._queue.get()]
        while len(items) < PAGE and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def __next__(self) -> Notification:
        while not self._buffer and not self._has_been_stopped:
            self._waiting = asyncio.run_coroutine_threadsafe(self._take(), self._loop)
            if self._has_been_stopped:  # stopped while the hop was being sent
                self._waiting.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                self._buffer.extend(self._waiting.result())
        if self._has_been_stopped:
            raise StopIteration
        item = self._buffer.popleft()
        if isinstance(item, BaseException):
            self.stop()
            raise persistence_error(item) if isinstance(item, EventStoreError) else item
        return self._store.decoder.notification(item)

    def stop(self) -> None:
        super().stop()
        self._follower.cancel()
        if self._waiting is not None:
            self._waiting.cancel()


__all__ = [
    "EventstoreAggregateRecorder",
    "EventstoreApplicationRecorder",
    "EventstoreProcessRecorder",
    "EventstoreSnapshotRecorder",
    "EventstoreTrackingRecorder",
    "JournalSubscription",
]
