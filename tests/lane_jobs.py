"""Jobs for tests/test_launchers.py, in a module light to import: each loky worker imports it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
from hydra.core.utils import JobReturn, JobStatus


def job(idx: int, overrides: list[str], folder: str) -> JobReturn:
    """Job 0 says it has started, then SIGKILLs its own process; job 1 waits until job 0's process
    is gone and returns; job 2 just returns. Each returns its pid."""
    started = Path(folder) / "victim-started"
    if idx == 0:
        started.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    if idx == 1:
        deadline = time.monotonic() + 120
        while not started.exists() or psutil.pid_exists(int(started.read_text() or 0)):
            assert time.monotonic() < deadline, "job 0 never died"
            time.sleep(0.05)
    result = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    result.return_value = os.getpid()
    return result
