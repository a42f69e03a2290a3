"""The MLflow store on real SQLite files: setup under a lock, experiments, artifacts, URIs."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from simpsons.errors import ConfigError
from simpsons.tracking.store import check, configure, ensure_experiment, redact_uri

# One process of the concurrency test: set up the store, create the experiment, log a run. It
# imports everything first and then waits for the test's go file, so that all processes hit the
# fresh store at the same moment, not one after the other as their imports finish.
FIRST_USE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow
    from simpsons.tracking import store
    uri, folder, index = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    (folder / f"ready-{index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    uri = store.configure(uri)
    experiment = store.ensure_experiment(uri, "first use")
    with mlflow.start_run(experiment_id=experiment, run_name=f"writer {index}"):
        for step in range(20):
            mlflow.log_metric("value", step, step=step)
    """
)


def test_relative_sqlite_store_is_made_absolute_and_artifacts_sit_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = configure("sqlite:///runs.db")
    assert uri == f"sqlite:///{tmp_path / 'runs.db'}"
    experiment_id = ensure_experiment(uri, "my experiment")
    location = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "runs-mlruns" / "my_experiment").as_uri()  # mlruns/ is mlflow.db's
    assert ensure_experiment(uri, "my experiment") == experiment_id


def test_a_new_experiment_is_described_with_the_data_set_that_created_it(tracking_uri):
    experiment = MlflowClient(tracking_uri).get_experiment(ensure_experiment(tracking_uri, "described", "demo"))
    note = experiment.tags["mlflow.note.content"]  # the UI's Description
    assert note.startswith("Transfer-learning image classifiers on the `demo` data set") and "best_*" in note


def test_a_deleted_experiment_is_a_clear_error(tracking_uri):
    experiment_id = ensure_experiment(tracking_uri, "gone")
    MlflowClient(tracking_uri).delete_experiment(experiment_id)
    with pytest.raises(ConfigError, match=rf"tracking.experiment='gone' is deleted .* --experiment-id {experiment_id}"):
        ensure_experiment(tracking_uri, "gone")


def test_passwords_never_reach_the_logged_uri():
    assert redact_uri("postgresql://me:s3cret@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    assert redact_uri(f"sqlite:///{Path('/a/mlflow.db')}") == "sqlite:////a/mlflow.db"


@pytest.mark.slow  # Python subprocesses that load MLflow and write the store: seconds apiece
def test_four_processes_on_a_fresh_store_set_it_up_once_and_all_write(tmp_path):
    """Before the store lock, 3 of 5 such trials left the store unusable (alembic's temporary tables)."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE, uri, str(tmp_path), str(i)], stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:  # a guard, not a result
        time.sleep(0.05)
    (tmp_path / "go").touch()
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], "\n".join(errors)[-3000:]

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "first use"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"writer {i}" for i in range(4)]
    assert all(run.info.status == "FINISHED" and run.data.metrics["value"] == 19 for run in runs)


def test_two_stores_in_one_folder_keep_their_own_artifacts(tmp_path):
    locations = {}
    for name in ("mlflow", "other"):
        uri = configure(f"sqlite:///{tmp_path / name}.db")
        experiment_id = ensure_experiment(uri, "simpsons")
        locations[name] = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert locations == {
        "mlflow": (tmp_path / "mlruns" / "simpsons").as_uri(),  # where a plain `mlflow ui` looks
        "other": (tmp_path / "other-mlruns" / "simpsons").as_uri(),
    }


@pytest.mark.slow  # Python subprocesses that load MLflow and write the store: seconds apiece
def test_checking_a_store_keeps_this_processs_sqlite_locks(tmp_path):
    """store.check runs while a sweep's connections are open (each job checks its config). Had it
    opened and closed the database file itself, that would drop the POSIX locks of this process's
    connections; another process, finding the file unlocked as it closes, deletes the WAL under them."""
    uri = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("before")).info.run_id
    for step in range(50):  # this process's connections hold the database, with frames in the WAL
        client.log_metric(run, "value", step, step=step)
    check(uri)
    writer = (
        f"from mlflow.tracking import MlflowClient; MlflowClient({uri!r}).create_experiment('from another process')"
    )
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
    client.create_experiment("after")
    assert {"before", "from another process", "after"} <= {e.name for e in client.search_experiments()}
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as database:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.slow  # Python subprocesses that load MLflow and write the store: seconds apiece
def test_sqlite_commits_skip_fsync_yet_survive_kill_9(tmp_path):
    """synchronous=NORMAL in WAL mode: a commit is in the log, in the OS's cache, before the call
    returns, so a process killed right after its last write has lost none of it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writer = textwrap.dedent(
        """
        import os, signal, sys
        import mlflow
        from simpsons.tracking import store
        store.configure(sys.argv[1])
        engine = mlflow.tracking.MlflowClient(sys.argv[1])._tracking_client.store.engine
        with engine.connect() as connection:
            print(connection.exec_driver_sql("PRAGMA journal_mode").scalar(),
                  connection.exec_driver_sql("PRAGMA synchronous").scalar(), flush=True)
        with mlflow.start_run(experiment_id=store.ensure_experiment(sys.argv[1], "kill")):
            for step in range(20):
                mlflow.log_metric("value", step, step=step)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", writer, uri], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert killed.stdout.split() == ["wal", "1"]  # 1: NORMAL (FULL, SQLite's default, is 2)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "value")] == list(range(20))


def test_checking_a_store_keeps_the_locks_this_process_holds_on_it(tmp_path):
    """The same fault, seen directly and deterministically: the POSIX locks of this process's live
    connection (in /proc/locks) are all still held after a check."""
    uri = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    client.get_experiment_by_name("Default")  # a live pooled connection, holding its locks
    held = locks_of_this_process()
    assert held, "no POSIX lock seen in /proc/locks: nothing to check"
    check(uri)
    assert locks_of_this_process() == held


def locks_of_this_process() -> list[str]:
    """This process's entries in /proc/locks, without their ordinal: kind, mode, file and range."""
    entries = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return sorted(" ".join(fields[1:4] + fields[5:]) for fields in entries if fields[4] == str(os.getpid()))
