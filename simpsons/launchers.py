"""What the presets' launchers add to Hydra's plugins: a killed job ends alone, and a sweep waits for every job.

The presets `hydra/launcher=parallel`, `slurm` and `ray_jobs` name the thin subclasses in
`hydra_plugins/simpsons_launchers/` (Hydra takes launchers only from the `hydra_plugins` package),
which call these functions. What each changes, read in hydra-joblib-launcher 1.2.0 (joblib 1.5's
loky 3.5), hydra-submitit-launcher 1.2.0 (submitit 1.5) and hydra-ray-launcher 1.2.2 (Ray 2.60):

- joblib: `joblib.Parallel` runs every job on one loky executor, and when one of its workers dies
  (a job process killed by a signal, the OOM killer), loky marks the whole executor broken, SIGKILLs
  the other workers and cancels the jobs not started: one killed job failed the sweep with a
  traceback, its siblings' runs left RUNNING. Here each of the `n_jobs` lanes is a loky executor of
  one worker (`launch_parallel`), reused from job to job as joblib's are: a dead worker breaks its
  lane only, which gets a new worker for the next job.
- Slurm: submitit's launcher waits for the jobs in order and stops at the first without a result
  (`scancel`, a node failure), with a traceback, while the others run on under a sweep that then
  ends. Here it waits for every job (`launch_slurm`); an interrupted driver cancels the jobs.
- Ray: `ray.init` puts Ray's own SIGTERM handler (sys.exit) in the driver in place of ours, which
  ends the jobs first; it is put back (`launch_ray`). A job whose worker died is that job's end,
  not the sweep's, and Ray does not retry it (the preset's `max_retries: 0`).

Once every job has ended, if some were killed, the launcher raises `JobsKilled` (exit 1, no
traceback): the sweep's parent run then ends KILLED and the summary counts the killed jobs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import OmegaConf

from simpsons import signals, sweep_callback
from simpsons.tracking import schema

log = logging.getLogger(__name__)

# joblib's LokyBackend sets these in its workers to cpu_count // n_jobs (unless set already), so that
# parallel jobs do not each start a thread per core in native libraries: the lanes do the same.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
CANCEL_WAIT_SECONDS = 300.0  # for cancelled Slurm jobs to end their runs (Slurm's KillWait, 30 s by default)
SLURM_POLL_SECONDS = 2.0


class JobsKilled(SystemExit):
    """Some jobs of the sweep were killed; the others ran to their end. Exit code 1, without a
    traceback: Hydra reports an Exception with one, and lets a SystemExit through."""

    def __init__(self, killed: list[str]) -> None:
        super().__init__(1)
        self.killed = killed


def _describe(idx: int, overrides: Sequence[str], every_job: Sequence[Sequence[str]]) -> str:
    """'job #2 (dropout=0.4)': the job's number and the overrides that tell it from the others."""
    own = [o for o in filter_overrides(overrides) if not all(o in other for other in every_job)]
    return f"job #{idx} ({' '.join(own or filter_overrides(overrides)) or 'no overrides'})"


def _failed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    result = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    result.return_value = error
    return result


def _finish(
    results: list[JobReturn], killed: dict[int, str], every_job: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    """The jobs' returns once every job has ended, for Hydra; JobsKilled instead if some were killed
    (`killed`: their numbers and descriptions).

    Hydra would raise the first failed job's exception, with a traceback; with killed jobs it is not
    given the chance, so each failed job (its run holds the error) gets one line here."""
    if not killed:
        return results
    for idx, result in enumerate(results, start=initial_job_idx):
        if result.status == JobStatus.FAILED and idx not in killed:
            log.error("%s failed: %s", _describe(idx, result.overrides or [], every_job), result._return_value)
    raise JobsKilled(list(killed.values()))


def _prepare(launcher: Any) -> Path:
    """What every launcher of Hydra's does first: its logging, and the sweep's folder, which it returns."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return sweep_dir


# joblib ---------------------------------------------------------------------------------------------


def lanes(n_jobs: int | None, jobs: int) -> int:
    """How many jobs run at once: joblib's meaning of n_jobs (-1: every core, -2: all but one, ...)."""
    cores = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        wanted = 1
    elif n_jobs < 0:
        wanted = max(cores + 1 + n_jobs, 1)
    else:
        wanted = n_jobs
    return max(min(wanted, jobs), 1)


def worker_environment(n_jobs: int) -> dict[str, str]:
    threads = str(max((os.cpu_count() or 1) // n_jobs, 1))
    env = {name: os.environ.get(name, threads) for name in THREAD_VARIABLES}
    if "ENABLE_IPC" not in os.environ:  # TBB's schedulers coordinate across processes
        env["ENABLE_IPC"] = "1"
    return env


class _Lane:
    """One job at a time in one loky worker process, reused from job to job until it dies."""

    def __init__(self, env: dict[str, str]) -> None:
        from joblib.externals.loky import ProcessPoolExecutor

        self._env = env
        self.executor = ProcessPoolExecutor(max_workers=1, env=env)

    def submit(self, function: Callable[..., JobReturn], *args: Any) -> concurrent.futures.Future:
        from joblib.externals.loky.process_executor import BrokenProcessPool

        try:
            return self.executor.submit(function, *args)
        except BrokenProcessPool:  # its idle worker was killed since its last job
            self.replace()
            return self.executor.submit(function, *args)

    def replace(self) -> None:
        from joblib.externals.loky import ProcessPoolExecutor

        self.executor.shutdown(wait=False, kill_workers=True)
        self.executor = ProcessPoolExecutor(max_workers=1, env=self._env)

    def close(self, wait: bool) -> None:
        self.executor.shutdown(wait=wait, kill_workers=not wait)


def launch_parallel(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Run the jobs in `n_jobs` lanes; a job whose process dies is killed, the others go on."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job  # the joblib launcher's job function

    sweep_dir = _prepare(launcher)
    at_once = lanes(launcher.joblib.get("n_jobs"), len(job_overrides))
    log.info("Launching %d jobs, %d at a time, sweep output dir: %s", len(job_overrides), at_once, sweep_dir)
    singleton_state = Singleton.get_state()

    def job(idx: int, overrides: Sequence[str]) -> tuple:
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        return (
            execute_job,
            idx,
            overrides,
            launcher.hydra_context,
            launcher.config,
            launcher.task_function,
            singleton_state,
        )

    jobs = [job(idx, overrides) for idx, overrides in enumerate(job_overrides, start=initial_job_idx)]
    results, killed = _run_in_lanes(jobs, [_Lane(worker_environment(at_once)) for _ in range(at_once)], job_overrides)
    return _finish(results, killed, job_overrides, initial_job_idx)


def _run_in_lanes(
    jobs: list[tuple], idle: list[_Lane], every_job: Sequence[Sequence[str]]
) -> tuple[list[JobReturn], dict[int, str]]:
    """Each job (function, number, overrides, ...) in the next free lane; returns the jobs' returns in
    order, and the killed ones' descriptions by job number."""
    from joblib.externals.loky.process_executor import BrokenProcessPool

    queue = deque(jobs)
    running: dict[concurrent.futures.Future, tuple[_Lane, tuple]] = {}
    results: dict[int, JobReturn] = {}
    killed: dict[int, str] = {}
    finished = False
    try:
        while queue or running:
            while queue and idle:
                lane, job = idle.pop(), queue.popleft()
                running[lane.submit(*job)] = (lane, job)
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                lane, (_, idx, overrides, *_) = running.pop(future)
                try:
                    results[idx] = future.result()
                except BrokenProcessPool as error:  # the job's process died: a signal, the OOM killer
                    killed[idx] = _describe(idx, overrides, every_job)
                    results[idx] = _failed(overrides, error)
                    ended = _how_it_ended(error)
                    log.warning("%s: its process %s before the job ended; the other jobs go on", killed[idx], ended)
                    lane.replace()
                idle.append(lane)
        finished = True
    finally:
        # Interrupted (the driver's handler has ended the job processes already): no waiting for them.
        for lane in idle + [lane for lane, _ in running.values()]:
            lane.close(wait=finished)
    return [results[idx] for idx in sorted(results)], killed


def _how_it_ended(error: BaseException) -> str:
    """From the exit code loky read from the dead worker ('SIGKILL(-9)', 'EXIT(1)'), e.g. 'was killed by SIGKILL'."""
    found = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    code = found.group(1) if found else "unknown"
    return f"was killed by {code.split('(')[0]}" if code.startswith("SIG") else f"ended (exit code {code})"


# Slurm (submitit) -----------------------------------------------------------------------------------


def launch_slurm(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """As hydra-submitit-launcher's `BaseSubmititLauncher.launch` submits (one job array), then waits
    for every job: one without a result (scancel, a node failure, a time limit) is killed, and the
    others are still waited for. Interrupted (Ctrl-C, SIGTERM), the driver cancels the jobs first."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    init_params = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init_params[f"{launcher._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=launcher._EXECUTOR, **init_params)
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            key if key in common else f"{launcher._EXECUTOR}_{key}": value
            for key, value in params.items()
            if key not in {"submitit_folder", "max_num_timeout"}
        }
    )
    sweep_dir = _prepare(launcher)
    log.info("Submitit '%s' sweep output dir : %s", launcher._EXECUTOR, sweep_dir)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    job_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*job_params, strict=True))
    # Slurm runs the jobs whatever becomes of this driver: should it be killed -9, its sweep's run
    # waits for them (tracking.lifecycle), which it finds by the array.
    sweep_callback.tag_sweep(schema.SLURM_ARRAY, jobs[0].job_id.split("_")[0])
    try:
        return _wait_for_slurm_jobs(jobs, job_overrides, initial_job_idx)
    except KeyboardInterrupt:  # the driver's SIGINT or SIGTERM: no job may train on under the ended sweep
        _cancel_slurm_jobs([job.job_id for job in jobs])
        raise


def _wait_for_slurm_jobs(jobs: list, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    results: list[JobReturn] = []
    killed: dict[int, str] = {}
    for idx, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True), start=initial_job_idx):
        try:
            results.append(job.results()[0])
        except FailedJobError as error:  # the job raised outside Hydra's run_job: a failure, with its traceback
            results.append(_failed(overrides, error))
        except UncompletedJobError as error:  # no result: cancelled, its node lost, out of time or memory
            killed[idx] = _describe(idx, overrides, job_overrides)
            results.append(_failed(overrides, error))
            log.warning("%s: Slurm job %s ended %s without a result", killed[idx], job.job_id, _slurm_state(job))
    return _finish(results, killed, job_overrides, initial_job_idx)


def _slurm_state(job: Any) -> str:
    try:
        return job.state
    except Exception:  # sacct unreachable: the state is only for the message
        return "(state unknown)"


def _cancel_slurm_jobs(job_ids: list[str]) -> None:
    """scancel the jobs, then wait until Slurm has none of them left, running or completing: each ends
    its run KILLED on scancel's SIGTERM, within the cluster's KillWait."""
    log.warning("cancelling the sweep's Slurm jobs (%s) and waiting for them to end", ", ".join(job_ids))
    subprocess.run(["scancel", *job_ids], capture_output=True, check=False, timeout=60)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        squeue = ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)]
        listed = subprocess.run(squeue, capture_output=True, text=True, check=False, timeout=60)
        if listed.returncode != 0 or not listed.stdout.strip():  # none left (squeue errs once all are purged)
            return
        time.sleep(SLURM_POLL_SECONDS)
    log.warning("Slurm jobs still listed %g s after scancel: %s", CANCEL_WAIT_SECONDS, ", ".join(job_ids))


# Ray ------------------------------------------------------------------------------------------------


def launch_ray(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """As hydra-ray-launcher's `_core.launch`, with this driver's signal handlers put back once Ray
    has started, and each job's end its own: a job whose worker died is killed, the others go on."""
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray
    from omegaconf import open_dict

    sweep_dir = _prepare(launcher)
    log.info("Ray Launcher is launching %d jobs, sweep output dir: %s", len(job_overrides), sweep_dir)
    # As the plugin does: too little memory for Ray's object store fails in small containers.
    launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)
    start_ray(launcher.ray_cfg.init)
    # ray.init replaced our SIGTERM handler by its own, which exits at once and leaves the jobs'
    # runs RUNNING; ours ends the job processes first (simpsons.signals).
    signals.install()
    pending = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job_id_for_{idx}"
            sweep_config.hydra.job.num = idx
        job = launch_job_on_ray(
            launcher.hydra_context, launcher.ray_cfg.remote, sweep_config, launcher.task_function, Singleton.get_state()
        )
        pending.append((idx, overrides, job))
    results: list[JobReturn] = []
    killed: dict[int, str] = {}
    for idx, overrides, job in pending:
        try:
            results.append(ray.get(job))
        except ray.exceptions.RayTaskError as error:  # raised in the job, outside Hydra's run_job
            results.append(_failed(overrides, error))
        except ray.exceptions.RayError as error:  # its worker died: a signal, the OOM killer, a lost node
            killed[idx] = _describe(idx, overrides, job_overrides)
            results.append(_failed(overrides, error))
            log.warning("%s: its Ray worker ended before the job did (%s)", killed[idx], type(error).__name__)
    return _finish(results, killed, job_overrides, initial_job_idx)
