"""Sweeps through the Slurm preset (conf/hydra/launcher/slurm.yaml) on a real single-node Slurm.

tests/services/slurm.sh starts munge, MariaDB, slurmdbd, slurmctld and slurmd on this machine (as
root, Debian's slurm-wlm); every job is a task of a real Slurm job array, seen by sacct. Every wait
is a bounded poll on a condition: its deadline only guards against a hang, it never decides an outcome.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import conftest
import mlflow
import psutil
import pytest
from conftest import TINY_MODEL, folder_data, start_cli
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons.tracking import lifecycle, schema, store

T = TypeVar("T")
SLURM_SH = Path(__file__).parent / "services" / "slurm.sh"
SLURM = ["-m", "hydra/launcher=slurm"]
DEADLINE = 900.0  # jobs queue behind other tests' jobs on a 2-core node, each starting TensorFlow
UNSTOPPABLE = ["epochs=1000000"]  # with the tiny cached model: hours, so no job can finish first

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm() -> Iterator[str]:
    """The test cluster, started (or joined: another xdist worker may have started it) for this
    session and stopped after it unless another worker still holds it; yields its SLURM_CONF."""
    holder = str(os.getpid())
    started = subprocess.run(
        ["bash", str(SLURM_SH), "start", "--holder", holder], capture_output=True, text=True, timeout=600
    )
    if started.returncode == 3:  # no Slurm packages, or not root: .ci/run installs them, as root
        pytest.skip(started.stderr.strip().splitlines()[-1])
    if started.returncode != 0:
        pytest.fail(f"{SLURM_SH.name} start failed: {started.stderr[-8000:]}")
    conf = started.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # sbatch, sacct, scancel here and in the sweeps' drivers
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run(["bash", str(SLURM_SH), "stop", "--holder", holder], timeout=600, check=True)


def poll(condition: Callable[[], T], what: str, deadline: float = DEADLINE, process=None) -> T:
    return conftest.poll(condition, what, deadline, process, every=1)


def poll_for(fetch: Callable[[], T], accept: Callable[[T], bool], what: str, deadline: float = DEADLINE) -> T:
    """`fetch()` once `accept` takes it."""
    found: list[T] = []

    def accepted() -> bool:
        found[:] = [fetch()]
        return accept(found[0])

    poll(accepted, what, deadline)
    return found[0]


def slurm_command(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def accounted(job: str) -> dict[str, str]:
    """sacct's state of every array task of `job` (e.g. {'12_0': 'COMPLETED', '13_1': 'CANCELLED by 0'})."""
    lines = slurm_command("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State").splitlines()
    return dict(line.split("|", 1) for line in lines)


def array_job(runs: list[Run]) -> str:
    """The Slurm job array that ran `runs`, from their simpsons.slurm_job_id tags ('<array>_<task>')."""
    arrays = {run.data.tags[schema.SLURM_JOB_ID].split("_")[0] for run in runs}
    assert len(arrays) == 1, arrays
    return arrays.pop()


@contextmanager
def driver(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """The sweep's driver in the background, output in cwd/stdout.txt and stderr.txt. If the test
    fails, its Slurm jobs are cancelled; whatever happens, the driver is gone at the end."""
    process = start_cli(args, cwd)
    try:
        yield process
    except BaseException:
        # Not after a passing test: a finished sweep's tasks may still be leaving squeue.
        queue = subprocess.run(
            ["squeue", "-h", "-n", "train", "-o", "%F %o"], capture_output=True, text=True, timeout=60
        )
        jobs = queue.stdout.splitlines()  # empty if Slurm itself is what failed
        for array in {line.split()[0] for line in jobs if str(cwd) in line}:  # this test's, by their folder
            subprocess.run(["scancel", array], check=False, timeout=60)
        raise
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=120)


def children(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs(
        [parent.info.experiment_id], f"tags.`{schema.PARENT_RUN}` = '{parent.info.run_id}'", max_results=100
    )


def the_sweep(client: MlflowClient) -> Run | None:
    experiment = client.get_experiment_by_name("simpsons")
    found = (
        client.search_runs([experiment.experiment_id], f"tags.`{schema.RUN_TYPE}` = '{schema.SWEEP}'")
        if experiment
        else []
    )
    assert len(found) <= 1
    return found[0] if found else None


def training_runs(client: MlflowClient, epochs: int) -> list[Run]:
    """The sweep's RUNNING runs that have logged at least `epochs` epochs."""
    parent = the_sweep(client)
    runs = children(client, parent) if parent else []
    return [
        run
        for run in runs
        if run.info.status == "RUNNING" and len(client.get_metric_history(run.info.run_id, "epoch/loss")) >= epochs
    ]


def running_tasks(array: str) -> set[str]:
    """The tasks of a Slurm job array that are running now, as '<array>_<task>'."""
    return set(slurm_command("squeue", "-h", "-j", array, "-t", "RUNNING", "-o", "%i").split())


def process_gone(run: Run) -> bool:
    """The run's own process has exited (its pid, if reused, belongs to a process started later)."""
    pid, started = int(run.data.tags[schema.PID]), float(run.data.tags[schema.PROCESS_START])
    with contextlib.suppress(psutil.Error):
        return abs(psutil.Process(pid).create_time() - started) >= 1
    return True


@pytest.fixture(scope="module")
def demo_sweep(slurm: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, Path, Run, list[Run]]:
    """experiment=demo's 2x2 grid (optimizer x dropout) through the preset, on the tiny model."""
    directory = tmp_path_factory.mktemp("slurm-sweep")
    uri = store.configure(f"sqlite:///{directory / 'mlflow.db'}")
    args = [
        *SLURM,
        "experiment=demo",
        *TINY_MODEL,
        "epochs=2",
        f"tracking.uri={uri}",
        "tracking.experiment=simpsons",  # where the_sweep looks (the demo's own experiment is simpsons-demo)
        f"cache_dir={directory / 'cache'}",
    ]
    with driver(args, directory) as process:
        returncode = process.wait(timeout=DEADLINE)
    assert returncode == 0, (directory / "stderr.txt").read_text()[-3000:]
    client = MlflowClient(uri)
    parent = the_sweep(client)
    assert parent is not None
    return client, directory, parent, children(client, parent)


def test_slurm_runs_a_2x2_sweep_as_4_array_jobs_under_one_parent(demo_sweep):
    client, _, parent, runs = demo_sweep
    assert parent.info.status == "FINISHED"
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    grid = {(run.data.params["optimizer.name"], run.data.params["dropout"]) for run in runs}
    assert grid == {("adam", "0.2"), ("adam", "0.5"), ("rmsprop", "0.2"), ("rmsprop", "0.5")}
    # The parent's outcome, read by the driver from the runs its array jobs wrote
    assert parent.data.params == {"optimizer": "adam,rmsprop", "dropout": "0.2,0.5", "num_jobs": "4"}
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (4, 0)
    names = sorted(run.info.run_name for run in runs)
    assert names == [f"{o} drop={d}" for o in ("adam", "rmsprop") for d in ("0.2", "0.5")]
    tasks = {run.data.tags[schema.SLURM_JOB_ID] for run in runs}
    array = array_job(runs)
    assert tasks == {f"{array}_{task}" for task in range(4)}
    # sacct may lag the jobs' ends by a moment (a task's result is read before its step has exited).
    states = poll_for(lambda: accounted(array), lambda s: set(s.values()) == {"COMPLETED"}, "COMPLETED in sacct")
    assert set(states) == tasks


def test_slurm_jobs_compute_the_feature_cache_once(demo_sweep):
    """Each split's features are extracted by one job, under the cache's lock; the others read them.

    Which job computes which split is up to the lock (one job may extract train while another
    waits, then extract val): what must hold is that, summed over the jobs, exactly one split's
    worth of images went through the backbone, once."""
    _, directory, _, runs = demo_sweep
    extracted = 0
    for run in runs:
        metrics = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/timings.json")  # the timings
        if run.data.tags[schema.FEATURE_CACHE] == "miss":
            extracted += round(metrics["feature_extraction_seconds"] * metrics["feature_extraction_images_per_second"])
        else:
            assert run.data.tags[schema.FEATURE_CACHE] == "hit"
            assert metrics["feature_extraction_seconds"] == 0
    counts = {key: int(runs[0].data.params[f"data.{key}_images"]) for key in ("train", "val", "test")}
    assert extracted == sum(counts.values()), (extracted, counts)
    assert len(list((directory / "cache").glob("*.npy"))) == len(counts)  # one entry per split, no partial one


def test_scancel_of_slurm_jobs_ends_their_runs_killed(slurm, image_folders, tmp_path):
    """scancel sends SIGTERM to the job's processes: each ends its run KILLED and exits. The driver
    then sees the jobs CANCELLED in sacct and ends the sweep KILLED, with the count, no traceback."""
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = [
        *SLURM,
        *folder_data(image_folders),
        *TINY_MODEL,
        *UNSTOPPABLE,
        "dropout=0.2,0.4",
        f"tracking.uri={uri}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    with driver(args, tmp_path) as process:
        # Every task Slurm runs has its run training (its SIGTERM handler is in place); a task the
        # node has no CPU for yet stays pending, and scancel ends it before it starts.
        def all_running_are_training() -> list[Run]:
            runs = training_runs(client, epochs=1)
            return (
                runs
                if runs and running_tasks(array_job(runs)) == {r.data.tags[schema.SLURM_JOB_ID] for r in runs}
                else []
            )

        runs = poll(all_running_are_training, "job training", process=process)
        array = array_job(runs)
        subprocess.run(["scancel", array], check=True, timeout=60)
        returncode = process.wait(timeout=DEADLINE)
    output = (tmp_path / "stdout.txt").read_text() + (tmp_path / "stderr.txt").read_text()
    assert returncode == 1, output[-3000:]
    assert "Traceback" not in output
    ended = poll(lambda: runs if all(process_gone(r) for r in runs) else None, "job processes gone")
    for run in ended:
        run = client.get_run(run.info.run_id)
        ended_as = (run.info.status, run.data.tags.get(schema.ERROR))
        assert ended_as == ("KILLED", "interrupted (SIGTERM)"), job_log(run)
    parent = the_sweep(client)
    assert parent.info.status == "KILLED"
    assert {children_run.info.status for children_run in children(client, parent)} == {"KILLED"}
    states = poll_for(lambda: accounted(array), lambda s: "RUNNING" not in s.values(), "jobs ended in sacct")
    assert all(state.startswith("CANCELLED") for state in states.values()), states


def job_log(run: Run) -> str:
    """What a job's run logged of how it ended, for a failed assertion: the traceback, else its tags."""
    with contextlib.suppress(Exception):
        return mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{schema.ERROR_TXT}")[-3000:]
    return str(run.data.tags)


def by_epochs(client: MlflowClient, parent: Run) -> dict[str, Run]:
    return {run.data.params["epochs"]: run for run in children(client, parent)}


def output_of(directory: Path) -> str:
    return (directory / "stdout.txt").read_text() + (directory / "stderr.txt").read_text()


ONE_AT_A_TIME = "hydra.launcher.array_parallelism=1"  # the second task starts once the first is gone


def test_scancel_of_one_slurm_task_ends_its_run_killed_and_the_others_finish(slurm, image_folders, tmp_path):
    """Two jobs, one at a time: the first cannot finish (a million epochs), the second is short and
    waits in the queue. scancel of the first task only: its run ends KILLED, the second then runs to
    its end, and the driver, which waits for both, ends the sweep KILLED with the count: exit 1, no
    traceback. Nothing here depends on timing: the second task starts only once the first is gone."""
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = [*SLURM, ONE_AT_A_TIME, *folder_data(image_folders), *TINY_MODEL, "epochs=1000000,2"]
    args += [f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}"]
    with driver(args, tmp_path) as process:
        [first] = poll(lambda: training_runs(client, epochs=1), "the first job training", process=process)
        task = first.data.tags[schema.SLURM_JOB_ID]
        subprocess.run(["scancel", task], check=True, timeout=60)
        returncode = process.wait(timeout=DEADLINE)
    output = output_of(tmp_path)
    assert returncode == 1, output[-3000:]
    assert "Traceback" not in output
    parent = the_sweep(client)
    runs = by_epochs(client, parent)
    assert (runs["1000000"].info.status, runs["2"].info.status) == ("KILLED", "FINISHED")
    assert runs["1000000"].data.tags[schema.ERROR] == "interrupted (SIGTERM)"
    assert parent.info.status == "KILLED" and parent.data.tags[schema.SLURM_ARRAY] == task.split("_")[0]
    metrics = parent.data.metrics
    assert (metrics["jobs_finished"], metrics["jobs_failed"], metrics["jobs_killed"]) == (1, 0, 1)
    assert f"(run {parent.info.run_id}): 2 jobs: 1 finished, 0 failed, 1 killed" in output
    assert f"job #0 (epochs=1000000): Slurm job {task} ended CANCELLED" in output
    states = poll_for(lambda: accounted(array_job([first])), lambda s: "RUNNING" not in s.values(), "sacct")
    assert states[task].startswith("CANCELLED") and states[f"{task.split('_')[0]}_1"] == "COMPLETED", states


def test_sigterm_to_the_slurm_driver_cancels_its_jobs_and_ends_every_run_killed(slurm, image_folders, tmp_path):
    """SIGTERM to the driver: it cancels the sweep's Slurm jobs (the running one ends its run KILLED,
    the queued one never starts), waits for them to be gone, ends the sweep KILLED: one line, 143."""
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = [*SLURM, ONE_AT_A_TIME, *folder_data(image_folders), *TINY_MODEL, *UNSTOPPABLE, "dropout=0.2,0.4"]
    args += [f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}"]
    with driver(args, tmp_path) as process:
        [run] = poll(lambda: training_runs(client, epochs=1), "the first job training", process=process)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=DEADLINE)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    array = array_job([run])
    assert running_tasks(array) == set() and process_gone(run)  # the driver waited for the job to be gone
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags[schema.ERROR] == "interrupted (SIGTERM)"
    parent = the_sweep(client)
    assert parent.info.status == "KILLED" and [r.info.run_id for r in children(client, parent)] == [run.info.run_id]
    assert stderr.rstrip().splitlines()[-1] == (
        f"interrupted (SIGTERM): run {run.info.run_id} KILLED, sweep {parent.info.run_id} KILLED"
    )
    states = poll_for(lambda: accounted(array), lambda s: "RUNNING" not in s.values(), "jobs ended in sacct")
    assert all(state.startswith("CANCELLED") for state in states.values()), states


def test_slurm_jobs_outlive_a_driver_killed_9_and_the_last_one_ends_the_sweep(slurm, image_folders, tmp_path):
    """kill -9 of the driver: its Slurm jobs run on (the documented choice). The sweep's run stays
    RUNNING while one of them runs or waits in the queue, and the last to end ends it, with the
    count. One at a time: the first cannot finish and is scancelled once the driver is gone; only then
    does the short second one start, and finish."""
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = [*SLURM, ONE_AT_A_TIME, *folder_data(image_folders), *TINY_MODEL, "epochs=1000000,2"]
    args += [f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}"]
    with driver(args, tmp_path) as process:
        [first] = poll(lambda: training_runs(client, epochs=1), "the first job training", process=process)
        process.kill()
        process.wait(timeout=60)
        task = first.data.tags[schema.SLURM_JOB_ID]
        array = task.split("_")[0]
        assert lifecycle.end_dead_runs(client, [first.info.experiment_id]) == []  # what the next command does
        assert the_sweep(client).info.status == "RUNNING"
        subprocess.run(["scancel", task], check=True, timeout=60)
        parent = poll_for(lambda: the_sweep(client), lambda p: p.info.status != "RUNNING", "the sweep ended")
    runs = by_epochs(client, parent)
    assert (runs["1000000"].info.status, runs["2"].info.status) == ("KILLED", "FINISHED")
    assert parent.info.status == "KILLED"  # not every job finished
    assert parent.data.tags[schema.ENDED_BY] == f"its process {process.pid} on {socket.gethostname()} is gone"
    metrics = parent.data.metrics
    assert (metrics["jobs_finished"], metrics["jobs_killed"]) == (1, 1)
    # sacct may lag the job's end by a moment
    poll_for(lambda: accounted(array), lambda states: states.get(f"{array}_1") == "COMPLETED", "COMPLETED in sacct")


REQUEUES = {
    # Preemption on a cluster with PreemptMode=REQUEUE (the preset's --requeue makes the job eligible):
    # Slurm sends SIGTERM, the run ends KILLED, the job goes back to the queue. Held there until
    # released, so that the test sees the run KILLED before it resumes.
    "preempted": (["scontrol", "requeuehold"], "KILLED"),
    # The time limit's warning (signal_delay_s before it), or a preemption with preempt_send_user_signal:
    # SIGUSR2, on which submitit requeues the job itself and exits (SystemExit): the run ends FAILED,
    # and may be resumed before a poll could see that.
    "signalled": (["scancel", "--signal=USR2"], None),
}


def resumed(run: Run) -> Run | None:
    return run if schema.RESUMED_AT_EPOCH in run.data.tags and run.info.status == "RUNNING" else None


@pytest.mark.parametrize("requeue", REQUEUES.values(), ids=REQUEUES.keys())
def test_a_requeued_slurm_job_resumes_its_run(slurm, image_folders, tmp_path, requeue):
    """A requeued job ends its run; once it runs again, an end-to-end run resumes in the same MLflow
    run, from its last epoch's backup in <cache_dir>/checkpoints."""
    command, ended_as = requeue
    uri = store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    args = [
        *SLURM,
        *folder_data(image_folders),
        *TINY_MODEL,
        *UNSTOPPABLE,
        "cache=false",  # end to end, so backed up after every epoch
        f"tracking.uri={uri}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    with driver(args, tmp_path) as process:
        (run,) = poll(lambda: training_runs(client, epochs=2), "job training", process=process)
        run_id, task = run.info.run_id, run.data.tags[schema.SLURM_JOB_ID]
        backup = tmp_path / "cache" / "checkpoints" / run_id
        poll(lambda: (backup / "head" / "training_metadata.json").is_file(), "backup", process=process)
        subprocess.run([*command, task], check=True, timeout=60)
        if ended_as is not None:  # the job is held
            poll(lambda: client.get_run(run_id).info.status == ended_as, f"run {ended_as}", process=process)
            subprocess.run(["scontrol", "release", task], check=True, timeout=60)
        again = poll(lambda: resumed(client.get_run(run_id)), "resumed run", process=process)
        assert int(again.data.tags[schema.RESUMED_AT_EPOCH]) >= 1
        assert again.data.tags[schema.PID] != run.data.tags[schema.PID]  # a new process, the same run
        assert again.data.tags[schema.SLURM_JOB_ID] == task
        assert len(children(client, the_sweep(client))) == 1
        subprocess.run(["scancel", task], check=True, timeout=60)
        poll(lambda: client.get_run(run_id).info.status == "KILLED", "run KILLED")
        process.wait(timeout=DEADLINE)


def test_starting_the_cluster_again_while_a_job_runs_returns_and_leaves_the_job_running(slurm):
    """`slurm.sh start` is idempotent: with a job running (the node allocated or mixed, not idle), it
    checks the daemons and the node, prints the same SLURM_CONF and cancels nothing. Its state folder
    is the user's own."""
    job = slurm_command("sbatch", "--parsable", "--output=/dev/null", "--wrap=sleep 600").strip()
    try:
        poll(lambda: running_tasks(job) == {job}, "the job running")
        # A short deadline: before, start waited for an idle node until it gave up, after 120 s.
        env = os.environ | {"SIMPSONS_SLURM_DEADLINE": "30"}
        again = subprocess.run(["bash", str(SLURM_SH), "start"], capture_output=True, text=True, env=env, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={slurm}"
        assert running_tasks(job) == {job}
        if "SIMPSONS_SLURM_DIR" not in os.environ:
            assert slurm == f"/tmp/simpsons-slurm-{getpass.getuser()}/etc/slurm.conf"
    finally:
        subprocess.run(["scancel", job], check=False, timeout=60)
