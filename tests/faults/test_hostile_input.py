"""Issue 7: hostile input.

1. A property suite over the envelope: every generated envelope is either stored by *both*
   backends and read back identical (numbers by value), or refused by both with the same
   ``InvalidEventError`` message; never a crash, a half write, or a disagreement.
2. Garbage lines (random bytes, invalid UTF-8, JSON of the wrong shape, truncated lines) in a
   JSONL journal: reported as corrupt with their line numbers by the file journal and the
   importer, never a crash; the valid lines are still read and imported.
3. SQL-looking text through every envelope field and every filter reaches PostgreSQL as bound
   parameters: stored and read back verbatim, the table and the other rows intact.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from eventstore import (
    CorruptedEventError,
    EventEnvelope,
    FileEventJournal,
    InvalidEventError,
    PostgresEventJournal,
)
from eventstore.envelope import ENCODER, MAX_INT_BITS, MAX_PAYLOAD_DEPTH
from eventstore.postgres.file_import import import_file

REPO = Path(__file__).resolve().parents[2]
#: The fuzzed journals use a smaller payload limit, so that examples near it stay cheap; the
#: default 1 MiB limit has its own test below.
FUZZ_MAX_BYTES = 64 * 1024
INT32_MAX = 2**31 - 1

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                            HealthCheck.data_too_large],
)
FUZZ_LONG = settings(FUZZ, max_examples=3000)


# -- two stores on one event loop, shared by every example of a test ------------------------------


class Stores:
    """A file journal and a PostgreSQL journal opened once per test; hypothesis examples reuse them
    (each example's idempotency keys and event ids are unique)."""

    def __init__(self, runner: asyncio.Runner, path: Path, url: str) -> None:
        self.runner = runner
        self.path = path
        self.url = url
        self.file: FileEventJournal
        self.pg: PostgresEventJournal
        self.conn: asyncpg.Connection
        self.last = {"file": 0, "postgres": 0}  # last position read back, per backend
        self.counter = itertools.count(1)

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    async def open(self) -> None:
        self.file = FileEventJournal(self.path, max_payload_bytes=FUZZ_MAX_BYTES)
        await self.file.initialize()
        self.pg = PostgresEventJournal(self.url, pool_size=2, max_payload_bytes=FUZZ_MAX_BYTES)
        await self.pg.initialize()
        self.conn = await asyncpg.connect(self.url)

    async def close(self) -> None:
        await self.file.close()
        await self.pg.close()
        await self.conn.close()

    def journals(self) -> list[tuple[str, Any]]:
        return [("file", self.file), ("postgres", self.pg)]

    async def sizes(self) -> tuple[int, int]:
        """What each store holds: the file's size in bytes, the table's row count."""
        return os.path.getsize(self.path), await self.conn.fetchval("SELECT count(*) FROM credit_events")


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[Stores]:
    runner = asyncio.Runner()
    both = Stores(runner, tmp_path / "hostile" / "credits.jsonl", database_url)
    try:
        runner.run(both.open())
        yield both
        runner.run(both.close())
    finally:
        runner.close()


# -- comparison: numbers by value, booleans stay booleans -----------------------------------------


def by_value(value: Any) -> Any:
    """A comparable form of a JSON value: numbers by their decimal value (a float by the shortest
    text that round-trips it, which is what the encoder writes), the kind of everything else kept."""
    if value is None or isinstance(value, bool | str):
        return (type(value).__name__, value)
    if isinstance(value, int):
        return ("number", Decimal(value))
    if isinstance(value, float):
        return ("number", Decimal(repr(value)))
    if isinstance(value, list):
        return ("array", tuple(by_value(item) for item in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted(((k, by_value(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    raise AssertionError(f"{type(value).__name__} read back from a store")


def assert_same_event(stored: EventEnvelope, appended: EventEnvelope) -> None:
    """Read back identical apart from position/entity_version; timestamp in UTC; numbers by value."""
    for name in ("event_id", "event_type", "entity_id", "actor_id", "correlation_id", "causation_id",
                 "idempotency_key", "schema_version"):
        got, want = getattr(stored, name), getattr(appended, name)
        assert got == want and isinstance(got, type(want)), (name, got, want)  # asyncpg's UUID subclasses uuid.UUID
    assert stored.timestamp.utcoffset() == timedelta(0)
    assert stored.timestamp == appended.timestamp.astimezone(UTC)  # same zone: no fold surprises
    assert by_value(stored.payload) == by_value(appended.payload)


# -- an independent statement of the envelope rules (the oracle) ----------------------------------


def _bad_text(value: object, low: int, high: int) -> bool:
    if not isinstance(value, str) or not low <= len(value) <= high:
        return True
    return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)


def _bad_payload(payload: object) -> bool:
    if not isinstance(payload, dict):
        return True
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _bad_text(value, 0, 10**9):
                return True
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                return True
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return True
        elif isinstance(value, dict | list):
            if depth > MAX_PAYLOAD_DEPTH:
                return True
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(value, dict) and _bad_text(key, 0, 10**9):
                    return True
                stack.append((item, depth + 1))
        else:
            return True
    return len(ENCODER.encode(payload)) > FUZZ_MAX_BYTES


#: What asyncpg would store as -infinity/infinity (see eventstore.envelope).
RESERVED_INSTANTS = (datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


def violations(e: EventEnvelope) -> set[str]:
    """Which fields break a rule of CONTRACT.md's Envelope section."""
    bad = set()
    for name, low, high in (("event_type", 1, 255), ("actor_id", 1, 100), ("idempotency_key", 1, 255)):
        if _bad_text(getattr(e, name), low, high):
            bad.add(name)
    if e.entity_id is not None and _bad_text(e.entity_id, 0, 255):
        bad.add("entity_id")
    version = e.schema_version
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= INT32_MAX:
        bad.add("schema_version")
    if not isinstance(e.timestamp, datetime) or e.timestamp.utcoffset() is None:
        bad.add("timestamp")
    else:
        try:
            if e.timestamp.astimezone(UTC) in RESERVED_INSTANTS:
                bad.add("timestamp")
        except OverflowError:
            bad.add("timestamp")
    if _bad_payload(e.payload):
        bad.add("payload")
    return bad


def error_field(exc: InvalidEventError) -> str:
    return exc.field.split(".")[0].split("[")[0].split(" ")[0]


# -- strategies -----------------------------------------------------------------------------------

#: Characters that are invalid in every string field (PostgreSQL cannot store them, or they are not UTF-8).
POISON = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff"]
#: Odd but valid: BOM, line/paragraph separators, bidi controls, combining marks, astral planes,
#: noncharacters, C0/C1 controls, quotes and backslashes, characters whose case mapping changes length.
ODD = [
    "\ufeff", "\u2028", "\u2029", "\u200b", "\u200d", "\u200e", "\u200f", "\u202e", "\u2066", "\u0301", "\u0308",
    "\u0345", "\U0001f600", "\U0001f1fa", "\U0010ffff", "\U000e0041", "\U0001d11e", "\ufffe", "\uffff", "\ufdd0",
    "\ufdef", "\U0001fffe", "\U0010fffe", "\x7f", "\x1b", "\x85", "\x9f", "\r", "\n", "\t", "\x0b", "\x0c", '"', "\\",
    "'", "/", "é", "\u0130", "\u00df", "\ufb03", "\u05d0", "\u0627", "\u3000", "\u00a0", "\ufffd", "$", ":", "%",
]
clean_char = st.one_of(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), st.sampled_from(ODD))


@st.composite
def odd_text(draw: st.DrawFn, min_size: int = 0, max_size: int = 12) -> str:
    chars = draw(st.lists(clean_char, min_size=min_size, max_size=max_size))
    if chars and draw(st.integers(0, 9)) == 0:  # one string in ten carries a NUL or a lone surrogate
        chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from(POISON))
    return "".join(chars)


def around(limit: int) -> st.SearchStrategy[str]:
    """Text at and around a limit in characters (code points, often several UTF-8 bytes each)."""
    sizes = st.one_of(st.sampled_from([0, 1, limit - 1, limit, limit + 1]), st.integers(0, limit + 3))
    return sizes.flatmap(lambda n: odd_text(min_size=n, max_size=n))


BIG_INTS = [
    2**MAX_INT_BITS - 1, 2**MAX_INT_BITS, -(2**MAX_INT_BITS - 1), -(2**MAX_INT_BITS), 2**(MAX_INT_BITS - 1),
    2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**903, 10**904, -(10**903),
]
ODD_FLOATS = [
    -0.0, 0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308, 1e308, -1e308,
    1.7976931348623157e308, 1e-300, 0.1, 1e16, 9007199254740993.0, 1e22, 123456789.125,
    float("nan"), float("inf"), float("-inf"),
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(BIG_INTS), st.integers(-(2**3010), 2**3010),
    st.floats(), st.sampled_from(ODD_FLOATS), odd_text(max_size=30),
)
keys = odd_text(max_size=10)
trees = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=20,
)


@st.composite
def deep_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Nesting at and around MAX_PAYLOAD_DEPTH containers (the payload object itself is level 1)."""
    depth = draw(st.one_of(st.sampled_from([MAX_PAYLOAD_DEPTH - 1, MAX_PAYLOAD_DEPTH, MAX_PAYLOAD_DEPTH + 1]),
                           st.integers(MAX_PAYLOAD_DEPTH - 4, MAX_PAYLOAD_DEPTH + 4), st.integers(2, 600)))
    value: Any = draw(st.one_of(st.just([]), st.just({}), st.integers(), odd_text()))
    wrappers = depth - 2 if isinstance(value, list | dict) else depth - 1
    for is_list in draw(st.lists(st.booleans(), min_size=wrappers, max_size=wrappers)):
        value = [value] if is_list else {"k": value}
    return {"deep": value}


@st.composite
def sized_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """Payloads whose JSON is within a few bytes of FUZZ_MAX_BYTES, written with multi-byte text:
    the limit counts UTF-8 bytes, not characters."""
    char = draw(st.sampled_from(["x", "é", "\u20ac", "\U0001f600", "\u2028"]))
    width = len(char.encode())
    target = FUZZ_MAX_BYTES + draw(st.integers(-6, 6)) - len(b'{"s":""}')
    return {"s": char * (target // width) + "x" * (target % width)}


payloads = st.one_of(
    st.dictionaries(keys, trees, max_size=6), trees.filter(lambda v: not isinstance(v, dict)), deep_payloads(),
    sized_payloads(), st.dictionaries(keys, trees, max_size=3),
)

offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59, seconds=59),
                                            max_value=timedelta(hours=23, minutes=59, seconds=59)))
EXTREME_TIMES = [
    datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC),
    datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
    datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),  # after year 9999 in UTC
    datetime.min.replace(tzinfo=timezone(timedelta(hours=-1))), datetime.max.replace(tzinfo=timezone(timedelta(hours=1))),
    datetime(1970, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=14))), datetime(2024, 1, 1),
]
timestamps = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), offsets, st.timezones())),
    st.sampled_from(EXTREME_TIMES),
)
schema_versions = st.one_of(
    st.just(1), st.integers(-2, 3), st.integers(),
    st.sampled_from([INT32_MAX, INT32_MAX + 1, 2**63, -(2**31), True, False, 1.0, "1", None]),
)
ENTITY_POOL = ["acct-1", "ünï-2", "", "\u2028", "'; --", "\U0010ffff" * 255]

envelope_fields = st.fixed_dictionaries({
    "event_type": st.one_of(around(255), st.just("credits.minted")),
    "entity_id": st.one_of(st.none(), st.sampled_from(ENTITY_POOL), around(255)),
    "payload": payloads,
    "actor_id": st.one_of(around(100), st.just("tester")),
    "correlation_id": st.uuids(),
    "causation_id": st.one_of(st.none(), st.uuids()),
    "idempotency_key": around(255),
    "schema_version": schema_versions,
    "timestamp": timestamps,
})


def unique_key(key: str, n: int) -> str:
    """Keep each example's key unique without changing its length (short keys may repeat: both
    stores must then call the append a duplicate)."""
    prefix = f"{n:x}~"
    return prefix + key[len(prefix):] if len(key) >= len(prefix) else key


# -- 1. the envelope property ---------------------------------------------------------------------


async def _attempt(journal: Any, e: EventEnvelope, batch: bool) -> tuple[str, str]:
    try:
        if batch:
            (stored,) = await journal.append_events([e])
        else:
            stored = await journal.append_event(e)
    except InvalidEventError as exc:
        return "refused", str(exc)
    return ("stored" if stored else "duplicate"), ""


async def _read_new(stores: Stores, name: str, journal: Any) -> list[EventEnvelope]:
    new = [x async for x in journal.read_events(after=stores.last[name])]
    if new:
        stores.last[name] = new[-1].position
    return new


async def _check_envelope(stores: Stores, fields: dict[str, Any], batch: bool, read_entity: bool) -> None:
    n = next(stores.counter)
    fields = dict(fields, idempotency_key=unique_key(fields["idempotency_key"], n))
    e = EventEnvelope(event_id=uuid.uuid4(), **fields)
    bad = violations(e)
    note(f"violations: {sorted(bad)}")
    before = await stores.sizes()
    outcomes = {name: await _attempt(journal, e, batch) for name, journal in stores.journals()}
    note(f"outcomes: {outcomes}")
    assert outcomes["file"] == outcomes["postgres"], "the backends disagree"
    outcome, message = outcomes["file"]
    after = await stores.sizes()

    if outcome == "refused":
        assert bad, f"refused a valid event: {message}"
        assert any(f"invalid event: {field}" in message for field in bad), (message, bad)
        assert after == before, "a refused event left something behind"
        # In a batch after a valid event: refused as a whole, nothing written, same message.
        filler = EventEnvelope.new("filler", {"n": n}, actor_id="tester", idempotency_key=f"filler-{n}")
        for _, journal in stores.journals():
            with pytest.raises(InvalidEventError) as info:
                await journal.append_events([filler, e])
            assert str(info.value) == message
        assert await stores.sizes() == before, "half a batch was written"
        return

    assert not bad, f"stored an event that breaks {sorted(bad)}"
    if outcome == "duplicate":
        assert after == before
        return
    file_bytes, rows = after
    assert rows == before[1] + 1
    with open(stores.path, "rb") as handle:
        handle.seek(before[0])
        assert handle.read().count(b"\n") == 1
    (from_file,) = await _read_new(stores, "file", stores.file)
    (from_pg,) = await _read_new(stores, "postgres", stores.pg)
    assert_same_event(from_file, e)
    assert_same_event(from_pg, e)
    assert from_file.entity_version == from_pg.entity_version
    assert (from_file.entity_version is None) == (e.entity_id is None)
    for name, journal, stored in (("file", stores.file, from_file), ("postgres", stores.pg, from_pg)):
        assert stored.position is not None
        found = [x async for x in journal.query_events(event_type=e.event_type, after=stored.position - 1, limit=1)]
        assert found == [stored], name
        found = [x async for x in journal.query_events(payload_contains=e.payload, after=stored.position - 1, limit=1)]
        assert found == [stored], name
        if read_entity and e.entity_id is not None:
            history = [x async for x in journal.read_entity(e.entity_id)]
            assert history[-1] == stored and [x.entity_version for x in history] == list(range(1, len(history) + 1))


@FUZZ
@given(fields=envelope_fields, batch=st.booleans())
def test_envelope_property_both_backends(stores: Stores, fields: dict[str, Any], batch: bool) -> None:
    stores.run(_check_envelope(stores, fields, batch, read_entity=True))


@pytest.mark.long
@FUZZ_LONG
@given(fields=envelope_fields, batch=st.booleans())
def test_envelope_property_both_backends_long(stores: Stores, fields: dict[str, Any], batch: bool) -> None:
    # read_entity scans the whole file journal: only every 25th example, so the run stays linear.
    stores.run(_check_envelope(stores, fields, batch, read_entity=next(stores.counter) % 25 == 0))


# -- 1b. the boundaries, stated once each ----------------------------------------------------------

BOUNDARY_CASES = [
    # (what, fields changed, refused field or None)
    ("event_type of 255 astral characters (1020 bytes)", {"event_type": "\U0001f600" * 255}, None),
    ("event_type of 256 characters", {"event_type": "é" * 256}, "event_type"),
    ("actor_id of 100 combining marks", {"actor_id": "\u0301" * 100}, None),
    ("actor_id of 101 characters", {"actor_id": "\u2028" * 101}, "actor_id"),
    ("idempotency_key of 255 3-byte characters", {"idempotency_key": "\u20ac" * 255}, None),
    ("idempotency_key of 256 characters", {"idempotency_key": "k" * 256}, "idempotency_key"),
    ("entity_id of 255 4-byte characters", {"entity_id": "\U0010ffff" * 255}, None),
    ("entity_id of 256 characters", {"entity_id": "\ufeff" * 256}, "entity_id"),
    ("entity_id with NUL", {"entity_id": "a\x00"}, "entity_id"),
    ("actor_id with a lone surrogate", {"actor_id": "a\udc00"}, "actor_id"),
    ("schema_version True", {"schema_version": True}, "schema_version"),
    ("schema_version 2**31", {"schema_version": 2**31}, "schema_version"),
    ("schema_version 2**31 - 1", {"schema_version": 2**31 - 1}, None),
    # asyncpg stores exactly these two instants as -infinity/infinity: refused (found by the property).
    ("timestamp 0001-01-01T00:00Z", {"timestamp": datetime.min.replace(tzinfo=UTC)}, "timestamp"),
    ("timestamp 9999-12-31T23:59:59.999999Z", {"timestamp": datetime.max.replace(tzinfo=UTC)}, "timestamp"),
    ("timestamp 9999-12-31T23:59:59.999999Z at +01:00",
     {"timestamp": datetime.max.replace(tzinfo=timezone(timedelta(hours=1)))}, None),
    ("timestamp 0001-01-01T00:00:00.000001Z", {"timestamp": datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)}, None),
    ("timestamp 0001-01-01T00:00Z as 01:00+01:00",
     {"timestamp": datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}, "timestamp"),
    ("timestamp before year 1 in UTC", {"timestamp": datetime.min.replace(tzinfo=timezone(timedelta(minutes=1)))},
     "timestamp"),
    ("timestamp naive", {"timestamp": datetime(2024, 1, 1)}, "timestamp"),
    ("timestamp at +23:59:59", {"timestamp": datetime(2024, 6, 1, tzinfo=timezone(timedelta(hours=23, minutes=59,
                                                                                      seconds=59)))}, None),
    ("payload nested 256 deep", {"payload": {"d": __import__("functools").reduce(lambda v, _: [v], range(254), [])}},
     None),
    ("payload nested 257 deep", {"payload": {"d": __import__("functools").reduce(lambda v, _: [v], range(255), [])}},
     "payload"),
    ("payload int of 3000 bits", {"payload": {"n": 2**3000 - 1, "m": -(2**3000 - 1)}}, None),
    ("payload int of 3001 bits", {"payload": {"n": 2**3000}}, "payload"),
    ("payload floats", {"payload": {"f": [-0.0, 5e-324, 1e308, -1.7976931348623157e308, 1e-300]}}, None),
    ("payload -Infinity", {"payload": {"f": float("-inf")}}, "payload"),
    ("payload at 1 MiB of 2-byte characters", {"payload": {"s": "é" * ((2**20 - 8) // 2)}}, None),
    ("payload 1 byte over 1 MiB", {"payload": {"s": "é" * ((2**20 - 8) // 2) + "x"}}, "payload"),
]


@pytest.mark.parametrize("what,changes,refused", BOUNDARY_CASES, ids=[c[0] for c in BOUNDARY_CASES])
async def test_boundaries_in_both_backends(tmp_path: Path, database_url: str, what: str, changes: dict[str, Any],
                                           refused: str | None) -> None:
    e = msgspec.structs.replace(EventEnvelope.new("boundary", {"n": 1}, actor_id="tester", entity_id="b"), **changes)
    async with FileEventJournal(tmp_path / "b.jsonl") as file, PostgresEventJournal(database_url, pool_size=1) as pg:
        outcomes = []
        for journal in (file, pg):
            try:
                outcomes.append(await journal.append_event(e))
                (stored,) = [x async for x in journal.read_events()]
                assert_same_event(stored, e)
            except InvalidEventError as exc:
                outcomes.append(str(exc))
                assert [x async for x in journal.read_events()] == []
    assert outcomes[0] == outcomes[1]
    if refused is None:
        assert outcomes[0] is True
    else:
        assert isinstance(outcomes[0], str) and outcomes[0].startswith(f"invalid event: {refused}")


# -- 2. garbage lines in a JSONL journal ----------------------------------------------------------

TEMPLATE_EVENT = EventEnvelope(
    event_id=uuid.UUID(int=1), event_type="test.hostile", entity_id="acct-t", payload={"amount": 5, "note": "ünï"},
    actor_id="tester", correlation_id=uuid.UUID(int=2), idempotency_key="template-key",
    timestamp=datetime(2024, 1, 1, tzinfo=UTC), position=1, entity_version=1,
)
TEMPLATE = ENCODER.encode(TEMPLATE_EVENT)
REQUIRED = ["event_id", "event_type", "payload", "actor_id", "correlation_id", "idempotency_key", "timestamp"]
WRONG_TYPES = {
    "event_id": [5, "not-a-uuid", None, [], ""],
    "event_type": [5, None, [], {}, True],
    "entity_id": [5, [], {}, False],
    "payload": [[], "x", 5, None, [{"a": 1}]],
    "actor_id": [None, 1, []],
    "correlation_id": ["zz", 1, None],
    "causation_id": ["bad", 5, []],
    "idempotency_key": [None, 7, {}],
    "schema_version": ["1", 1.5, None, True, []],
    "timestamp": ["yesterday", 1700000000, "2024-01-01T00:00:00", None, "2024-13-01T00:00:00Z", "2024-01-01T25:00:00Z"],
    "position": ["1", 1.5, True],
    "entity_version": ["1", 2.5, False],
}
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\x80"]


def _with(**changes: Any) -> bytes:
    fields = msgspec.json.decode(TEMPLATE)
    for name, value in changes.items():
        if value is _MISSING:
            del fields[name]
        else:
            fields[name] = value
    return msgspec.json.encode(fields)


_MISSING = object()
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8,
)
garbage_lines = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
    st.integers(0, len(TEMPLATE) - 1).map(lambda k: TEMPLATE[:k]),  # a line torn at every byte offset
    st.tuples(st.sampled_from(BAD_UTF8), st.sampled_from([b"test.hostile", b"tester", b"template-key", "ünï".encode()]))
    .map(lambda t: TEMPLATE.replace(t[1], t[1][:2] + t[0] + t[1][2:], 1)),
    json_values.map(ENCODER.encode).filter(lambda b: not b.startswith(b"{")),  # valid JSON, not an object
    st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(ENCODER.encode),  # an object, not an event
    st.sampled_from(REQUIRED).map(lambda name: _with(**{name: _MISSING})),
    st.sampled_from([(n, v) for n, values in WRONG_TYPES.items() for v in values]).map(lambda t: _with(**{t[0]: t[1]})),
    st.sampled_from([b"", b" ", b"\r", b"\t", b"\x00", b"{", b"}", b"{}", b"[]", b"null", b"\xef\xbb\xbf" + TEMPLATE,
                     TEMPLATE + b",", TEMPLATE + TEMPLATE, TEMPLATE[:-1] + b',"x":}']),
)


def fresh_events(n: int, tag: str) -> list[EventEnvelope]:
    return [
        EventEnvelope.new("test.valid", {"i": i, "tag": tag}, actor_id="tester", entity_id=f"acct-{tag}-{i % 2}")
        for i in range(n)
    ]


def valid_lines(events: list[EventEnvelope]) -> list[bytes]:
    """The lines a file journal writes for these events (positions 1..n, versions per entity)."""
    versions: dict[str, int] = {}
    lines = []
    for position, e in enumerate(events, start=1):
        assert e.entity_id is not None
        versions[e.entity_id] = versions.get(e.entity_id, 0) + 1
        lines.append(ENCODER.encode(msgspec.structs.replace(e, position=position, entity_version=versions[e.entity_id])))
    return lines


def without_store_fields(events: list[EventEnvelope]) -> list[EventEnvelope]:
    return [msgspec.structs.replace(e, position=None) for e in events]


async def _check_garbage(stores: Stores, garbage: list[bytes], places: list[int], tail: bytes | None,
                         tail_newline: bool) -> None:
    n = next(stores.counter)
    folder = stores.path.parent / f"garbage-{n}"
    folder.mkdir()
    path = folder / "credits.jsonl"
    events = fresh_events(4, str(n))
    lines: list[tuple[bool, bytes]] = [(True, line) for line in valid_lines(events)]
    for junk, place in sorted(zip(garbage, places), key=lambda t: -t[1]):
        lines.insert(place, (False, junk))
    content = b"".join(line + b"\n" for _, line in lines)
    incomplete = b""
    if tail is not None:
        if tail_newline:
            lines.append((False, tail))
            content += tail + b"\n"
        else:
            incomplete = tail
            content += tail
    path.write_bytes(content)
    corrupt = [number for number, (ok, _) in enumerate(lines, start=1) if not ok]
    note(f"corrupt lines {corrupt}, incomplete tail {incomplete!r}")

    # The importer: every complete garbage line reported by number, the valid lines imported.
    result = await import_file(path, stores.url, batch_size=3)
    assert [number for number, _ in result.corrupt_lines] == corrupt
    assert (result.corrupt, result.inserted, result.already_present, result.repeated) == (len(corrupt), 4, 0, 0)
    imported = await _read_new(stores, "postgres", stores.pg)
    assert without_store_fields(imported) == without_store_fields(await _file_events(path))

    # A reader: skips and counts them, or (strict) names the first one.
    async with FileEventJournal(path, read_only=True) as reader:
        assert [msgspec.structs.replace(e, position=None, entity_version=None) async for e in reader.read_events()] \
            == events
        assert reader.get_metrics()["corrupted_skipped"] == len(corrupt)
        await _assert_strict_read(reader, path, corrupt)

    # The writer: moves a torn or corrupt last line aside, keeps the others, and appends after them.
    last_is_garbage = bool(incomplete) or (bool(lines) and not lines[-1][0])
    moved = incomplete or (lines[-1][1] + b"\n" if last_is_garbage else b"")
    remaining = corrupt[:-1] if last_is_garbage and not incomplete else corrupt
    async with FileEventJournal(path) as writer:
        if last_is_garbage:
            assert writer.torn_tail_path is not None and writer.torn_tail_path.read_bytes() == moved
        else:
            assert writer.torn_tail_path is None
        await _assert_strict_read(writer, path, remaining)
        extra = EventEnvelope.new("test.after", {"n": n}, actor_id="tester")
        assert await writer.append_event(extra) is True
        after = [msgspec.structs.replace(e, position=None, entity_version=None) async for e in writer.read_events()]
        assert after == [*events, extra]


async def _file_events(path: Path) -> list[EventEnvelope]:
    async with FileEventJournal(path, read_only=True) as reader:
        return [e async for e in reader.read_events()]


async def _assert_strict_read(journal: FileEventJournal, path: Path, corrupt: list[int], events: int = 4) -> None:
    if not corrupt:
        assert len([e async for e in journal.read_events(skip_corrupted=False)]) >= events
        return
    with pytest.raises(CorruptedEventError) as info:
        async for _ in journal.read_events(skip_corrupted=False):
            pass
    assert info.value.where == f"{path}:{corrupt[0]}"


GARBAGE = settings(FUZZ, max_examples=120)


@GARBAGE
@given(garbage=st.lists(garbage_lines, min_size=0, max_size=6), places=st.lists(st.integers(0, 4), min_size=6,
                                                                                   max_size=6),
       tail=st.one_of(st.none(), garbage_lines), tail_newline=st.booleans())
def test_garbage_lines_are_reported_by_number(stores: Stores, garbage: list[bytes], places: list[int],
                                              tail: bytes | None, tail_newline: bool) -> None:
    stores.run(_check_garbage(stores, garbage, places, tail, tail_newline))


@pytest.mark.long
@settings(GARBAGE, max_examples=1500)
@given(garbage=st.lists(garbage_lines, min_size=0, max_size=6), places=st.lists(st.integers(0, 4), min_size=6,
                                                                                   max_size=6),
       tail=st.one_of(st.none(), garbage_lines), tail_newline=st.booleans())
def test_garbage_lines_are_reported_by_number_long(stores: Stores, garbage: list[bytes], places: list[int],
                                                   tail: bytes | None, tail_newline: bool) -> None:
    stores.run(_check_garbage(stores, garbage, places, tail, tail_newline))


async def _check_any_bytes(stores: Stores, blob: bytes) -> None:
    """Arbitrary bytes (newlines included) around valid lines: only EventStoreErrors, and every
    complete line accounted for by the importer."""
    n = next(stores.counter)
    path = stores.path.parent / f"bytes-{n}.jsonl"
    events = fresh_events(2, f"b{n}")
    first, second = valid_lines(events)
    path.write_bytes(first + b"\n" + blob + b"\n" + second + b"\n" + blob)
    complete = path.read_bytes().count(b"\n")
    result = await import_file(path, stores.url)
    assert result.inserted + result.already_present + result.corrupt + result.repeated == complete
    assert result.inserted >= 1  # the first line always; the second unless the blob repeats its position
    await _read_new(stores, "postgres", stores.pg)
    for read_only in (True, False):
        async with FileEventJournal(path, read_only=read_only) as journal:
            got = [e async for e in journal.read_events()]
            assert got[0] == msgspec.structs.replace(events[0], position=1, entity_version=1)
            try:
                async for _ in journal.read_events(skip_corrupted=False):
                    pass
            except CorruptedEventError as exc:
                assert re.fullmatch(rf"{re.escape(str(path))}:\d+", exc.where)


@settings(FUZZ, max_examples=100)
@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_reader_or_importer(stores: Stores, blob: bytes) -> None:
    stores.run(_check_any_bytes(stores, blob))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_STORE_FIELDS = {
    "entity_version 2**40": {"entity_version": 2**40},
    "entity_version 2**100": {"entity_version": 2**100},
    "entity_version 0": {"entity_version": 0},
    "entity_version -3": {"entity_version": -3},
    "entity_version without entity_id": {"entity_id": None, "entity_version": 3},
    "schema_version 2**40": {"schema_version": 2**40},
    "event_type empty": {"event_type": ""},
    "event_type 256 characters": {"event_type": "t" * 256},
    "actor_id 101 characters": {"actor_id": "a" * 101},
    "idempotency_key empty": {"idempotency_key": ""},
    "entity_id 256 characters": {"entity_id": "e" * 256},
    "actor_id with NUL": {"actor_id": "a\u0000b"},
    "payload with NUL": {"payload": {"note": "a\u0000b"}},
    "payload key with NUL": {"payload": {"a\u0000": 1}},
    "payload nested 300 deep": {"payload": {"deep": nested(300)}},
    "payload integer of 1000 digits": {"payload": {"big": 10**1000}},
    "position -1": {"position": -1},
    "timestamp before year 1 in UTC": {"timestamp": "0001-01-01T00:00:00+01:00"},
    "timestamp at the end of time": {"timestamp": "9999-12-31T23:59:59.999999Z"},
}


@pytest.mark.parametrize("changes", HOSTILE_STORE_FIELDS.values(), ids=HOSTILE_STORE_FIELDS.keys())
async def test_reader_and_importer_agree_on_well_formed_lines_postgres_would_refuse(
        tmp_path: Path, database_url: str, changes: dict[str, Any]) -> None:
    """Lines that decode as JSON but break a rule of the envelope (or a column's range) are corrupt
    lines alike for the importer (not a driver error that aborts it), a reader and the writer: the
    same rules, the lines around them read and imported."""
    before, after = fresh_events(2, "ok")
    hostile = EventEnvelope.new("test.hostile", {}, actor_id="tester", entity_id="acct-h")
    lines = valid_lines([before, hostile, after])
    fields = msgspec.json.decode(lines[1])
    fields.update(changes)
    lines[1] = msgspec.json.encode(fields)
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    result = await import_file(path, database_url, batch_size=10)
    assert (result.inserted, result.corrupt, [n for n, _ in result.corrupt_lines]) == (2, 1, [2]), result
    async with PostgresEventJournal(database_url, pool_size=1) as pg:
        stored = [msgspec.structs.replace(e, position=None, entity_version=None) async for e in pg.read_events()]
    assert stored == [before, after]
    for read_only in (True, False):
        async with FileEventJournal(path, read_only=read_only) as journal:
            read = [msgspec.structs.replace(e, position=None, entity_version=None) async for e in journal.read_events()]
            assert read == [before, after]
            assert journal.get_metrics()["corrupted_skipped"] == 1
            await _assert_strict_read(journal, path, [2], events=2)


def test_import_cli_reports_garbage_lines_without_a_traceback(tmp_path: Path, database_url: str) -> None:
    events = fresh_events(3, "cli")
    good = valid_lines(events)
    lines = [good[0], b"\xff\xfe garbage \x00", TEMPLATE[:40], good[1], b"[1, 2, 3]", _with(payload=[]), good[2],
             b'{"event_type": 5}']
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + TEMPLATE[:17])  # and a torn tail
    for extra in (["--dry-run"], []):
        done = subprocess.run(
            [sys.executable, "-m", "eventstore", "import", str(path), "--batch-size", "2", "--database-url",
             database_url, *extra],
            capture_output=True, text=True, cwd=REPO, timeout=120, env={k: v for k, v in os.environ.items()
                                                                        if k != "DATABASE_URL"},
        )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert re.search(r"insert(ed)? 3, already present 0, corrupt 5", done.stdout), done.stdout
        for number in (2, 3, 5, 6, 8):
            assert f"corrupt line {number}:" in done.stdout


# -- 3. SQL-looking text is bound, never formatted ------------------------------------------------

SQL_TEXT = [
    "'; DROP TABLE credit_events; --",
    "'); DELETE FROM credit_events; --",
    "' OR '1'='1",
    "\" OR \"\"=\"",
    "$1", "$2::text", "$$", "$$; DROP TABLE credit_snapshots; $$", "$tag$ x $tag$",
    ":name", ":event_type", "%s", "%(name)s", "%%", "{0}", "{event_type}",
    "\\", "\\\\'", "\\'; --", "E'\\x00'", "E'\\\\x27'", "U&'\\0000'", "\\u0000", "\\x00",
    "/* comment */", "-- comment", ";", "credit_events", "1; SELECT pg_sleep(0)",
    "' UNION SELECT * FROM credit_events --", "%' OR 1=1 --", "_%", "*", "?", "@>", "::jsonb",
    "'||(SELECT version())||'", "\r\n\t", "\u2028'; --", "ʼ OR 1=1 --", "' AND 1=(SELECT 1/0) --",
]


async def test_sql_looking_text_is_stored_verbatim_everywhere(open_journal: Any) -> None:
    """Each SQL-looking text as event_type, entity_id, actor_id, idempotency_key, payload keys and
    values, and as every filter and snapshot name: stored and found verbatim, nothing else touched."""
    journal = await open_journal()
    canary = EventEnvelope.new("canary", {"alive": True}, actor_id="tester", entity_id="canary")
    assert await journal.append_event(canary) is True

    def plain(events: list[EventEnvelope]) -> list[EventEnvelope]:
        return [msgspec.structs.replace(e, position=None, entity_version=None) for e in events]

    appended = [canary]
    for text in SQL_TEXT:
        hostile = [
            EventEnvelope.new(text[:50], {text: text, "list": [text], "nested": {text: {"v": text}}},
                              actor_id=text[:100], entity_id=text, idempotency_key=f"{text}#{i}")
            for i in range(2)
        ]
        assert await journal.append_event(hostile[0], expected_version=0) is True
        assert await journal.append_events([hostile[1]], expected_versions={text: 1}) == [True]
        assert await journal.append_event(hostile[0]) is False  # its key is found again, verbatim
        appended += hostile
        assert plain([e async for e in journal.read_entity(text)]) == hostile, text
        assert plain([e async for e in journal.query_events(event_type=text[:50])]) == hostile, text
        assert plain([e async for e in journal.query_events(payload_contains={text: text})]) == hostile, text
        nested = {"nested": {text: {"v": text}}}
        assert plain([e async for e in journal.query_events(payload_contains=nested)]) == hostile, text
        assert plain([e async for e in journal.query_events(payload_contains={"list": [text]}, event_type=text[:50],
                                                            correlation_id=hostile[1].correlation_id)]) == hostile[1:]
        assert [e async for e in journal.query_events(payload_contains={text: text + "x"})] == []
        assert [e async for e in journal.read_entity(text + "'")] == []
        await journal.save_snapshot(text[:200], 2, {text: [text]})
        snapshot = await journal.load_snapshot(text[:200])
        assert snapshot is not None and (snapshot.name, snapshot.position, snapshot.state) == (text[:200], 2,
                                                                                                {text: [text]})

    # Nothing else was touched: every event, the canary and the count, also through a fresh journal.
    everything = [e async for e in journal.read_events()]
    assert plain(everything) == appended
    assert [e async for e in journal.read_entity("canary")] == everything[:1]
    await journal.close()
    reopened = await open_journal()
    assert [e async for e in reopened.read_events()] == everything
    assert reopened.get_metrics()["total_events"] == len(appended)
    for text in SQL_TEXT:
        assert (await reopened.load_snapshot(text[:200])).state == {text: [text]}  # type: ignore[union-attr]


async def test_sql_looking_text_leaves_the_tables_intact(database_url: str) -> None:
    """All of SQL_TEXT through one PostgreSQL journal, then the catalog and the rows checked directly."""
    async with PostgresEventJournal(database_url, pool_size=2) as journal:
        canary = EventEnvelope.new("canary", {"alive": True}, actor_id="tester", entity_id="canary")
        await journal.append_event(canary)
        for i, text in enumerate(SQL_TEXT):
            e = EventEnvelope.new(text[:50], {text: i}, actor_id=text[:100], entity_id=text, idempotency_key=text)
            assert await journal.append_event(e) is True
            await journal.save_snapshot(text[:200], i + 1, {"s": text})
            assert [x async for x in journal.query_events(event_type=text[:50], payload_contains={text: i})][-1] \
                .idempotency_key == text
    conn = await asyncpg.connect(database_url)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"credit_events", "credit_snapshots", "_yoyo_migration"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM credit_events") == len(SQL_TEXT) + 1
        assert await conn.fetchval("SELECT count(*) FROM credit_snapshots") == len(set(t[:200] for t in SQL_TEXT))
        keys = [r[0] for r in await conn.fetch("SELECT idempotency_key FROM credit_events ORDER BY id")]
        assert keys == [canary.idempotency_key, *SQL_TEXT]
        row = await conn.fetchrow("SELECT event_type, payload::text FROM credit_events WHERE entity_id = 'canary'")
        assert tuple(row) == ("canary", '{"alive": true}')
    finally:
        await conn.close()


HOSTILE_FILTERS = [
    ("event_type with NUL", {"event_type": "a\x00b"}),
    ("event_type with a lone surrogate", {"event_type": "a\ud800"}),
    ("payload_contains value with NUL", {"payload_contains": {"k": "a\x00"}}),
    ("payload_contains key with NUL", {"payload_contains": {"k\x00": 1}}),
    ("payload_contains with a lone surrogate", {"payload_contains": {"k": "\udfff"}}),
    ("payload_contains NaN", {"payload_contains": {"k": float("nan")}}),
    ("payload_contains Infinity", {"payload_contains": {"k": float("inf")}}),
    ("payload_contains a set", {"payload_contains": {"k": {1}}}),
    ("payload_contains too deep", {"payload_contains": {"d": __import__("functools").reduce(lambda v, _: [v],
                                                                                            range(300), [])}}),
]


HOSTILE_ENTITY_FILTERS = ["a\x00b", "\ud800", "x" * 300, ""]
HOSTILE_SNAPSHOT_NAMES = ["a\x00b", "\ud800", "", "n" * 201, "../../etc/passwd", "con", ".", "a/b\\c", "%2e%2e"]


def test_hostile_filters_same_answer_in_both_backends(stores: Stores) -> None:
    """Filters no stored event can match (a NUL, a lone surrogate, NaN, not JSON, too deep): both
    backends give the same InvalidEventError, never a driver error in one and nothing in the other.
    The same for read_entity's entity_id and for snapshot names."""

    async def ask(call: Any) -> Any:
        try:
            result = call()
            return [e async for e in result] if hasattr(result, "__aiter__") else await result
        except InvalidEventError as exc:
            return str(exc)

    async def snapshot_round_trip(journal: Any, name: str) -> Any:
        await journal.save_snapshot(name, 1, {"s": name})
        loaded = await journal.load_snapshot(name)
        return None if loaded is None else (loaded.name, loaded.position, loaded.state)

    async def check() -> None:
        for _, journal in stores.journals():
            await journal.append_event(EventEnvelope.new("x", {"k": None}, actor_id="tester", idempotency_key="f1"))
        for what, filters in HOSTILE_FILTERS:
            answers = [await ask(lambda j=journal, f=filters: j.query_events(**f)) for _, journal in stores.journals()]
            assert answers[0] == answers[1], what
            assert isinstance(answers[0], str) and answers[0].startswith("invalid event: "), (what, answers[0])
        for entity_id in HOSTILE_ENTITY_FILTERS:
            answers = [await ask(lambda j=journal, e=entity_id: j.read_entity(e)) for _, journal in stores.journals()]
            assert answers[0] == answers[1], entity_id
        for name in HOSTILE_SNAPSHOT_NAMES:
            answers = [await ask(lambda j=journal, n=name: snapshot_round_trip(j, n)) for _, journal in stores.journals()]
            assert answers[0] == answers[1], name
            assert isinstance(answers[0], str) or answers[0] == (name, 1, {"s": name})
        assert not (stores.path.parent.parent / "etc").exists()

    stores.run(check())


def test_sql_files_use_only_bound_parameters() -> None:
    """Every query in sql/*.sql takes its values as aiosql :name parameters (bound as $n by asyncpg):
    no Python formatting markers, no quoted placeholders."""
    sql_dir = REPO / "sql"
    files = sorted(sql_dir.glob("*.sql"))
    assert files
    for path in files:
        body = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
        assert not re.search(r"%\(?\w*\)?s|\{\w*\}|\$\d", body), path
        for literal in re.findall(r"'[^'\n]*'", body):
            assert not re.search(r"(?<!:):[A-Za-z_]", literal), f"{path}: {literal} (a :param in a literal is not bound)"
    from eventstore.postgres.queries import QUERIES

    for name in QUERIES.available_queries:
        query = getattr(QUERIES, name)
        if not hasattr(query, "sql") or name.endswith("_cursor"):  # aiosql's cursor variants repeat a query
            continue
        compiled = re.sub(r"'[^']*'", "''", query.sql).replace("::", "")  # literals and casts out
        assert not re.search(r":[A-Za-z_]", compiled), f"{name}: a parameter left unbound: {query.sql}"
        assert len(set(re.findall(r"\$(\d+)", compiled))) == len(query.parameters or ()), name
