"""Exclusive locks between processes, freed by any exit, kill -9 too: flocks on lock files (held for as
long as the handle is open), and PostgreSQL advisory locks (held for as long as the connection is)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any


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


@contextlib.contextmanager
def postgres_advisory(uri: str, name: str, connect_args: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Wait for the PostgreSQL advisory lock called `name` in the database of `uri`, and hold it
    inside the block. It belongs to the database, so it holds for processes on any machine, and
    PostgreSQL drops it with the connection of a process that dies."""
    import sqlalchemy  # only where a PostgreSQL store is used

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(uri, connect_args=dict(connect_args or {}))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.rollback()  # no transaction left open while the block works on other connections
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.rollback()
    finally:
        engine.dispose()
