"""The progress bar of the CLI's long commands (import, export, verify), drawn by tqdm."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

#: ``import [#####-----]  42%  12,345 events  2,961 events/s  ETA 00:07``
BAR_FORMAT = "{desc} [{bar:30}] {percentage:3.0f}%  {events}  ETA {remaining}"


class _Bar(tqdm):  # type: ignore[type-arg]
    """tqdm counting ``done`` (bytes or rows), showing the events counted beside it."""

    events = ""

    @property
    def format_dict(self) -> dict[str, object]:
        return {**super().format_dict, "events": self.events}


class ProgressBar:
    """A bar redrawn in place on a terminal, at most ten times a second; nothing at all when the
    stream is not a terminal (a pipe, a file, CI logs)."""

    def __init__(self, label: str, stream: TextIO | None = None, *, unit: str = "events", interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.unit = unit
        self.count = 0
        self.started = time.monotonic()
        self._bar = _Bar(
            desc=label, total=0, file=self.stream, disable=not self.enabled, bar_format=BAR_FORMAT,
            ascii=" #", mininterval=interval, leave=True,
            ncols=200, nrows=50,  # a terminal that reports no size (0 x 0: a fresh pty) still gets the bar
        )

    def update(self, done: int, total: int, count: int | None = None) -> None:
        """``done``/``total`` drive the bar and ETA (bytes of a file, or rows); ``count`` is the
        number of events so far, for the rate (default: ``done``)."""
        self.count = done if count is None else count
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        self._bar.total = max(total, done, 1)
        self._bar.events = f"{self.count:,} {self.unit}  {rate:,.0f} {self.unit}/s"
        self._bar.update(done - self._bar.n)

    def finish(self) -> None:
        self._bar.close()
