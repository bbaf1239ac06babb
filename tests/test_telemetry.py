"""OpenTelemetry instrumentation (eventstore[otel]): spans and metrics seen through the SDK's
in-memory exporter and reader, on both backends; and nothing at all without the package."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventstore import ConcurrencyError, telemetry

from .conftest import OpenJournal
from .helpers import event


class Recorded:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer_provider, self.meter_provider = tracer_provider, MeterProvider(metric_readers=[self.reader])

    def finished(self, name: str) -> list[dict[str, Any]]:
        return [dict(s.attributes or {}) for s in self.spans.get_finished_spans() if s.name == name]

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [point for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == name for point in m.data.data_points]


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    assert telemetry.TELEMETRY is not None  # the test extra installs opentelemetry
    seen = Recorded()
    telemetry.TELEMETRY.use(seen.tracer_provider, seen.meter_provider)
    yield seen
    telemetry.TELEMETRY.use()


async def test_appends_and_reads_make_spans_and_metrics(open_journal: OpenJournal, recorded: Recorded) -> None:
    journal = await open_journal()
    first = event(entity_id="acct")
    assert await journal.append_event(first)
    assert not await journal.append_event(first)  # a duplicate
    await journal.append_many([event(entity_id="acct"), event(entity_id="b"), event()])
    with pytest.raises(ConcurrencyError):
        await journal.append(event(entity_id="acct"), expected_version=0)

    appends = recorded.finished("eventstore.append")
    assert [(a["eventstore.events"], a.get("eventstore.duplicates")) for a in appends] == [(1, 0), (1, 1), (3, 0), (1, None)]
    assert {a["eventstore.backend"] for a in appends} == {journal.backend}
    assert [p.value for p in recorded.metric("eventstore.append.events")] == [4]
    assert [p.value for p in recorded.metric("eventstore.append.duplicates")] == [1]
    assert [p.value for p in recorded.metric("eventstore.append.conflicts")] == [1]
    assert [p.count for p in recorded.metric("eventstore.append.duration")] == [4]

    assert len([e async for e in journal.read_events()]) == 4
    assert len([e async for e in journal.read_entity("acct")]) == 2
    assert len([e async for e in journal.query_events(event_type="credits.minted", limit=3)]) == 3
    subscription = journal.subscribe(after=0)
    assert [(await subscription.__anext__()).position for _ in range(2)] == [1, 2]
    await subscription.aclose()
    counts = {name: [s["eventstore.events"] for s in recorded.finished(f"eventstore.{name}")]
              for name in ("read_events", "read_entity", "query_events", "subscribe")}
    assert counts == {"read_events": [4], "read_entity": [2], "query_events": [3], "subscribe": [2]}
    if journal.backend == "postgres":  # reads in position order wait for the fence
        assert sum(p.count for p in recorded.metric("eventstore.fence.wait")) >= 2  # read_events, query_events


def test_without_the_package_nothing_is_wrapped() -> None:
    probe = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if the extra were not installed
        "from eventstore import telemetry, FileEventJournal\n"
        "from eventstore.base import BaseEventJournal\n"
        "assert telemetry.TELEMETRY is None\n"
        "assert not hasattr(BaseEventJournal._append_one, '__wrapped__')\n"
        "assert not hasattr(BaseEventJournal._append_batch, '__wrapped__')\n"
        "marker = object()\n"
        "assert telemetry.traced_read('read_events', 'file', marker) is marker\n"
        "print('bare')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "bare", done.stderr
    with_package = subprocess.run(
        [sys.executable, "-c", "from eventstore.base import BaseEventJournal; print(hasattr(BaseEventJournal._append_one, '__wrapped__'))"],
        capture_output=True, text=True, timeout=60,
    )
    assert with_package.stdout.strip() == "True"  # the probe above would pass vacuously otherwise


async def test_with_the_api_but_no_sdk_reads_are_not_wrapped(tmp_path) -> None:
    from eventstore import FileEventJournal

    assert telemetry.TELEMETRY is not None and not telemetry.TELEMETRY.recording()  # no SDK installed here
    async with FileEventJournal(tmp_path / "j.jsonl") as journal:
        await journal.append_event(event())
        reader = journal.read_events()
        assert reader.__qualname__ != "Telemetry.read"  # the backend's own generator, nothing in between
        assert len([e async for e in reader]) == 1
