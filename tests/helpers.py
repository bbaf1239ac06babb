from __future__ import annotations

from typing import Any

import msgspec

from eventstore import BaseEventJournal, EventEnvelope


def event(event_type: str = "credits.minted", payload: dict[str, Any] | None = None, **fields: Any) -> EventEnvelope:
    fields.setdefault("actor_id", "tester")
    return EventEnvelope.new(event_type, {"amount": 1} if payload is None else payload, **fields)


async def read_all(journal: BaseEventJournal, after: int = 0) -> list[EventEnvelope]:
    return [e async for e in journal.read_events(after=after)]


def unstamped(e: EventEnvelope) -> EventEnvelope:
    """The event without what the store sets."""
    return msgspec.structs.replace(e, position=None, entity_version=None)
