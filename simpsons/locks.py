"""Exclusive flocks on lock files: held for as long as the handle is open, freed by any exit, kill -9 too."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[IO[str]]:
    """Wait for the lock on `path`, and hold it inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock


def try_lock(path: Path) -> IO[str] | None:
    """The locked handle of `path`, to close to free it; None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
