"""SIGINT and SIGTERM: runs end KILLED in one line, under every launcher, and no job process is left.

Real processes on a real SQLite store. Every wait is a bounded poll on a condition: its deadline
only guards against a hang, it never decides an outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from conftest import TINY_MODEL, folder_data, poll, start_cli
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from simpsons import signals
from simpsons.sweep_callback import MlflowSweepCallback
from simpsons.tracking import lifecycle, store

T = TypeVar("T")
STARTUP_DEADLINE = 600.0  # TensorFlow in up to three processes on a loaded 2-core machine
EXIT_DEADLINE = 180.0
UNSTOPPABLE = ["epochs=1000000"]  # with the tiny cached model: hours, so no job can finish before the signal
JOBLIB = ["hydra/launcher=parallel"]  # the preset: joblib, 2 jobs at once
SUBMITIT = ["hydra/launcher=submitit_local"]


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    """A client of the test's store, set up before the command starts: creating the schema from two
    processes at once (the command, and this one on its first read) breaks it."""
    return MlflowClient(store.configure(tracking_uri))


@contextmanager
def cli(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """`python -m simpsons.train ARGS` in the background, output in cwd/stdout.txt and stderr.txt;
    whatever is still running of it at the end (a failed test) is killed."""
    process = start_cli(args, cwd)
    try:
        yield process
    finally:
        if process.poll() is None:  # a failed test: nothing of it may go on using the CPUs
            with contextlib.suppress(psutil.Error):
                for leftover in psutil.Process(process.pid).children(recursive=True):
                    leftover.kill()
            process.kill()
        process.wait(timeout=EXIT_DEADLINE)


def train_runs(client: MlflowClient) -> list[Run]:
    experiment = client.get_experiment_by_name("simpsons")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`simpsons.run_type` = 'train'")


def training(client: MlflowClient, jobs: int, epochs: int) -> list[Run]:
    """The job runs, once `jobs` of them have logged at least `epochs` epochs; else []."""
    runs = [r for r in train_runs(client) if len(client.get_metric_history(r.info.run_id, "epoch/loss")) >= epochs]
    return runs if len(runs) >= jobs else []


def signal_while_stopped(process: subprocess.Popen, client: MlflowClient, run_id: str, signum: int) -> None:
    """Send `signum` to a process seen stopped with its run RUNNING: stopped, it cannot end the run,
    so the signal, delivered when it continues, finds the run RUNNING. (SQLite in WAL mode: reading
    does not wait for a writer, even a stopped one.)"""
    os.kill(process.pid, signal.SIGSTOP)
    poll(lambda: psutil.Process(process.pid).status() == psutil.STATUS_STOPPED, "stopped process", 60, process)
    assert client.get_run(run_id).info.status == "RUNNING"
    os.kill(process.pid, signum)
    os.kill(process.pid, signal.SIGCONT)


def ended(process: subprocess.Popen, cwd: Path) -> tuple[int, str]:
    """The exit code and stderr of the command, once it has exited."""
    returncode = process.wait(timeout=EXIT_DEADLINE)
    return returncode, (cwd / "stderr.txt").read_text()


def interrupted_line(stderr: str) -> tuple[str, set[str]]:
    """The one line an interrupted command ends with, as its head ('interrupted (SIGINT)') and its
    parts ('run <id> KILLED', 'sweep <id> KILLED')."""
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == lines[0], stderr[-3000:]
    head, _, parts = lines[0].partition(": ")
    return head, set(parts.split(", "))


def describe(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return f"{process.pid} {' '.join(process.cmdline())}"
    return str(process.pid)


def assert_killed_keeping_metrics(client: MlflowClient, run_id: str, epochs: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith("interrupted"), run.data.tags["error"]
    assert len(client.get_metric_history(run_id, "epoch/loss")) >= epochs


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_marks_the_run_and_the_sweep_killed_and_keeps_what_was_logged(
    image_folders, tracking_uri, client, tmp_path
):
    """Why timing cannot decide the outcome: the job has a million epochs, so it cannot finish
    however fast or slow the machine; once it has logged two, the process is stopped and seen
    stopped, so its run, read back as RUNNING, is still RUNNING when SIGINT is delivered (sent while
    it is stopped, delivered when it continues). Every wait is a poll on a condition."""
    args = ["-m", "dropout=0.2,0.4", *TINY_MODEL, *folder_data(image_folders), *UNSTOPPABLE]
    with cli([*args, f"tracking.uri={tracking_uri}"], tmp_path) as process:
        [job] = poll(lambda: training(client, jobs=1, epochs=2), "job with 2 epochs", STARTUP_DEADLINE, process)
        signal_while_stopped(process, client, job.info.run_id, signal.SIGINT)
        returncode, stderr = ended(process, tmp_path)

    assert returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    [sweep] = [r for r in client.search_runs([job.info.experiment_id]) if r.data.tags["simpsons.run_type"] == "sweep"]
    head, parts = interrupted_line(stderr)
    assert (head, parts) == (
        "interrupted (SIGINT)",
        {f"run {job.info.run_id} KILLED", f"sweep {sweep.info.run_id} KILLED"},
    )
    assert [r.info.run_id for r in train_runs(client)] == [job.info.run_id]  # the sweep stopped there
    assert sweep.info.status == "KILLED"
    assert_killed_keeping_metrics(client, job.info.run_id, epochs=2)


@pytest.mark.slow
def test_sigterm_ends_a_single_run_killed_in_one_line_with_143(image_folders, tracking_uri, client, tmp_path):
    """As above: a run that cannot finish, signalled while it is seen stopped and RUNNING."""
    args = [*TINY_MODEL, *folder_data(image_folders), *UNSTOPPABLE, f"tracking.uri={tracking_uri}"]
    with cli(args, tmp_path) as process:
        [run] = poll(lambda: training(client, jobs=1, epochs=2), "run with 2 epochs", STARTUP_DEADLINE, process)
        signal_while_stopped(process, client, run.info.run_id, signal.SIGTERM)
        returncode, stderr = ended(process, tmp_path)

    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert interrupted_line(stderr) == ("interrupted (SIGTERM)", {f"run {run.info.run_id} KILLED"})
    assert_killed_keeping_metrics(client, run.info.run_id, epochs=2)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [JOBLIB, SUBMITIT], ids=["joblib", "submitit_local"])
def test_sigterm_to_the_driver_of_a_parallel_sweep_ends_every_job_process_and_run(
    launcher, image_folders, tracking_uri, client, tmp_path
):
    """SIGTERM to the driver only. Two jobs run at once, each in a process below the driver; no job
    can finish (a million epochs), so both are RUNNING when the signal comes, and must end KILLED.
    Each ends its run itself (no `ended_by` tag): its process had the handler, and no launcher killed
    it first (one job process exiting does not take the other with it)."""
    args = ["-m", *launcher, "dropout=0.2,0.4", *TINY_MODEL, *folder_data(image_folders), *UNSTOPPABLE]
    with cli([*args, f"tracking.uri={tracking_uri}"], tmp_path) as process:
        jobs = poll(lambda: training(client, jobs=2, epochs=1), "2 jobs training", STARTUP_DEADLINE, process)
        descendants = psutil.Process(process.pid).children(recursive=True)
        job_pids = {int(job.data.tags["simpsons.pid"]) for job in jobs}
        assert job_pids <= {p.pid for p in descendants}, "the jobs run in processes below the driver"
        assert {client.get_run(job.info.run_id).info.status for job in jobs} == {"RUNNING"}
        process.send_signal(signal.SIGTERM)
        returncode, stderr = ended(process, tmp_path)
        end = time.monotonic() + 60  # the loky resource tracker exits once the driver has
        while (left := [p for p in descendants if signals.alive(p)]) and time.monotonic() < end:
            time.sleep(0.2)
        left_running = [describe(p) for p in left]
        for process_left in left:  # no longer below the driver: `cli` would not see them
            with contextlib.suppress(psutil.Error):
                process_left.kill()

    assert not left_running, f"left running after the driver exited: {left_running}"
    assert returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    runs = client.search_runs([jobs[0].info.experiment_id])
    [sweep] = [r for r in runs if r.data.tags["simpsons.run_type"] == "sweep"]
    assert sweep.info.status == "KILLED"
    assert {r.info.run_id for r in runs} == {sweep.info.run_id, *(job.info.run_id for job in jobs)}
    for job in jobs:
        assert_killed_keeping_metrics(client, job.info.run_id, epochs=1)
    by_itself = [job for job in jobs if "simpsons.ended_by" not in client.get_run(job.info.run_id).data.tags]
    assert len(by_itself) == len(jobs)
    expected = {*(f"run {job.info.run_id} KILLED" for job in jobs), f"sweep {sweep.info.run_id} KILLED"}
    assert interrupted_line(stderr) == ("interrupted (SIGTERM)", expected)


def job_runs(client: MlflowClient) -> dict[str, Run]:
    """The sweep's job runs by their `epochs` param (each job of these tests has its own)."""
    return {run.data.params["epochs"]: run for run in train_runs(client) if "epochs" in run.data.params}


def trained(client: MlflowClient, run: Run, epochs: int) -> bool:
    return len(client.get_metric_history(run.info.run_id, "epoch/loss")) >= epochs


def driver_gone_and_children_with_it(descendants: list[psutil.Process]) -> list[str]:
    """The processes of `descendants` still running once the driver has exited and a minute has passed
    (loky's resource tracker exits once the driver has); they are killed, as no test may leave any."""
    end = time.monotonic() + 60
    while (left := [p for p in descendants if signals.alive(p)]) and time.monotonic() < end:
        time.sleep(0.2)
    running = [describe(p) for p in left]
    for leftover in left:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    return running


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_joblib_job_whose_process_is_killed_ends_alone_and_the_sweep_goes_on(
    signum, image_folders, tracking_uri, client, tmp_path
):
    """Three jobs, two at a time: a victim and a sibling that cannot finish (a million epochs), and a
    short job that waits for a free process. Once the victim and the sibling train, the victim's
    process is killed: the short job then gets a new process and finishes, while the sibling trains
    on in its own. Then the sibling's process gets SIGTERM too. The sweep ends with the count, exit 1,
    no traceback. Nothing here depends on timing: the short job can only start once the victim is gone."""
    victim, sibling, short = "1000000", "1000001", "2"
    args = ["-m", *JOBLIB, f"epochs={victim},{sibling},{short}", *TINY_MODEL, *folder_data(image_folders)]
    with cli([*args, f"tracking.uri={tracking_uri}"], tmp_path) as process:

        def both_training() -> dict[str, Run]:
            runs = job_runs(client)
            return runs if all(key in runs and trained(client, runs[key], 1) for key in (victim, sibling)) else {}

        runs = poll(both_training, "the victim and the sibling training", STARTUP_DEADLINE, process)
        assert short not in runs, "the short job waits for a free process"
        pids = {key: int(runs[key].data.tags["simpsons.pid"]) for key in (victim, sibling)}
        descendants = psutil.Process(process.pid).children(recursive=True)
        os.kill(pids[victim], signum)

        def short_finished() -> Run | None:
            run = job_runs(client).get(short)
            return run if run is not None and run.info.status == "FINISHED" else None

        finished = poll(short_finished, "the short job finished", STARTUP_DEADLINE, process)
        assert int(finished.data.tags["simpsons.pid"]) not in pids.values(), "a new process ran the short job"
        assert client.get_run(runs[sibling].info.run_id).info.status == "RUNNING"
        assert psutil.Process(pids[sibling]).is_running(), "the sibling's process lives on"
        os.kill(pids[sibling], signal.SIGTERM)
        returncode, stderr = ended(process, tmp_path)
        left_running = driver_gone_and_children_with_it(descendants)

    stdout = (tmp_path / "stdout.txt").read_text()
    assert returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    assert not left_running, f"left running after the driver exited: {left_running}"
    assert f"job #0 (epochs={victim}): its process was killed by {signum.name} before the job ended" in stdout
    [sweep] = [
        r for r in client.search_runs([finished.info.experiment_id]) if r.data.tags["simpsons.run_type"] == "sweep"
    ]
    assert sweep.info.status == "KILLED"
    assert f"(run {sweep.info.run_id}): 3 jobs: 1 finished, 0 failed, 2 killed" in stdout
    metrics = sweep.data.metrics
    assert (metrics["jobs_finished"], metrics["jobs_failed"], metrics["jobs_killed"]) == (1, 0, 2)
    assert_killed_keeping_metrics(client, runs[sibling].info.run_id, epochs=1)
    killed = client.get_run(runs[victim].info.run_id)
    assert killed.info.status == "KILLED"
    if signum == signal.SIGTERM:  # it ended its run itself
        assert killed.data.tags["error"] == "interrupted (SIGTERM)" and "simpsons.ended_by" not in killed.data.tags
    else:  # it could not: the next job to start (end_dead_runs) or the driver at the end did, saying why
        assert killed.data.tags["simpsons.ended_by"] in (
            f"its process {pids[victim]} on {socket.gethostname()} is gone",
            f"sweep run {sweep.info.run_id}: the job's process ended before its run",
        )


@pytest.mark.slow
def test_a_joblib_driver_killed_9_leaves_no_job_training(image_folders, tracking_uri, client, tmp_path):
    """kill -9 of the driver: its job processes see it gone, end their runs KILLED and exit; the sweep's
    run, which its driver could not end, is ended KILLED by the last of them (or the next command)."""
    args = ["-m", *JOBLIB, "dropout=0.2,0.4", *TINY_MODEL, *folder_data(image_folders), *UNSTOPPABLE]
    with cli([*args, f"tracking.uri={tracking_uri}"], tmp_path) as process:
        jobs = poll(lambda: training(client, jobs=2, epochs=1), "2 jobs training", STARTUP_DEADLINE, process)
        descendants = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        assert process.wait(timeout=EXIT_DEADLINE) == -signal.SIGKILL
        left_running = driver_gone_and_children_with_it(descendants)

    assert not left_running, f"left running after the driver was killed: {left_running}"
    for job in jobs:
        run = client.get_run(job.info.run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["error"] == f"interrupted (SIGTERM: the sweep's driver (pid {process.pid}) is gone)"
    [sweep] = [
        r for r in client.search_runs([jobs[0].info.experiment_id]) if r.data.tags["simpsons.run_type"] == "sweep"
    ]
    # Ended by the last job to end its run or, should both have ended at once, by the next command
    lifecycle.end_dead_runs(client, [sweep.info.experiment_id])
    sweep = client.get_run(sweep.info.run_id)
    assert sweep.info.status == "KILLED" and sweep.data.metrics["jobs_killed"] == 2
    assert sweep.data.tags["simpsons.ended_by"] == f"its process {process.pid} on {socket.gethostname()} is gone"


END_DESCENDANTS = """
import json, subprocess, sys
import psutil
from simpsons import signals

def child(code, **options):
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **options)
    words = process.stdout.readline().split()
    assert words[0] == "ready", words
    return [psutil.Process(process.pid), *(psutil.Process(int(pid)) for pid in words[1:])]

SLEEP = "import time; time.sleep(600)"
READY = "print('ready', flush=True); " + SLEEP
[polite] = child(READY)
# in a session of its own, with a child of its own (as a submitit job may be)
GRANDCHILD = f"import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', {SLEEP!r}]); "
session, grandchild = child(GRANDCHILD + "print('ready', g.pid, flush=True); " + SLEEP, start_new_session=True)
[stubborn] = child("import signal; signal.signal(signal.SIGTERM, lambda *a: None); " + READY)
# like loky's resource tracker: ignores SIGTERM, exits when its parent does (end of its stdin)
[tracker] = child(
    "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); sys.stdin.read()",
    stdin=subprocess.PIPE,
)
signals.end_descendants(grace=1.0)
processes = dict(polite=polite, session=session, grandchild=grandchild, stubborn=stubborn, tracker=tracker)
print(json.dumps({name: [p.pid, p.is_running() and p.status() != "zombie"] for name, p in processes.items()}))
"""


def test_end_descendants_ends_children_and_grandchildren_kills_holdouts_and_leaves_sigterm_ignorers():
    result = subprocess.run([sys.executable, "-c", END_DESCENDANTS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert {name: still for name, (_, still) in report.items()} == {
        "polite": False,
        "session": False,
        "grandchild": False,
        "stubborn": False,  # SIGKILL after the grace period
        "tracker": True,  # not waited for, not killed: it ends when its parent does
    }
    tracker = report["tracker"][0]
    poll(lambda: not psutil.pid_exists(tracker) or psutil.Process(tracker).status() == "zombie", "tracker exit", 60)


LOKY_LIKE_WORKER = """
import os, signal
from simpsons import signals

def task():
    with signals.job_process():
        try:
            print("ready", flush=True)
            while True:
                signal.pause()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal during the cleanup
            for _ in range(1000):  # Python runs signal handlers at jumps like this loop's
                pass
            print("cleaned up", flush=True)

while True:  # as a loky worker does: an exception from a task is its result, then the next task
    try:
        task()
    except BaseException as error:
        print("swallowed", type(error).__name__, flush=True)
"""


def test_a_job_process_ends_its_cleanup_then_dies_of_the_signal_even_in_a_loop_that_swallows_it():
    worker = subprocess.Popen([sys.executable, "-c", LOKY_LIKE_WORKER], stdout=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(worker.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=60), "the worker did not start"
        assert worker.stdout.readline() == "ready\n"
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert output == "cleaned up\n"  # not interrupted by the second signal, and not swallowed
    assert worker.returncode == -signal.SIGTERM


def test_the_sweep_callback_pickles_for_the_job_processes_without_its_client_and_heartbeat(tracking_uri):
    callback = MlflowSweepCallback()
    callback.client = MlflowClient(tracking_uri)
    parent = callback.client.create_run(callback.client.create_experiment("sweeps")).info.run_id
    callback.parent_run_id = parent
    callback.heartbeat = lifecycle.Heartbeat(callback.client, callback.parent_run_id, 30)
    copy = pickle.loads(pickle.dumps(callback))
    assert (copy.client, copy.heartbeat, copy.parent_run_id) == (None, None, parent)
    assert copy._end_parent(RunStatus.FAILED) is None  # a job's copy cannot end the parent: it has no client
    assert callback.client.get_run(parent).info.status == "RUNNING"


def test_the_line_and_the_exit_codes():
    sigterm = signals.summary(signal.SIGTERM, {"a1": "KILLED", "b2": "KILLED"}, ("c3", "KILLED"))
    assert sigterm == "interrupted (SIGTERM): run a1 KILLED, run b2 KILLED, sweep c3 KILLED"
    assert signals.summary(signal.SIGINT, {}, None) == "interrupted (SIGINT): no run had started"
    assert (signals.exit_code(signal.SIGINT), signals.exit_code(signal.SIGTERM)) == (130, 143)


SWALLOWED_THEN_EPOCH = """
import os, signal
from simpsons import signals
signals.install()
try:
    os.kill(os.getpid(), signal.SIGTERM)  # handled at once: KeyboardInterrupt, which this code swallows
    signal.pause()
except KeyboardInterrupt:
    pass
try:
    with signals.held():  # the next epoch's metrics write
        pass
    print("trained on")
except KeyboardInterrupt as error:
    print(f"interrupted again: {error}")
"""


def test_an_interrupt_that_some_code_swallowed_is_raised_again_at_the_next_epoch_end():
    """scancel sends one SIGTERM: if its KeyboardInterrupt is swallowed, the job must still stop."""
    result = subprocess.run([sys.executable, "-c", SWALLOWED_THEN_EPOCH], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "interrupted again: SIGTERM", result.stderr[-2000:]


JOB_OUT_AFTER_A_SIGNAL = """
import os, signal, sys
from simpsons import signals
if sys.argv[1] == "in-the-driver":
    signals.install(driver=True)  # the default launcher runs its jobs here
try:
    with signals.job_process():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once: KeyboardInterrupt
            signal.pause()
        except KeyboardInterrupt:
            if sys.argv[2] == "raised":
                raise RuntimeError("a library's cleanup, cut short by the interrupt")
            if sys.argv[2] == "exited":
                sys.exit(1)  # a single run's one-line exit on a lost server
            # "returned": swallowed after the job's last store write, or a sweep's job on a lost server
    print("returned", flush=True)
except KeyboardInterrupt as interrupt:
    print(f"interrupted ({interrupt}) by {type(interrupt.__cause__).__name__}", flush=True)
except Exception as error:
    print(f"error: {error}", flush=True)  # Hydra would catch it and start the next job
"""


@pytest.mark.parametrize(
    "where,how,returncode,printed",
    [
        ("in-a-worker", "raised", -signal.SIGTERM, ""),
        ("in-a-worker", "returned", -signal.SIGTERM, ""),
        ("in-a-worker", "exited", -signal.SIGTERM, ""),
        ("in-the-driver", "raised", 0, "interrupted (SIGTERM) by RuntimeError"),
        ("in-the-driver", "returned", 0, "interrupted (SIGTERM) by NoneType"),
        ("in-the-driver", "exited", 0, "interrupted (SIGTERM) by SystemExit"),
    ],
)
def test_a_job_that_comes_out_of_a_signal_any_way_is_interrupted(where, how, returncode, printed):
    """Once a signal came, a job ends as an interrupted one however it comes out of job_process: a
    launcher's worker dies of the signal, also when its job raised another error or returned (a loky
    or Ray worker kept alive would take its next job with the signal already received); in the driver
    (the default launcher) the job raises KeyboardInterrupt, which Hydra does not catch, so that no
    next job starts."""
    result = subprocess.run(
        [sys.executable, "-c", JOB_OUT_AFTER_A_SIGNAL, where, how], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (returncode, printed), result.stderr[-2000:]


WATCHED_JOB = """
import os, signal, socket, subprocess, sys, threading, time
import psutil
from simpsons import signals

driver = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
started = psutil.Process(driver.pid).create_time()
os.environ["SIMPSONS_DRIVER"] = f"{socket.gethostname()} {driver.pid} {started:.3f} {sys.argv[1]}"
os.environ.pop("SLURM_JOB_ID", None)
if sys.argv[2] != "-":
    os.environ["SLURM_JOB_ID"] = sys.argv[2]  # this job's own, as Slurm sets it
with signals.job_process():
    watching = "driver-watch" in [thread.name for thread in threading.enumerate()]
    print("watching" if watching else "not watching", flush=True)
    driver.kill()  # its driver killed -9
    driver.wait()
    if watching:
        time.sleep(120)  # the signal comes first, and the process dies of it
        print("trained on", flush=True)
"""


@pytest.mark.parametrize(
    "driver_slurm_job,own_slurm_job,watched",
    [("-", "-", True), ("-", "12_0", False), ("7", "7", True)],
    ids=["on-this-host", "a-slurm-job-of-its-own", "in-the-drivers-slurm-allocation"],
)
def test_a_job_process_ends_when_its_driver_is_gone_but_a_slurm_job_runs_on(driver_slurm_job, own_slurm_job, watched):
    """kill -9 of the driver: a job process on its host, which watches it, sends itself SIGTERM and
    dies of it; a Slurm job of its own (not the driver's allocation) does not watch it."""
    result = subprocess.run(
        [sys.executable, "-c", WATCHED_JOB, driver_slurm_job, own_slurm_job],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if watched:
        assert (result.returncode, result.stdout) == (-signal.SIGTERM, "watching\n"), result.stderr[-2000:]
    else:
        assert (result.returncode, result.stdout) == (0, "not watching\n"), result.stderr[-2000:]
