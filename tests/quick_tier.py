"""The quick tier's rule, kept by a check: a test that starts TensorFlow in a subprocess, or a
service, is marked `@pytest.mark.slow` (pyproject.toml's marker). Registered in conftest.py.

A test that trains through the run recipe (a model fitted, evaluated and logged to MLflow) is slow
too: marked where it calls the recipe, and here for the session fixtures that train runs for the
tests that read them back (ensembles, predict, report), about a minute per test process.

During each test not marked slow:
- a Python process it starts reports a TensorFlow import or a port it binds (a server) through
  quick_guard/sitecustomize.py, put on PYTHONPATH, into a folder of the test's own;
- subprocess.Popen notes the services that are not Python (PostgreSQL, Slurm) it is asked to start.
Either fails the test, with what it started. A CLI case refused before TensorFlow loads passes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

GUARD = Path(__file__).parent / "quick_guard"
# Programs that start (or are) a service the tests use, by the name they are run as.
SERVICES = {"initdb", "pg_ctl", "postgres", "slurm.sh", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd"}
SERVICES |= {"gcs_server", "raylet"}  # Ray's, which ray.init starts
FOLDER = "SIMPSONS_QUICK_GUARD"


class _Guard:
    """What the running test started; one test at a time per process."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.services: list[str] = []
        self.environ: dict[str, str | None] = {}
        self.popen_init = subprocess.Popen.__init__

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="simpsons-quick-"))
        self.services = []
        self.environ = {name: os.environ.get(name) for name in (FOLDER, "PYTHONPATH")}
        os.environ[FOLDER] = str(self.folder)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")]))
        guard, popen_init = self, self.popen_init

        def noting_services(popen: subprocess.Popen, args, *rest, **kwargs) -> None:
            words = shlex.split(args) if isinstance(args, str) else [str(arg) for arg in args]
            if any(Path(word).name in SERVICES for word in words):
                guard.services.append(" ".join(words)[:300])
            popen_init(popen, args, *rest, **kwargs)

        subprocess.Popen.__init__ = noting_services

    def found(self) -> list[str]:
        """One line per process that broke the rule, so far."""
        notes = sorted(self.folder.iterdir()) if self.folder else []
        return [f"service: {command}" for command in self.services] + [note.read_text() for note in notes]

    def stop(self) -> None:
        subprocess.Popen.__init__ = self.popen_init
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


_guard = _Guard()


TRAINING_FIXTURES = {"trained_store", "flip_pair"}  # conftest.py's: each trains runs through the recipe


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):  # fixturenames: what it uses, through other fixtures too
            item.add_marker(pytest.mark.slow)


def _quick(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures: what they start counts too."""
    if _quick(item):
        _guard.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and _quick(item) and (found := _guard.found()):
        report.outcome = "failed"
        report.longrepr = (
            "a test that starts TensorFlow in a subprocess or a service is marked @pytest.mark.slow "
            "(pyproject.toml); this one started:\n" + "\n".join(found)
        )


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """After the test's fixtures are torn down."""
    if _quick(item):
        _guard.stop()
