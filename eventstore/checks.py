"""Argument rules of the journal's public methods, written once for both backends (the envelope's
own rules are ``envelope.validate_event``). Each raises :class:`InvalidEventError` naming the argument."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .envelope import ENCODER, EventEnvelope, check_payload_values, check_string_content
from .errors import InvalidEventError

MAX_CHECKPOINT_NAME = 255
MAX_POSITION = 2**63 - 1


def check_count(name: str, value: object, *, nullable: bool = False) -> None:
    """A position, version or limit: a plain integer >= 0 (an expected version of 0: no events yet)."""
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidEventError(name, f"must be an integer >= 0, got {value!r}")


def check_position(name: str, value: object) -> None:
    """A position to store: an integer in 0 .. 2**63-1 (a PostgreSQL BIGINT, in both backends)."""
    check_count(name, value)
    if value > MAX_POSITION:  # type: ignore[operator]  # check_count: an int
        raise InvalidEventError(name, f"must be at most {MAX_POSITION}, got {value!r}")


def check_expected_versions(expected_versions: object) -> None:
    if expected_versions is None:
        return
    if not isinstance(expected_versions, Mapping):
        raise InvalidEventError("expected_versions", f"must be a mapping of entity_id to version, got {type(expected_versions).__name__}")
    for entity, version in expected_versions.items():
        check_count(f"expected_versions[{entity!r}]", version, nullable=True)


def first_expected_versions(
    events: list[EventEnvelope], expected_versions: Mapping[str, int] | None
) -> list[int | None]:
    """Per event, the version its entity must be at: only the batch's first event of an
    entity carries the caller's expectation; later ones follow from the batch itself."""
    if not expected_versions:
        return [None] * len(events)
    seen: set[str] = set()
    result: list[int | None] = []
    for event in events:
        entity = event.entity_id
        if entity is not None and entity in expected_versions and entity not in seen:
            seen.add(entity)
            result.append(expected_versions[entity])
        else:
            result.append(None)
    return result


def check_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if not isinstance(value, datetime):
            raise InvalidEventError(name, f"must be a datetime, got {type(value).__name__}")
        if value.utcoffset() is None:
            raise InvalidEventError(name, "is naive; give it a timezone (UTC recommended)")


def check_query(
    event_type: object, correlation_id: uuid.UUID | None, payload_contains: Any, after: int, limit: int | None
) -> tuple[str, ...] | None:
    """Checks a ``query_events`` call; returns its event types as a tuple (``None``: every type)."""
    event_types = _event_types(event_type)
    if correlation_id is not None and not isinstance(correlation_id, uuid.UUID):
        raise InvalidEventError("correlation_id", f"must be a uuid.UUID, got {type(correlation_id).__name__}")
    if payload_contains is not None:
        if not isinstance(payload_contains, dict):
            raise InvalidEventError("payload_contains", f"must be a JSON object (dict), got {type(payload_contains).__name__}")
        # The payload rules (JSON types, finite numbers, no NUL, bounded depth): the encoder would
        # turn NaN into null and PostgreSQL refuses NUL, while a scan would just find nothing.
        check_payload_values(payload_contains, "payload_contains")
    check_count("after", after)
    check_count("limit", limit, nullable=True)
    return event_types


def _event_types(event_type: object) -> tuple[str, ...] | None:
    if event_type is None:
        return None
    types = (event_type,) if isinstance(event_type, str) else event_type
    if not isinstance(types, list | tuple | set | frozenset):
        raise InvalidEventError("event_type", f"must be a string or a list of strings, got {type(event_type).__name__}")
    if not types:
        raise InvalidEventError("event_type", "an empty list matches nothing; pass None for every type")
    for item in types:
        if not isinstance(item, str):
            raise InvalidEventError("event_type", f"must be a string or a list of strings, got an item of type {type(item).__name__}")
        check_string_content("event_type", item)  # NUL or a lone surrogate: PostgreSQL cannot take it
    return tuple(dict.fromkeys(types))


def check_entity_range(after_version: object, up_to_version: object, backwards: object, limit: object) -> None:
    check_count("after_version", after_version, nullable=True)
    check_count("up_to_version", up_to_version, nullable=True)
    if not isinstance(backwards, bool):
        raise InvalidEventError("backwards", f"must be True or False, got {backwards!r}")
    check_count("limit", limit, nullable=True)


def check_checkpoint_name(name: object) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_CHECKPOINT_NAME:
        raise InvalidEventError("checkpoint", f"a checkpoint name is a string of 1-{MAX_CHECKPOINT_NAME} characters, got {name!r:.80}")
    check_string_content("checkpoint", name)


def check_checkpoint(checkpoint: object) -> tuple[str, int] | None:
    """``(name, position)``: a consumer's progress, stored with the batch."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, tuple | list) or len(checkpoint) != 2:
        raise InvalidEventError("checkpoint", f"must be a (name, position) pair, got {checkpoint!r:.80}")
    name, position = checkpoint
    check_checkpoint_name(name)
    check_position("checkpoint position", position)
    return name, position


def check_entity_filter(entity_id: object) -> None:
    if not isinstance(entity_id, str):
        raise InvalidEventError("entity_id", f"must be a string, got {type(entity_id).__name__}")
    check_string_content("entity_id", entity_id)


def check_snapshot_args(name: object, position: object) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or "\x00" in name:
        raise InvalidEventError("name", "a snapshot name is 1-200 characters without NUL")
    check_position("position", position)


def encode_state(state: Any) -> bytes:
    try:
        return ENCODER.encode(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidEventError("state", f"cannot be encoded as JSON: {exc}") from None
