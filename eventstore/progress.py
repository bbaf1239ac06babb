"""A terminal progress bar for the CLI's long commands (import, export, verify)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#####-----]  42%  12,345 events/s  ETA 0:00:07`` redrawn in place on a TTY, at most
    ten times a second; does nothing when the stream is not a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None, *, unit: str = "events") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.unit = unit
        self.count = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, total: int, count: int | None = None) -> None:
        """``done``/``total`` drive the bar and ETA (bytes of a file, or rows); ``count`` is the
        number of events so far, for the rate (default: ``done``)."""
        self.count = done if count is None else count
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.1 and done < total):
            return
        self._drawn = now
        self.stream.write("\r" + render(self.label, done, total, self.count, now - self.started, self.unit))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def render(label: str, done: int, total: int, count: int, elapsed: float, unit: str = "events", width: int = 30) -> str:
    fraction = min(1.0, done / total) if total > 0 else 1.0
    filled = int(fraction * width)
    rate = count / elapsed if elapsed > 0 else 0.0
    if 0 < fraction < 1 and elapsed > 0:
        remaining = int(elapsed * (1 - fraction) / fraction)
        eta = f"{remaining // 3600}:{remaining // 60 % 60:02d}:{remaining % 60:02d}"
    else:
        eta = "-:--:--" if fraction < 1 else "0:00:00"
    return f"{label} [{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%}  {count:,} {unit}  {rate:,.0f} {unit}/s  ETA {eta}"
