"""Wall seconds per phase of a run, logged in one `timings.json` artifact, out of the metrics: as
metrics they were seven one-bar charts that the UI's Metrics tab opened on, above the learning curves.

benchmarks/cost_per_run.py reads them back to print where each run's time went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stopwatch:
    """Seconds per named phase; a phase entered again adds up (fit, in two fine-tuning phases)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def note(self, name: str, value: float) -> None:
        """Another timing (feature_extraction_seconds, feature_extraction_images_per_second)."""
        self.notes[name] = round(value, 4)

    def timings(self) -> dict[str, Any]:
        """What timings.json holds: each phase's seconds, then the notes."""
        return {"seconds": {name: round(seconds, 4) for name, seconds in self.seconds.items()}, **self.notes}
