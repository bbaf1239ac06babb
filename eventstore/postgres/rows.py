"""Events ↔ rows: the one place that knows the column order of ``sql/*.sql``'s event SELECTs and
of the append and import parameters, and the binary jsonb codec every connection gets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import asyncpg
import msgspec

from ..envelope import PAYLOAD_DECODER, EventEnvelope

# Column order of every event SELECT in sql/*.sql:
#   id, event_id, event_type, entity_id, payload (as text), actor_id, correlation_id, causation_id,
#   idempotency_key, schema_version, "timestamp", entity_version
POSITION, PAYLOAD, ENTITY_VERSION = 0, 4, 11

#: A page's payloads, joined into one JSON array: one decoder call per page, not one per row.
_PAGE_PAYLOADS = msgspec.json.Decoder(list[dict[str, Any]])


def rows_to_events(rows: list[asyncpg.Record]) -> list[EventEnvelope]:
    """A page of event rows, their payloads decoded in one msgspec call."""
    if not rows:
        return []
    payloads = _PAGE_PAYLOADS.decode("[" + ",".join([row[PAYLOAD] for row in rows]) + "]")
    return [_event(row, payload) for row, payload in zip(rows, payloads, strict=True)]


def _event(row: asyncpg.Record, payload: dict[str, Any]) -> EventEnvelope:
    timestamp = row[10]
    if timestamp.tzinfo is None:
        # asyncpg sends datetime.min/max in UTC as -infinity/infinity and decodes those back as
        # *naive* datetime.min/max: give them their zone back, so they round-trip like any instant.
        timestamp = timestamp.replace(tzinfo=UTC)
    return EventEnvelope(
        position=row[0],
        event_id=row[1],
        event_type=row[2],
        entity_id=row[3],
        payload=payload,
        actor_id=row[5],
        correlation_id=row[6],
        causation_id=row[7],
        idempotency_key=row[8],
        schema_version=row[9],
        timestamp=timestamp,
        entity_version=row[11],
    )


def event_params(event: EventEnvelope, payload_json: bytes, last: Any) -> tuple[Any, ...]:
    """Parameters of ``append_event`` (``last``: the expected version)."""
    return (
        event.event_id, event.idempotency_key, event.event_type, event.schema_version, event.timestamp,
        event.actor_id, event.correlation_id, event.causation_id, payload_json, event.entity_id, last,
    )


def batch_params(events: Sequence[EventEnvelope], payloads: Sequence[bytes], last: Sequence[Any]) -> tuple[list[Any], ...]:
    """Parameters of ``append_events`` and ``import_batch``, one array per column (``last``: the
    expected versions, or the versions to store)."""
    return (
        [e.event_id for e in events], [e.idempotency_key for e in events], [e.event_type for e in events],
        [e.schema_version for e in events], [e.timestamp for e in events], [e.actor_id for e in events],
        [e.correlation_id for e in events], [e.causation_id for e in events], list(payloads),
        [e.entity_id for e in events], list(last),
    )


#: The columns ``eventstore import`` COPYs into credit_events, in the order of :func:`import_rows`.
IMPORT_COLUMNS = ("event_id", "idempotency_key", "event_type", "schema_version", "timestamp", "actor_id",
                  "correlation_id", "causation_id", "payload", "entity_id", "entity_version")


def import_rows(events: Sequence[EventEnvelope], payloads: Sequence[bytes]) -> list[tuple[Any, ...]]:
    """COPY rows of the file's events (:data:`IMPORT_COLUMNS`), each with its file version."""
    return [
        (e.event_id, e.idempotency_key, e.event_type, e.schema_version, e.timestamp, e.actor_id,
         e.correlation_id, e.causation_id, payload, e.entity_id, e.entity_version)
        for e, payload in zip(events, payloads, strict=True)
    ]


def _decode_jsonb(data: bytes) -> Any:
    # Byte 0 is the jsonb format version. Slicing copies, which beats a memoryview for the
    # small payloads events carry; big ones are decoded in place.
    return PAYLOAD_DECODER.decode(data[1:] if len(data) < 4096 else memoryview(data)[1:])


def _encode_jsonb(data: bytes) -> bytes:
    # Values reach the codec already encoded by msgspec (validate_event encodes each payload once).
    return b"\x01" + data


async def init_connection(conn: asyncpg.Connection) -> None:
    """Binary jsonb through msgspec, on every connection (pooled, dedicated, tools): payloads go
    out as msgspec encoded them; snapshot states come back decoded. Event SELECTs take the payload
    as text instead, for :func:`rows_to_events`."""
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary")
