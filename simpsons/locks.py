"""Exclusive locks between processes, freed by any exit, kill -9 too: flocks on lock files (held for as
long as the handle is open), and PostgreSQL advisory locks (held for as long as the connection is)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

ADVISORY_WAIT_SECONDS = 300  # a schema created or upgraded by another process, on a loaded machine
ADVISORY_POLL_SECONDS = 0.1


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
def postgres_advisory(
    uri: str, name: str, connect_args: Mapping[str, Any] | None = None, wait_seconds: float = ADVISORY_WAIT_SECONDS
) -> Iterator[None]:
    """Wait up to `wait_seconds` for the PostgreSQL advisory lock called `name` in the database of
    `uri`, and hold it inside the block; TimeoutError if another process holds it all that time.

    It belongs to the database, so it holds for processes on any machine, and PostgreSQL drops it
    with the connection of a process that dies. A holder that is stopped (Ctrl-Z, a suspended Slurm
    job) keeps it: hence the deadline rather than PostgreSQL's wait without one.
    """
    import sqlalchemy  # only where a PostgreSQL store is used

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    # AUTOCOMMIT: the lock's connection holds no transaction while the block works on others.
    engine = sqlalchemy.create_engine(uri, connect_args=dict(connect_args or {}), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            deadline = time.monotonic() + wait_seconds
            try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            while not connection.execute(try_lock, {"key": key}).scalar():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held the database's lock {name!r} for {wait_seconds:g} s")
                time.sleep(ADVISORY_POLL_SECONDS)
            try:
                yield
            finally:
                # A connection that dropped has freed the lock already: keep the block's own error.
                with contextlib.suppress(Exception):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()
