"""Wall seconds per phase of a run, logged as `seconds/<phase>` metrics (one chart group in the UI).

benchmarks/cost_per_run.py reads them back to print where each run's time went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

METRIC_PREFIX = "seconds/"


class Stopwatch:
    """Seconds per named phase; a phase entered again adds up (fit, in two fine-tuning phases)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {METRIC_PREFIX + name: round(seconds, 4) for name, seconds in self.seconds.items()}
