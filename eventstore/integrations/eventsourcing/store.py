"""The journal operations behind the recorders, each one coroutine run on the journal's loop (one
hop from the caller's thread, however many journal calls it makes)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from eventsourcing.persistence import IntegrityError, Notification, StoredEvent

from ...envelope import Appended
from ...errors import ConcurrencyError, EventStoreError
from ...sync import SyncJournal
from .mapping import VERSION, Decoder, Offsets, check_versions, es_version, persistence_error, to_envelope

T = TypeVar("T")

SNAPSHOT_PREFIX = "eventsourcing.snapshot:"  # snapshot names of aggregates, apart from projections'


class JournalStore:
    """One journal shared by every recorder of one infrastructure factory."""

    def __init__(self, sync: SyncJournal, *, originator_id_type: str, actor_id: str) -> None:
        self.sync = sync
        self.decoder = Decoder(originator_id_type)
        self.offsets = Offsets()
        self.actor_id = actor_id

    def run(self, operation: Awaitable[T]) -> T:
        try:
            return self.sync.run(operation)
        except EventStoreError as exc:
            raise persistence_error(exc) from exc

    def close(self) -> None:
        self.sync.close()

    # -- writes --------------------------------------------------------------------------------

    async def insert(self, stored_events: Sequence[StoredEvent], checkpoint: tuple[str, int] | None) -> list[Appended]:
        """Store the records atomically, each originator's first at the entity version that makes
        its versions line up; an originator never seen is taken to be new, and learnt if it is not."""
        first_versions = check_versions(list(stored_events))
        correlation_id = uuid.uuid4()
        envelopes = [to_envelope(s, actor_id=self.actor_id, correlation_id=correlation_id) for s in stored_events]
        known = {entity_id: self.offsets.get(entity_id) for entity_id in first_versions}
        expected = {
            entity_id: _expected_version(entity_id, first, known[entity_id])
            for entity_id, first in first_versions.items()
        }
        journal = self.sync.journal
        while True:
            try:
                if len(envelopes) == 1 and checkpoint is None:  # the single-append path: group-committed
                    appended = [await journal.append(envelopes[0], expected_version=expected[envelopes[0].entity_id or ""])]
                else:
                    appended = await journal.append_many(envelopes, expected_versions=expected, checkpoint=checkpoint)
                break
            except ConcurrencyError as conflict:
                entity_id = conflict.entity_id
                if entity_id is None:
                    raise  # the checkpoint's
                offset = known.get(entity_id)
                if offset is None:  # taken to be new, and it is not: line its versions up and retry once
                    offset = known[entity_id] = await self._first_offset(entity_id)
                    if offset is None:
                        raise  # its first event is being written by someone else right now
                    expected[entity_id] = _expected_version(entity_id, first_versions[entity_id], offset)
                    if expected[entity_id] == conflict.actual:
                        continue
                raise _version_taken(entity_id, first_versions[entity_id], conflict.actual + offset) from None
        for envelope, where in zip(envelopes, appended, strict=True):
            self.offsets.learn(envelope.entity_id or "", envelope.payload[VERSION], where.entity_version)
        return appended

    async def _first_offset(self, entity_id: str) -> int | None:
        async with contextlib.aclosing(self.sync.journal.read_entity(entity_id, limit=1)) as events:
            async for event in events:
                self.offsets.learn(entity_id, es_version(event), event.entity_version)
                return self.offsets.get(entity_id)
        return None

    # -- reads ---------------------------------------------------------------------------------

    async def select_events(
        self, originator_id: uuid.UUID | str, gt: int | None, lte: int | None, desc: bool, limit: int | None
    ) -> list[StoredEvent]:
        entity_id = str(originator_id)
        after_version = up_to_version = None
        if gt is not None or lte is not None:
            offset = self.offsets.get(entity_id)
            if offset is None:
                offset = await self._first_offset(entity_id)
                if offset is None:
                    return []
            after_version = None if gt is None else max(gt - offset, 0)
            up_to_version = None if lte is None else lte - offset
            if up_to_version is not None and up_to_version < 1:
                return []
        events = self.sync.journal.read_entity(
            entity_id, after_version=after_version, up_to_version=up_to_version, backwards=desc, limit=limit
        )
        found = [event async for event in events]
        records = [self.decoder.stored_event(event) for event in found]
        if found:
            self.offsets.learn(entity_id, records[0].originator_version, found[0].entity_version)
        return records

    async def select_notifications(
        self, after: int, limit: int, stop: int | None, topics: Sequence[str]
    ) -> list[Notification]:
        notifications: list[Notification] = []
        query = self.sync.journal.query_events(event_type=list(topics) or None, after=after, limit=limit)
        async with contextlib.aclosing(query) as events:
            async for event in events:
                if stop is not None and (event.position or 0) > stop:
                    break
                notifications.append(self.decoder.notification(event))
        return notifications

    async def max_position(self) -> int | None:
        return (await self.sync.journal.last_position()) or None


def _expected_version(entity_id: str, first_version: int, offset: int | None) -> int:
    """The entity version the originator must be at before ``first_version`` (0: a new one)."""
    if offset is None:
        return 0
    expected = first_version - 1 - offset
    if expected < 0:
        raise IntegrityError(f"version {first_version} of {entity_id} is before its first stored version {offset + 1}")
    return expected


def _version_taken(entity_id: str, version: int, last_stored: int) -> IntegrityError:
    if version <= last_stored:
        return IntegrityError(f"version {version} of {entity_id} is already stored (the last stored is {last_stored})")
    return IntegrityError(
        f"version {version} of {entity_id} would leave a gap after the last stored version {last_stored}"
    )
