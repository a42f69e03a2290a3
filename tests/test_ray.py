"""hydra/launcher=ray_jobs: a sweep's jobs as Ray tasks, on a local Ray the sweep starts and stops.

A real Ray (the `ray` extra: hydra-ray-launcher and ray[default]), real TensorFlow jobs, a real
SQLite store. The Ray session lives in a folder of this test, so that what it started can be told
apart from anything else, and nothing of it is left running.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import TINY_MODEL, folder_data, poll, run_cli, start_cli
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons.tracking import store

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed")

EXIT_DEADLINE = 120.0  # for Ray's processes to go once the sweep's driver has exited
STARTUP_DEADLINE = 900.0  # a local Ray and TensorFlow in two workers, on a loaded 2-core machine


@pytest.fixture
def ray_temp_dir() -> Iterator[Path]:
    """A short folder for Ray's session (its socket paths must stay under 108 characters); after the
    test, every process of the session is gone, by its pid, and the folder removed."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    before = {process.pid for process in psutil.process_iter()}
    try:
        yield folder
    finally:
        left = _session_processes(folder, before)
        for process in left:
            process.kill()
        psutil.wait_procs(left, timeout=EXIT_DEADLINE)
        shutil.rmtree(folder, ignore_errors=True)


def _session_processes(folder: Path, before: set[int]) -> list[psutil.Process]:
    """Processes started since `before` that belong to the Ray session in `folder`: Ray's own
    (gcs_server, raylet, its agents name the folder) and its workers (ray::...)."""
    found = []
    for process in psutil.process_iter():
        if process.pid in before:
            continue
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if str(folder) in command or command.startswith("ray::"):
            found.append(process)
    return found


def _gone(folder: Path, before: set[int], deadline: float) -> list[str]:
    """The session's processes still running at the deadline (none once they have all exited)."""
    end = time.monotonic() + deadline
    while (left := _session_processes(folder, before)) and time.monotonic() < end:
        time.sleep(0.5)
    return [f"{p.pid} {p.name()}" for p in left if p.is_running()]


@pytest.mark.slow
def test_a_2x2_sweep_through_ray_gives_one_parent_and_four_finished_children(tmp_path, ray_temp_dir):
    before = {process.pid for process in psutil.process_iter()}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "experiment=demo", "hydra/launcher=ray_jobs", f"+hydra.launcher.ray.init._temp_dir={ray_temp_dir}"]
    args += [f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}", f"data.dir={tmp_path / 'demo'}", "epochs=1"]
    result = run_cli(args, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("simpsons-demo").experiment_id])  # the demo's own
    [parent] = [r for r in runs if r.data.tags["simpsons.run_type"] == "sweep"]
    children = [r for r in runs if r.data.tags["simpsons.run_type"] == "train"]
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    grid = {(c.data.params["optimizer.name"], c.data.params["dropout"]) for c in children}
    assert grid == {(o, d) for o in ("adam", "rmsprop") for d in ("0.2", "0.5")}
    # The parent's outcome, read by the driver from the runs its Ray workers wrote
    assert parent.data.params == {"optimizer": "adam,rmsprop", "dropout": "0.2,0.5", "num_jobs": "4"}
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (4, 0)
    names = sorted(c.info.run_name for c in children)
    assert names == [f"{o} drop={d}" for o in ("adam", "rmsprop") for d in ("0.2", "0.5")]
    # Each job ran in a Ray worker of its own (max_calls=1), not in the driver.
    pids = {c.data.tags["simpsons.pid"] for c in children}
    assert len(pids) == 4 and parent.data.tags["simpsons.pid"] not in pids
    assert _gone(ray_temp_dir, before, EXIT_DEADLINE) == []


def _training(client: MlflowClient, jobs: int) -> list[Run]:
    """The job runs, once `jobs` of them have logged an epoch; else []."""
    experiment = client.get_experiment_by_name("simpsons")
    runs = client.search_runs([experiment.experiment_id], "tags.`simpsons.run_type` = 'train'") if experiment else []
    runs = [run for run in runs if client.get_metric_history(run.info.run_id, "epoch/loss")]
    return runs if len(runs) >= jobs else []


@pytest.mark.slow
def test_sigterm_to_the_ray_driver_ends_every_run_killed_in_one_line(image_folders, tmp_path, ray_temp_dir):
    """Two jobs that cannot finish (a million epochs) train in two Ray workers; SIGTERM to the driver
    alone. Ray's own handler would exit at once; ours ends the jobs first: each ends its run KILLED
    itself, the sweep ends KILLED, one line, 143, and no process of Ray's is left."""
    before = {process.pid for process in psutil.process_iter()}
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = ["-m", "hydra/launcher=ray_jobs", f"+hydra.launcher.ray.init._temp_dir={ray_temp_dir}"]
    args += ["hydra.launcher.ray.init.num_cpus=2", "dropout=0.2,0.4", "epochs=1000000"]
    args += [*TINY_MODEL, *folder_data(image_folders), f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}"]
    driver = start_cli(args, tmp_path)
    try:
        jobs = poll(lambda: _training(client, jobs=2), "2 jobs training", STARTUP_DEADLINE, driver)
        assert {client.get_run(job.info.run_id).info.status for job in jobs} == {"RUNNING"}
        driver.send_signal(signal.SIGTERM)
        returncode = driver.wait(timeout=EXIT_DEADLINE + 60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    [sweep] = [
        r for r in client.search_runs([jobs[0].info.experiment_id]) if r.data.tags["simpsons.run_type"] == "sweep"
    ]
    assert sweep.info.status == "KILLED"
    for job in jobs:
        run = client.get_run(job.info.run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["error"] == "interrupted (SIGTERM)"  # ended by its own process
        assert "simpsons.ended_by" not in run.data.tags
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert lines == [stderr.rstrip().splitlines()[-1]], stderr[-3000:]  # one line, the last
    parts = set(lines[0].removeprefix("interrupted (SIGTERM): ").split(", "))
    assert parts == {*(f"run {job.info.run_id} KILLED" for job in jobs), f"sweep {sweep.info.run_id} KILLED"}
    assert _gone(ray_temp_dir, before, EXIT_DEADLINE) == []
