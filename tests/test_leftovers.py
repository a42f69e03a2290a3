"""The test servers a killed test run left are stopped by the next session, and only those (tests/leftovers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import leftovers
import psutil

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]

# A test process that starts a server and is killed before its teardown (os._exit: no finally runs).
KILLED_TEST = """
import os, subprocess, sys
from pathlib import Path
import leftovers
server = subprocess.Popen(SLEEPER, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
folder = Path(sys.argv[1])
folder.mkdir()
with leftovers.recorded(server.pid, leftovers.GROUP, folder):
    print(server.pid, flush=True)
    os._exit(0)
"""


def test_only_the_servers_of_a_test_process_that_is_gone_are_stopped_with_their_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(leftovers, "RECORDS", tmp_path / "servers")
    env = os.environ | {"SIMPSONS_TEST_STATE": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}
    code = f"SLEEPER = {SLEEPER!r}\n{KILLED_TEST}"
    command = [sys.executable, "-c", code, str(tmp_path / "data")]
    left = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert left.returncode == 0, left.stderr
    orphan = psutil.Process(int(left.stdout))
    ours = subprocess.Popen(SLEEPER, start_new_session=True)  # a server of a test process that runs: this one
    try:
        with leftovers.recorded(ours.pid, leftovers.GROUP):
            stopped = leftovers.stop_leftovers()
            assert stopped == [f"group {orphan.pid} ({tmp_path / 'data'})"]
            assert not psutil.pid_exists(orphan.pid) or orphan.status() == psutil.STATUS_ZOMBIE
            assert not (tmp_path / "data").exists()
            assert ours.poll() is None, "a server of a live test process is left alone"
            assert [path.name for path in (tmp_path / "servers").iterdir()] == [f"{os.getpid()}-{ours.pid}.json"]
        assert list((tmp_path / "servers").iterdir()) == []  # its record goes with it
    finally:
        ours.kill()
        ours.wait()
