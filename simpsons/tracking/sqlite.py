"""A SQLite store's file and its inter-process lock (the lock file beside the database).

No TensorFlow here; nothing of MLflow either: store.py sets the store up under this lock, and
races.py makes writes that several processes make at once under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

SQLITE_PREFIX = "sqlite:///"


def absolute_sqlite_uri(uri: str) -> str:
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        return SQLITE_PREFIX + str(Path(uri.removeprefix(SQLITE_PREFIX)).resolve())
    return uri


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix(SQLITE_PREFIX))


_held = threading.local()  # the store locks this thread holds


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive inter-process lock on a SQLite store (a no-op for servers and other databases:
    races.py says what stands in for it there). Released by the OS when the process dies.

    Reentrant in a thread: flock locks belong to an open file, so taking it again through a second
    open file would wait for ourselves forever.
    """
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    path = sqlite_path(uri)
    held = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    with lock_file(path) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)


def lock_file(database: Path) -> IO[str]:
    return database.with_name(database.name + ".lock").open("a")
