"""Runs from start to end across processes: liveness, kill -9 and rerun, resume, two sweeps at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import psutil
import pytest
from conftest import IMAGE_SENSITIVE_MODEL, TINY_MODEL, folder_data, run_cli
from mlflow.tracking import MlflowClient

from simpsons.tracking import lifecycle, reader, schema
from simpsons.tracking.store import configure, ensure_experiment
from simpsons.training.callbacks import EPOCH_METRICS

SLICE_SECONDS = 0.2


def stop_when(process: subprocess.Popen, condition: Callable[[], bool], deadline: float = 600) -> None:
    """Let `process` run in slices and leave it stopped (SIGSTOP) at the first check where
    `condition()` holds.

    The process is stopped while the condition is checked, so between two checks it gets at most
    one slice of wall-clock time: under load it advances less, never more. A test that waits for
    "the second job started" therefore finds the process there, whatever the machine's load, as
    long as a job takes longer than one slice (a tiny training job takes seconds).
    """
    limit = time.monotonic() + deadline  # guards against a hang; it never decides the outcome
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        if condition():
            return
        assert process.poll() is None, f"the process ended first: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < limit, "the condition never held"
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(SLICE_SECONDS)


def kill_9(process: subprocess.Popen) -> None:
    process.kill()  # SIGKILL, even while stopped
    process.wait(timeout=60)


def all_runs(uri: str, experiment: str = "simpsons") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def runs_where(uri: str, condition: Callable) -> list:
    return [run for run in all_runs(uri) if condition(run)]


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "simpsons.train", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_runs_whose_process_is_gone_are_ended_killed_and_live_ones_are_left_alone(tracking_uri):
    uri = configure(tracking_uri)
    experiment = ensure_experiment(uri, "liveness")
    client = MlflowClient(uri)
    gone = psutil.Popen([sys.executable, "-c", "pass"])
    gone_start = gone.create_time()
    gone.wait()
    here = socket.gethostname()
    hour_ago = time.time() - 3600
    owners = {
        "dead process here": {schema.HOST: here, schema.PID: str(gone.pid), schema.PROCESS_START: str(gone_start)},
        "this process": lifecycle.process_tags(),
        "silent other host": {schema.HOST: "node-7", schema.PID: "1", schema.HEARTBEAT: str(hour_ago)},
        "beating other host": {schema.HOST: "node-8", schema.PID: "1", schema.HEARTBEAT: str(time.time())},
        "slowly beating other host": {  # beats every 5 min: 12 min without a beat is not yet dead
            schema.HOST: "node-9",
            schema.HEARTBEAT: str(time.time() - 720),
            schema.HEARTBEAT_SECONDS: "300",
        },
    }
    ids = {name: client.create_run(experiment, run_name=name, tags=tags).info.run_id for name, tags in owners.items()}

    ended = lifecycle.end_dead_runs(client, [experiment], stale_after=600)

    assert sorted(run.info.run_name for run in ended) == ["dead process here", "silent other host"]
    statuses = {name: client.get_run(run_id) for name, run_id in ids.items()}
    assert {name: run.info.status for name, run in statuses.items()} == {
        "dead process here": "KILLED",
        "this process": "RUNNING",
        "silent other host": "KILLED",
        "beating other host": "RUNNING",
        "slowly beating other host": "RUNNING",
    }
    assert statuses["dead process here"].data.tags[schema.ENDED_BY] == f"its process {gone.pid} on {here} is gone"
    assert statuses["silent other host"].data.tags[schema.ENDED_BY].startswith("no heartbeat from node-7 for 36")
    assert lifecycle.end_dead_runs(client, [experiment], stale_after=600) == []


INTERRUPTED_JOB = """
import os, signal, sqlite3, sys
import mlflow
from simpsons import signals
from simpsons.tracking import lifecycle
mlflow.set_tracking_uri(sys.argv[1])
with signals.job_process(), lifecycle.tracked_run(sys.argv[2], "job", None, {}) as run:
    print(run.info.run_id, flush=True)
    if sys.argv[3] == "cleanup":
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # scancel's; handled at once: KeyboardInterrupt
            signal.pause()
        finally:
            raise RuntimeError("a library's cleanup, cut short by the interrupt")
    else:
        with signals.held():  # the epoch's metrics write
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write: held until the write ends
            raise sqlite3.OperationalError("database is locked")  # the other jobs end at this moment too
"""
CAME_UP_INSTEAD = {
    "cleanup": "RuntimeError: a library's cleanup, cut short by the interrupt",
    "write": "sqlite3.OperationalError: database is locked",
}


@pytest.mark.parametrize("where", CAME_UP_INSTEAD.keys())
def test_a_signal_ends_the_run_killed_whatever_error_comes_up_with_it(tracking_uri, where):
    """The signal's interrupt can reach the run as another error: some library's cleanup, cut short,
    raises its own instead ("cleanup"); or the store write the signal waited for fails ("write"),
    as it may when every job of a scancelled array ends at once. Either way the signal killed the run:
    KILLED, not FAILED, the error that came up logged in error.txt, and the job process dies of the
    signal as any interrupted job does."""
    uri = configure(tracking_uri)
    experiment = ensure_experiment(uri, "signals")
    job = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_JOB, uri, experiment, where], capture_output=True, text=True, timeout=120
    )
    assert job.returncode == -signal.SIGTERM, job.stderr[-3000:]
    run = MlflowClient(uri).get_run(job.stdout.split()[0])
    assert (run.info.status, run.data.tags[schema.ERROR]) == ("KILLED", "interrupted (SIGTERM)")
    logged = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{schema.ERROR_TXT}")
    assert CAME_UP_INSTEAD[where] in logged
    assert "KeyboardInterrupt: SIGTERM" in logged


def test_a_pid_reused_by_another_process_does_not_keep_a_run_alive(tracking_uri):
    uri = configure(tracking_uri)
    experiment = ensure_experiment(uri, "liveness")
    client = MlflowClient(uri)
    tags = lifecycle.process_tags() | {schema.PROCESS_START: "12345.0"}  # our pid, another start time
    run_id = client.create_run(experiment, tags=tags).info.run_id
    [ended] = lifecycle.end_dead_runs(client, [experiment])
    assert ended.info.run_id == run_id


@pytest.mark.slow
def test_kill_9_mid_sweep_then_the_same_command_reuses_finished_configs_and_leaves_nothing_running(
    image_folders, tracking_uri, tmp_path
):
    args = ["-m", "dropout=0.1,0.2,0.3", *TINY_MODEL, *folder_data(image_folders), "epochs=3"]
    args.append(f"tracking.uri={tracking_uri}")
    client = MlflowClient(configure(tracking_uri))  # the store exists before the test polls it

    def second_job_running() -> bool:
        return bool(runs_where(tracking_uri, lambda r: r.data.params.get("dropout") == "0.2"))

    first = start_cli(args, cwd=tmp_path)
    stop_when(first, second_job_running)
    kill_9(first)
    killed_sweep = runs_where(tracking_uri, lambda r: reader.run_type(r) == schema.SWEEP)
    assert [run.info.status for run in all_runs(tracking_uri)].count("RUNNING") == 2  # the sweep and job 2

    rerun = run_cli(args, cwd=tmp_path)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert "ended 2 run(s) KILLED whose process is gone" in output
    assert "reused 1 finished config(s)" in output and "dropout=0.1" in output

    runs = all_runs(tracking_uri)
    assert "RUNNING" not in {run.info.status for run in runs}
    [old_parent] = killed_sweep
    assert client.get_run(old_parent.info.run_id).info.status == "KILLED"
    [new_parent] = [r for r in runs if reader.run_type(r) == schema.SWEEP and r.info.run_id != old_parent.info.run_id]
    assert new_parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get(schema.PARENT_RUN) == new_parent.info.run_id]
    kinds = {r.data.params["dropout"]: (reader.run_type(r), r.info.status) for r in children}
    assert kinds == {"0.1": ("reused", "FINISHED"), "0.2": ("train", "FINISHED"), "0.3": ("train", "FINISHED")}
    [killed_job] = [r for r in runs if r.info.status == "KILLED" and reader.run_type(r) == schema.TRAIN]
    assert killed_job.data.tags[schema.ENDED_BY].startswith(f"its process {first.pid} ")

    counted, superseded = reader.training_runs(client, children)
    finished = [run for run in counted if run.info.status == "FINISHED"]
    assert sorted(run.data.params["dropout"] for run in finished) == ["0.1", "0.2", "0.3"]
    assert superseded == []
    [reused] = [r for r in children if reader.run_type(r) == schema.REUSED]
    original = client.get_run(reused.data.tags[schema.REUSED_RUN])
    assert original.data.tags[schema.PARENT_RUN] == old_parent.info.run_id and original.info.status == "FINISHED"
    assert reused.data.metrics == original.data.metrics
    datasets = [[(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs] for run in (reused, original)]
    assert datasets[0] == datasets[1] and len(datasets[0]) == 3  # the UI's Dataset column, as the original's
    assert sorted(r.info.run_name for r in children) == ["drop=0.1", "drop=0.2", "drop=0.3"]

    # Each parent's outcome: the killed one's logged by the rerun that ended it, the new one's at its end
    old_outcome = client.get_run(old_parent.info.run_id).data.metrics
    assert (old_outcome["jobs_finished"], old_outcome["jobs_failed"], old_outcome["jobs_killed"]) == (1, 0, 1)
    new_outcome = client.get_run(new_parent.info.run_id).data.metrics
    assert (new_outcome["jobs_finished"], new_outcome["jobs_failed"], new_outcome["jobs_reused"]) == (3, 0, 1)
    assert new_outcome["best_val_accuracy"] == max(r.data.metrics["best_val_accuracy"] for r in children)
    assert "3 jobs: 3 finished (1 reused), 0 failed" in rerun.stdout

    report = subprocess.run(
        [sys.executable, "-m", "simpsons.report", "--tracking-uri", tracking_uri, "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    )
    ids = [line.split(",")[0] for line in report.stdout.splitlines()[1:] if line]
    assert sorted(ids) == sorted(run.info.run_id[:8] for run in finished)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])  # JAX: CI's backend subset (test_backends.py has the rest)
def test_a_killed_finetuning_run_resumes_at_the_epoch_after_its_last_backup_in_the_same_run(
    backend, image_folders, tracking_uri, tmp_path
):
    args = [*TINY_MODEL, *folder_data(image_folders), "epochs=1", "finetune.layers=3", "finetune.epochs=4"]
    args.append(f"backend={backend}")
    args.append(f"tracking.uri={tracking_uri}")
    client = MlflowClient(configure(tracking_uri))  # the store exists before the test polls it

    def steps() -> list[int]:
        runs = all_runs(tracking_uri)
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "epoch/val_accuracy")] if runs else []

    first = start_cli(args, cwd=tmp_path)
    stop_when(first, lambda: len(steps()) >= 3)  # epoch 2 logged: fine-tuning epoch 1 is backed up
    kill_9(first)
    [killed] = all_runs(tracking_uri)

    rerun = run_cli([*args, "tracking.heartbeat_seconds=20"], cwd=tmp_path)  # a key outside the config hash
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    [run] = all_runs(tracking_uri)
    assert run.data.params["tracking.heartbeat_seconds"] == "30"  # params keep the first start's values
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    resumed_at = int(run.data.tags[schema.RESUMED_AT_EPOCH])
    assert resumed_at >= 3, "resumed from before its last fine-tuning backup"  # epochs counted from 1
    assert f"resuming MLflow run {run.info.run_id}" in output and f"at epoch {resumed_at}" in output
    history = client.get_metric_history(run.info.run_id, "epoch/val_accuracy")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5]  # continuous curves, none restarted at 1
    assert [m.step for m in history].count(1) == 1 and [m.step for m in history].count(5) == 1
    assert "Epoch 1/" not in output.split("resuming MLflow run")[1]  # the rerun trained no epoch again from 0
    curve = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}  # an epoch's last value
    kept = int(run.data.metrics["best_epoch"])  # the best epoch over both phases and the kill
    assert curve[kept] == max(curve.values()) and all(curve[epoch] < curve[kept] for epoch in range(1, kept))
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(curve[kept], abs=1e-6)
    assert not (Path(os.environ["SIMPSONS_CACHE_DIR"]) / "checkpoints" / run.info.run_id).exists()


def backed_up_epoch(phase: Path) -> int | None:
    """The epoch a phase's backup resumes at (Keras's training_metadata.json); None while it is being written."""
    try:
        return json.loads((phase / "training_metadata.json").read_text())["epoch"]
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_run_killed_between_an_epochs_metrics_and_its_backup_logs_each_epoch_once_when_resumed(
    image_folders, tracking_uri, tmp_path
):
    """kill -9 where the epochs logged in MLflow and the epochs backed up differ, if the run can be
    caught there (one epoch's log and backup are not done yet), else after a few epochs; the rerun
    resumes the run, and every curve has each epoch once. An epoch logged before its backup was
    trained and logged again: 31 points for 30 epochs. A big model (VGG16: 59 MB a backup) makes
    the time between the two long, so the check lands in it on the code that logged first."""
    epochs = 8
    args = [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), f"epochs={epochs}", "cache=false"]
    args.append(f"tracking.uri={tracking_uri}")
    client = MlflowClient(configure(tracking_uri))  # the store exists before the test polls it
    checkpoints = Path(os.environ["SIMPSONS_CACHE_DIR"]) / "checkpoints"
    seen = {}

    def logged_and_backed_up_differ_or_epoch_4_logged() -> bool:
        runs = all_runs(tracking_uri)
        if not runs:
            return False
        logged = len(client.get_metric_history(runs[0].info.run_id, "epoch/val_accuracy"))
        backed_up = backed_up_epoch(checkpoints / runs[0].info.run_id / "head")
        seen.update(logged=logged, backed_up=backed_up)
        return backed_up is not None and (logged != backed_up or logged >= 5)

    first = start_cli(args, cwd=tmp_path)
    stop_when(first, logged_and_backed_up_differ_or_epoch_4_logged)
    kill_9(first)
    [killed] = all_runs(tracking_uri)
    assert killed.info.status == "RUNNING" and seen["backed_up"] < epochs

    rerun = run_cli(args, cwd=tmp_path)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    [run] = all_runs(tracking_uri)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert int(run.data.tags[schema.RESUMED_AT_EPOCH]) == seen["backed_up"] + 1  # the first epoch it trains
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (name, seen)


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_fresh_store_keep_their_own_parent_folders_and_statuses(
    image_folders, fresh_tracking_uri, tmp_path
):
    tracking_uri = fresh_tracking_uri
    args = ["-m", "dropout=0.1,0.2", *TINY_MODEL, *folder_data(image_folders), "epochs=1", "reuse=false"]
    args.append(f"tracking.uri={tracking_uri}")
    sweeps = [start_cli(args, cwd=tmp_path) for _ in range(2)]  # the default sweep dir; often the same second
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], "\n".join(err for _, err in outputs)[-3000:]

    runs = all_runs(tracking_uri)
    parents = [r for r in runs if reader.run_type(r) == schema.SWEEP]
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    folders = {Path(p.data.tags[schema.SWEEP_DIR]) for p in parents}
    assert len(folders) == 2
    for parent in parents:
        children = [r for r in runs if r.data.tags.get(schema.PARENT_RUN) == parent.info.run_id]
        assert sorted(c.data.params["dropout"] for c in children) == ["0.1", "0.2"]
        assert {c.info.status for c in children} == {"FINISHED"}
        assert {c.data.tags[schema.SWEEP_ID] for c in children} == {parent.data.tags[schema.SWEEP_ID]}
        folder = Path(parent.data.tags[schema.SWEEP_DIR])
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1"]
