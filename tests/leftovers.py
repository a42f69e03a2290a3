"""Servers the tests start (PostgreSQL, `mlflow server`, `mlflow ui`, `mlflow models serve`), recorded
so that a test run killed before its teardown (a timeout, kill -9) leaves none running for long:
the next test session stops those whose test process is gone (conftest.py, at its start).

A record is a JSON file under TEST_STATE/servers, one per server, naming the test process that
started it and the server's process, each by pid and start time (a reused pid is another process),
and the folder the server's data lies in. Only a recorded process, still the same, is signalled,
and only once the test process that recorded it is gone: servers of a test session running
beside this one are left alone.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

# Per user: another user's test servers are none of ours (and their records not writable).
TEST_STATE = Path(
    os.environ.get("SIMPSONS_TEST_STATE") or Path(tempfile.gettempdir()) / f"simpsons-tests-{getpass.getuser()}"
)
RECORDS = TEST_STATE / "servers"
STOP_SECONDS = 30.0

GROUP = "group"  # a process group led by the recorded process (a server started in a session of its own)
POSTMASTER = "postmaster"  # PostgreSQL's postmaster: SIGINT is its fast shutdown


def _identity(pid: int) -> list[float]:
    return [pid, psutil.Process(pid).create_time()]


def _same_process(identity: list[float]) -> psutil.Process | None:
    """The process recorded as (pid, start time), if it still runs; None if it has exited."""
    pid, started = identity
    try:
        process = psutil.Process(int(pid))
        if abs(process.create_time() - started) < 1 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.Error:
        pass
    return None


@contextlib.contextmanager
def recorded(pid: int, kind: str, folder: Path | None = None) -> Iterator[None]:
    """While the block runs, the server process `pid` (of `kind`) is recorded as this process's;
    `folder`, its data, is removed with it should a later session have to stop it."""
    RECORDS.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = RECORDS / f"{os.getpid()}-{pid}.json"
    entry = {"owner": _identity(os.getpid()), "server": _identity(pid), "kind": kind, "folder": str(folder or "")}
    record.write_text(json.dumps(entry))
    try:
        yield
    finally:
        record.unlink(missing_ok=True)


def stop_leftovers() -> list[str]:
    """Stop the recorded servers whose test process is gone, remove their folders and records;
    returns what was stopped, e.g. ['postmaster 1234 (/tmp/simpsons-postgres-x)']."""
    stopped = []
    for record in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        try:
            entry = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # being written by a test process just now, or not ours to read
        if _same_process(entry["owner"]) is not None:
            continue  # its test session runs
        server = _same_process(entry["server"])
        if server is not None:
            _stop(server, entry["kind"])
            stopped.append(f"{entry['kind']} {server.pid}" + (f" ({entry['folder']})" if entry["folder"] else ""))
        if entry["folder"]:
            shutil.rmtree(entry["folder"], ignore_errors=True)
        record.unlink(missing_ok=True)
    return stopped


def _stop(server: psutil.Process, kind: str) -> None:
    """Ask, then make sure: SIGTERM to the group (SIGINT to a postmaster), SIGKILL after STOP_SECONDS."""
    if kind == GROUP and os.getpgid(server.pid) == server.pid:
        members = [server, *server.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
    else:
        members = [server]
        with contextlib.suppress(psutil.Error):
            server.send_signal(signal.SIGINT if kind == POSTMASTER else signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=STOP_SECONDS)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_SECONDS)
