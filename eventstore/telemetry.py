"""OpenTelemetry instrumentation, present only when ``opentelemetry-api`` is installed
(``pip install eventstore[otel]``).

Spans: ``eventstore.append`` (every append method; attributes ``eventstore.backend``,
``eventstore.events``, ``eventstore.duplicates``), ``eventstore.read_events``,
``eventstore.read_entity``, ``eventstore.query_events`` and ``eventstore.subscribe`` (from the
first event asked for to the end of the read; ``eventstore.events`` read). Metrics:
``eventstore.append.duration`` (histogram, seconds, per append call),
``eventstore.append.events`` / ``eventstore.append.duplicates`` / ``eventstore.append.conflicts``
(counters) and ``eventstore.fence.wait`` (histogram, seconds: how long a PostgreSQL read waited
for the settled high-water mark). They go wherever the application's OpenTelemetry SDK sends
them. With the API but no SDK installed nothing is recorded, and the work to feed the API's
no-op providers is skipped (a clock read per call; the providers are looked at once a second).

Without the package, :func:`traced_append` leaves the method it decorates unchanged, and
:data:`TELEMETRY` is ``None``: no wrapper, no call, nothing to pay. ``get_metrics()`` is the
same either way.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .errors import ConcurrencyError

try:
    from opentelemetry import metrics, trace
except ImportError:  # the extra is not installed
    metrics = trace = None  # type: ignore[assignment]

T = TypeVar("T")
NAME = "eventstore"


class Telemetry:
    """The tracer and instruments (proxies until the application installs an SDK)."""

    def __init__(self) -> None:
        self.use()

    def use(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        """Send to these providers instead of the global ones (``None``: the global ones)."""
        self._explicit = tracer_provider is not None or meter_provider is not None
        self._sdk_seen = False
        self._next_look = 0.0
        self.tracer = trace.get_tracer(NAME, tracer_provider=tracer_provider)
        meter = metrics.get_meter(NAME, meter_provider=meter_provider)
        self.append_duration = meter.create_histogram(
            "eventstore.append.duration", unit="s", description="Time an append call took, durable when it returned")
        self.appended = meter.create_counter("eventstore.append.events", unit="{event}", description="Events stored")
        self.duplicates = meter.create_counter(
            "eventstore.append.duplicates", unit="{event}", description="Events not stored: their idempotency_key was")
        self.conflicts = meter.create_counter(
            "eventstore.append.conflicts", unit="{conflict}", description="Appends refused: an entity was not at the expected version")
        self.fence_wait = meter.create_histogram(
            "eventstore.fence.wait", unit="s", description="Time a read waited for the settled high-water mark")

    def recording(self) -> bool:
        """Whether an SDK (or an explicit provider) receives anything. Until the application
        installs one, the API's providers drop everything and the work to feed them is skipped;
        they are looked at again at most once a second (an SDK installed later is used from then)."""
        if self._explicit or self._sdk_seen:
            return True
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + 1.0
        tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
        self._sdk_seen = not (
            isinstance(tracer_provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
            and (isinstance(meter_provider, metrics.NoOpMeterProvider) or type(meter_provider).__name__ == "_ProxyMeterProvider")
        )
        return self._sdk_seen  # once installed, a global provider stays

    async def append(self, backend: str, events: int, call: Awaitable[T]) -> T:
        if not self.recording():
            return await call
        attributes = _attributes(backend)
        started = time.perf_counter()
        with self.tracer.start_as_current_span("eventstore.append", attributes={**attributes, "eventstore.events": events}) as span:
            try:
                result = await call
            except ConcurrencyError:
                self.conflicts.add(1, attributes)
                raise
            finally:
                self.append_duration.record(time.perf_counter() - started, attributes)
            answers = result if isinstance(result, list) else [result]
            duplicates = sum(1 for answer in answers if not answer.stored)
            span.set_attribute("eventstore.duplicates", duplicates)
            if duplicates:
                self.duplicates.add(duplicates, attributes)
            if len(answers) > duplicates:
                self.appended.add(len(answers) - duplicates, attributes)
            return result

    async def read(self, name: str, backend: str, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        count = 0
        with self.tracer.start_as_current_span(f"eventstore.{name}", attributes={"eventstore.backend": backend}) as span:
            try:
                async for event in events:
                    count += 1
                    yield event
            finally:
                span.set_attribute("eventstore.events", count)
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()


TELEMETRY: Telemetry | None = Telemetry() if trace is not None else None


@functools.cache
def _attributes(backend: str) -> dict[str, str]:
    return {"eventstore.backend": backend}


def traced_append(*, batch: bool) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Put an append primitive of the base class (first argument: the event, or with ``batch``
    the events) in an ``eventstore.append`` span with its metrics; leave it as it is without
    OpenTelemetry."""

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        telemetry = TELEMETRY
        if telemetry is None:
            return method

        @functools.wraps(method)
        async def traced(self: Any, events: Any, *args: Any, **kwargs: Any) -> T:
            if batch and not isinstance(events, list):
                events = list(events)  # what the method does first anyway; counted here
            count = len(events) if batch else 1
            return await telemetry.append(self.backend, count, method(self, events, *args, **kwargs))

        return traced

    return decorate


def traced_read(name: str, backend: str, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """``events`` read inside an ``eventstore.<name>`` span; ``events`` itself without OpenTelemetry,
    or while no SDK is installed."""
    if TELEMETRY is None or not TELEMETRY.recording():
        return events
    return TELEMETRY.read(name, backend, events)


def record_fence_wait(seconds: float) -> None:
    if TELEMETRY is not None and TELEMETRY.recording():
        TELEMETRY.fence_wait.record(seconds)
