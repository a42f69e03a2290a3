"""A run from start to end, and the runs that other processes left behind.

- `tracked_run`: a run that ends FINISHED, FAILED or KILLED, never RUNNING, while its process
  lives; it records which process owns it (host, pid, start time, Slurm job) and beats a heartbeat.
- `end_dead_runs`: what any later command does for runs whose process was killed -9, OOM-killed
  or lost with its node: it ends them KILLED, with the reason in a tag. A sweep whose driver is
  gone waits for its jobs that still run (Slurm's run on without it); the last of them to end
  ends it (`end_orphaned_sweep`), FINISHED if every job had finished.
- `finished_run` / `resumable_runs` / `record_reuse`: a config that already has a FINISHED run is
  not trained again; a killed end-to-end run is resumed in the same MLflow run.

No TensorFlow here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import psutil
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from simpsons import signals
from simpsons.tracking import connection, races, retention, schema, sweep_outcome

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0  # another host's run with no heartbeat for this long is dead
SEARCH_LIMIT = 50_000
BATCH_LIMIT = 100  # params per MLflow log_batch call


def process_tags() -> dict[str, str]:
    """Which process owns a run: host, pid and its start time (a reused pid is another process),
    and the Slurm job when there is one."""
    tags = {
        schema.HOST: socket.gethostname(),
        schema.PID: str(os.getpid()),
        schema.PROCESS_START: f"{psutil.Process().create_time():.3f}",
        schema.HEARTBEAT: f"{time.time():.3f}",
    }
    slurm_job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if slurm_job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        tags[schema.SLURM_JOB_ID] = f"{slurm_job}_{task}" if task and "SLURM_ARRAY_JOB_ID" in os.environ else slurm_job
    return tags


class Heartbeat:
    """A daemon thread that stamps the run's HEARTBEAT tag every `seconds` until stopped."""

    def __init__(self, client: MlflowClient, run_id: str, seconds: float) -> None:
        self._client, self._run_id, self._seconds = client, run_id, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop beating; `wait` for a beat in flight (not when the server is lost: it may retry for long)."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
        self.stop(wait=not connection.lost(error))

    def _beat(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._client.set_tag(self._run_id, schema.HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # a busy or unreachable store must not end the run; the next beat retries
                log.debug("heartbeat of run %s failed", self._run_id, exc_info=True)
            else:
                connection.answered()


@contextmanager
def tracked_run(
    experiment_id: str,
    name: str,
    parent_run_id: str | None,
    tags: dict[str, str],
    resume_run_id: str | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    system_metrics_seconds: float = 0,
) -> Iterator[Run]:
    """An active MLflow run that ends FINISHED, FAILED (with the error logged) or KILLED (Ctrl-C,
    SIGTERM). With `resume_run_id`, that earlier run goes on, moved under `parent_run_id`.
    With `system_metrics_seconds` > 0, MLflow's system metrics (CPU, memory, disk, network, and
    GPU where pynvml sees one) are sampled that often into it (SystemMetrics)."""
    client = MlflowClient()
    owner = process_tags() | {schema.HEARTBEAT_SECONDS: f"{heartbeat_seconds:g}"}
    if resume_run_id:
        moved = {schema.PARENT_RUN: parent_run_id} if parent_run_id else {}
        client.log_batch(resume_run_id, tags=[RunTag(k, v) for k, v in (tags | owner | moved).items()])
        client.update_run(resume_run_id, name=name)  # named as a job of the sweep it now belongs to
        earlier = client.get_run(resume_run_id).data.tags
        for stale in (schema.ENDED_BY, schema.ERROR):  # how it ended before; it goes on now
            if stale in earlier:
                client.delete_tag(resume_run_id, stale)
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id, tags=tags | owner
        )
    status: int | None = None  # a RunStatus, decided once the job came out of the block
    system_metrics = SystemMetrics(run.info.run_id, system_metrics_seconds, resumed=bool(resume_run_id))
    with Heartbeat(client, run.info.run_id, heartbeat_seconds), system_metrics:
        try:
            yield run
            status = RunStatus.FINISHED
        except BaseException as error:
            how = _how_interrupted(error)
            status = RunStatus.FAILED if how is None else RunStatus.KILLED
            if connection.lost(error):  # one quick try each to say so and end the run: the server is gone
                connection.give_up()
                system_metrics.abandon()
                lost = connection.server_lost(error)
                quietly(lambda: mlflow.set_tag(schema.ERROR, str(lost)))
                quietly(lambda: mlflow.end_run(RunStatus.to_string(status)))
                raise
            if how is None:
                _record_error(f"{type(error).__name__}: {error}", error)
            else:  # with the traceback when another error came with the interrupt (its context)
                bare = isinstance(error, KeyboardInterrupt) and error.__context__ is None
                _record_error(how, None if bare else error)
            raise
        finally:
            # A signal waits until the run is ended: a Slurm job that submitit ends (SystemExit) on
            # SIGUSR2 gets SIGTERM from srun next; raised here, it skipped the end, and MLflow's exit
            # hook then ended the run FINISHED.
            with signals.held():
                system_metrics.stop()  # its last samples are logged before the run ends
                if status != RunStatus.FINISHED and signals.received() is not None:
                    status = RunStatus.KILLED  # also when the signal came while the error was recorded
                elif status is None:  # the except clause itself raised before it decided
                    status = RunStatus.FAILED
                if mlflow.active_run() is not None:
                    _end_active_run(RunStatus.to_string(status))
                if parent_run_id:
                    end_orphaned_sweep(client, parent_run_id)


class SystemMetrics:
    """MLflow's own system-metrics monitor (what mlflow.start_run(log_system_metrics=True) starts:
    `system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, `system/gpu_*`, ...,
    the UI's System metrics section), sampled every `seconds`, logged at each sample.

    Started here rather than by start_run so that the run can wait for its last samples before it
    ends, and not wait on a lost server: start_run's monitor is joined by end_run, and its thread
    may then be inside a request that retries for tracking.retry_seconds."""

    def __init__(self, run_id: str, seconds: float, resumed: bool) -> None:
        self._monitor = None
        if seconds > 0:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # MLflow says at INFO each start, stop and skipped GPU: lines in every job's console that
            # say nothing a person acts on (and that Ray forwards late, after a sweep's last line)
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

            # resume_logging: a resumed run's samples continue its steps
            self._monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=resumed)

    def __enter__(self) -> SystemMetrics:
        if self._monitor is not None:
            self._monitor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Log what was sampled and stop (once)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()

    def abandon(self) -> None:
        """The server is gone: stop sampling without waiting for its thread (a daemon) or logging more."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor._shutdown_event.set()  # what finish() sets, without its join and flush


def quietly(request: Callable[[], object]) -> None:
    """A request to a store that may be gone, where its failure changes nothing: left RUNNING by a
    process that then exits, a run is ended KILLED by the next command (end_dead_runs)."""
    try:
        request()
    except Exception:
        log.debug("a request to a lost tracking server failed", exc_info=True)


def _end_active_run(status: str, attempts: int = 3) -> None:
    """End the active run with `status`, trying again on a store error.

    A signal can land inside a store call and cut its database session short. mlflow.end_run
    drops the run from its active-run stack before it writes the status, so the retries write it
    with a new client (a new session). Should every attempt fail, the error is logged, not raised,
    so that it does not replace the exception that ended the run (a Ctrl-C stays a Ctrl-C): the run,
    left RUNNING by a process that then exits, is ended KILLED by the next command (end_dead_runs).
    """
    run_id = mlflow.active_run().info.run_id
    try:
        mlflow.end_run(status)
        return
    except Exception as error:  # any store error: SQLAlchemy, HTTP, MLflow's own
        log.warning("could not end run %s %s: %s; trying again", run_id, status, error)
    for attempt in range(2, attempts + 1):
        try:
            MlflowClient().set_terminated(run_id, status)
            return
        except Exception as error:
            log.warning("could not end run %s %s (attempt %d of %d): %s", run_id, status, attempt, attempts, error)


def _how_interrupted(error: BaseException) -> str | None:
    """How a run was interrupted, if it was: "interrupted (SIGTERM)" for a Ctrl-C or a signal.

    The signal's KeyboardInterrupt can reach the run as another error: a library whose cleanup it
    cut short raises its own on the way up. Seen once under load, a scancelled Slurm job's run ended
    FAILED; once this process has received the signal, whatever comes up killed the run."""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted ({error})" if str(error) else "interrupted"
    if (signum := signals.received()) is not None:
        return f"interrupted ({signals.interruption() or signum.name})"
    return None


def _record_error(message: str, error: BaseException | None) -> None:
    """Best effort: the run must still be ended if the store cannot take the error."""
    try:
        mlflow.set_tag(schema.ERROR, message[:5000])
        if error is not None:
            mlflow.log_text("".join(traceback.format_exception(error)), schema.ERROR_TXT)
    except Exception:
        log.exception("could not log the error to MLflow")


def end_dead_runs(
    client: MlflowClient, experiment_ids: list[str], stale_after: float = STALE_AFTER_SECONDS
) -> list[Run]:
    """End KILLED every RUNNING run whose process is gone; says so in one line; returns them.

    On this host a run is dead when its process is (or its pid now belongs to another process);
    on another host, when its heartbeat is older than `stale_after` seconds. A sweep whose driver
    is gone but some of whose jobs still run is left to them (`end_orphaned_sweep`); one whose
    every job had finished ends FINISHED.
    """
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=SEARCH_LIMIT)
    # Sweeps last: a sweep killed -9 counts its dead jobs in its outcome once they are ended.
    running.sort(key=_is_sweep)
    ended = {}
    for run in running:
        if why_dead(run, stale_after) is None:
            continue
        # Every job of a sweep starts with this: several may end the same dead run at once.
        end = functools.partial(_end_if_dead, client, run, stale_after)
        status = races.shared_write(client.tracking_uri, end, f"end dead run {run.info.run_id}")
        if status is not None:
            ended[run.info.run_id] = (run, status)
    killed = [run for run, status in ended.values() if status == "KILLED"]
    if killed:
        listed = ", ".join(f"{run.info.run_id[:8]} ({run.info.run_name})" for run in killed)
        log.warning("ended %d run(s) KILLED whose process is gone: %s", len(killed), listed)
    for run, status in ended.values():
        if _is_sweep(run) and status == "FINISHED":
            log.warning("ended sweep run %s FINISHED: its driver is gone, and every job had finished", run.info.run_id)
            retention.delete_sweep_models(client, run.info.run_id)  # as its driver would have at its end
    return [run for run, _ in ended.values()]


def end_orphaned_sweep(client: MlflowClient, sweep_run_id: str, stale_after: float = STALE_AFTER_SECONDS) -> None:
    """Called by a job once its run has ended: if the sweep's driver is gone and no other job of it
    still runs, end the sweep's run too, with its outcome. Best effort: the job's run is ended already."""
    try:
        end = functools.partial(_end_if_dead, client, client.get_run(sweep_run_id), stale_after, ending_job=True)
        status = races.shared_write(client.tracking_uri, end, f"end orphaned sweep run {sweep_run_id}")
        if status is not None:
            log.warning("ended sweep run %s %s: its driver is gone, and this was its last job", sweep_run_id, status)
            if status == "FINISHED":  # its keep_models, as its driver would have applied it
                retention.delete_sweep_models(client, sweep_run_id)
    except Exception as error:  # any store error: SQLAlchemy, HTTP, MLflow's own
        log.warning("could not check whether sweep run %s is left without its driver: %s", sweep_run_id, error)


def _end_if_dead(client: MlflowClient, run: Run, stale_after: float, ending_job: bool = False) -> str | None:
    """End `run` if its process is gone, read afresh; a sweep only once none of its jobs runs: KILLED,
    or FINISHED if every planned job had finished. The status it was ended with, or None.
    `ending_job`: called by a job of the sweep whose run has ended (its Slurm task is not one left)."""
    if run.info.status != "RUNNING" or why_dead(run, stale_after) is None:
        return None
    fresh = client.get_run(run.info.run_id)  # a dead process cannot change it after this read
    reason = why_dead(fresh, stale_after) if fresh.info.status == "RUNNING" else None
    if reason is None:
        return None
    status, result = "KILLED", None
    if _is_sweep(fresh):
        if _jobs_alive(client, fresh, stale_after) or _slurm_tasks_left(fresh, ending_job):  # they will end it
            return None
        result = sweep_outcome.outcome(client, fresh)  # read once: the status and the counts logged agree
        status = _orphaned_sweep_status(result, fresh)
    client.set_tag(run.info.run_id, schema.ENDED_BY, reason)
    if result is not None:  # before its status: whoever sees the sweep ended sees its counts too
        _record_sweep_outcome(client, fresh, result)
    client.set_terminated(run.info.run_id, status)
    return status


def _is_sweep(run: Run) -> bool:
    return run.data.tags.get(schema.RUN_TYPE) == schema.SWEEP


def _jobs_alive(client: MlflowClient, sweep: Run, stale_after: float) -> bool:
    running = client.search_runs(
        [sweep.info.experiment_id],
        f"tags.`{schema.PARENT_RUN}` = '{sweep.info.run_id}' AND attributes.status = 'RUNNING'",
        max_results=SEARCH_LIMIT,
    )
    jobs = [run for run in running if run.data.tags.get(schema.RUN_TYPE) != schema.ENSEMBLE]  # nested, no job
    return any(why_dead(job, stale_after) is None for job in jobs)


def _slurm_tasks_left(sweep: Run, ending_job: bool) -> bool:
    """Whether the sweep's Slurm job array has tasks queued or running (Slurm runs them whatever became
    of the driver), but for this process's own if it is a job that has ended its run. (A job that
    starts counts itself: the sweep must wait for it.) Without Slurm's client here, none are seen."""
    array = sweep.data.tags.get(schema.SLURM_ARRAY)
    if not array or shutil.which("squeue") is None:
        return False
    own = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if ending_job else None
    try:  # -r: one line per task, pending ones included
        listed = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", array], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and bool(set(listed.stdout.split()) - {own})


def _orphaned_sweep_status(result: sweep_outcome.Outcome, sweep: Run) -> str:
    """FINISHED when every job the sweep planned (its `num_jobs` param) has a FINISHED run, as if its
    driver had waited for them; else KILLED, its driver having been killed."""
    jobs = result.jobs
    planned = int(sweep.data.params.get("num_jobs", "0"))
    return "FINISHED" if planned and len(jobs) >= planned and all(j.status == "FINISHED" for j in jobs) else "KILLED"


def _record_sweep_outcome(client: MlflowClient, sweep: Run, result: sweep_outcome.Outcome) -> None:
    try:
        sweep_outcome.record(client, sweep, client.tracking_uri, result)
    except Exception as error:  # best effort: the run must still be ended
        log.warning("could not log the outcome of sweep run %s: %s", sweep.info.run_id, error)


def why_dead(run: Run, stale_after: float, now: float | None = None) -> str | None:
    """Why `run` (RUNNING) can no longer be running, or None while its process may still live."""
    tags = run.data.tags
    host = tags.get(schema.HOST)
    if host == socket.gethostname() and schema.PID in tags:
        pid = int(tags[schema.PID])
        if _process_alive(pid, float(tags.get(schema.PROCESS_START, "0"))):
            return None
        return f"its process {pid} on {host} is gone"
    now = time.time() if now is None else now
    last = float(tags.get(schema.HEARTBEAT) or run.info.start_time / 1000)
    # A run that beats less often than the reader's limit would look dead between two beats.
    stale_after = max(stale_after, 3 * float(tags.get(schema.HEARTBEAT_SECONDS, 0)))
    if now - last <= stale_after:
        return None
    return f"no heartbeat from {host or 'its process'} for {now - last:.0f} s (tracking.stale_after={stale_after:g})"


def _process_alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def config_hash(config: dict[str, Any], data_fingerprint: str, code_version: str) -> str:
    """What makes two training runs the same: resolved config, data and code."""
    identity = {"config": config, "data": data_fingerprint, "code": code_version}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def finished_run(client: MlflowClient, experiment_id: str, identity: str) -> Run | None:
    """The newest FINISHED training run with this config hash that trained all its epochs: a run its
    search trial's pruner stopped (tag simpsons.pruned) stands for no other job."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{schema.CONFIG_HASH}` = '{identity}' AND tags.`{schema.RUN_TYPE}` = '{schema.TRAIN}' "
        "AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=100,  # of one config: a few pruned ones at most
    )
    return next((run for run in found if schema.PRUNED not in run.data.tags), None)


def resumable_runs(client: MlflowClient, experiment_id: str, identity: str) -> list[Run]:
    """KILLED or FAILED training runs with this config hash, newest first."""
    return client.search_runs(
        [experiment_id],
        f"tags.`{schema.CONFIG_HASH}` = '{identity}' AND tags.`{schema.RUN_TYPE}` = '{schema.TRAIN}' "
        "AND attributes.status != 'FINISHED' AND attributes.status != 'RUNNING'",  # KILLED or FAILED
        order_by=["attributes.start_time DESC"],
        max_results=SEARCH_LIMIT,
    )


def record_reuse(
    client: MlflowClient, experiment_id: str, name: str, parent_run_id: str | None, original: Run, tags: dict[str, str]
) -> str:
    """A FINISHED run in this sweep that stands for `original`: its params, final metrics, dataset
    inputs and a pointer to it (tag and description), so the sweep shows its whole grid; no artifacts."""
    note = f"Reuses run {original.info.run_id} ({original.info.run_name}): same config, data and code."
    run_tags = tags | {
        schema.RUN_TYPE: schema.REUSED,
        schema.REUSED_RUN: original.info.run_id,
        schema.NOTE: note,
    }
    if parent_run_id:
        run_tags[schema.PARENT_RUN] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags=run_tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, value) for key, value in original.data.params.items()]
    for start in range(0, len(params), BATCH_LIMIT):
        client.log_batch(run_id, params=params[start : start + BATCH_LIMIT])
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in original.data.metrics.items()])
    if original.inputs is not None and original.inputs.dataset_inputs:  # the UI's Dataset column, as the original's
        datasets = list(original.inputs.dataset_inputs)
        races.shared_write(client.tracking_uri, lambda: client.log_inputs(run_id, datasets=datasets), "dataset inputs")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_id: str) -> str | None:
    """The parent run that the multirun with this id opened (simpsons.sweep_callback.MlflowSweepCallback)."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{schema.RUN_TYPE}` = '{schema.SWEEP}' AND tags.`{schema.SWEEP_ID}` = '{sweep_id}'",
        max_results=1,
    )
    return found[0].info.run_id if found else None
