"""SIGINT and SIGTERM: every run ends KILLED, no job process outlives the driver, one line says so.

The driver (`python -m simpsons.train`) and every job process a Hydra launcher starts handle both
signals the same way: on the first one, end this process's descendants (SIGTERM, a bounded wait,
then SIGKILL), then raise KeyboardInterrupt, which `lifecycle.tracked_run` turns into a KILLED run.
In the driver the descendants are the launcher's job processes: each gets SIGTERM and ends its own
run KILLED, and only once they are gone does the driver end the sweep (`simpsons.train`). A job
process of a launcher then dies of the signal (`job_process`).

Why each launcher needs what it gets here (read in hydra-joblib-launcher 1.2.0 / joblib 1.6's loky,
and hydra-submitit-launcher 1.2.0 / submitit 1.5):

- joblib (the `parallel` preset, simpsons/launchers.py): loky workers are fork-exec'ed children of
  the driver in its session (no setsid), and run the task function, not our main(): the handler is
  installed by the task function (`job_process`). A worker catches BaseException from a task and
  waits for the next one, so a KeyboardInterrupt alone does not end it: it dies of the signal once
  its run has ended. Each worker is an executor of its own, so its death ends only its job; a run
  left RUNNING by a worker SIGKILLed, the driver ends KILLED (`sweep_callback.end_interrupted`). Loky's
  resource tracker ignores SIGINT and SIGTERM and exits when the driver does: it is not waited for.
- Ray (the `ray_jobs` preset): `ray.init` replaces the driver's SIGTERM handler with Ray's, which
  exits at once; the launcher installs ours again. Ray workers run the task function in their main
  thread, so `job_process` installs the handler there too.
- submitit_local: each job is a controller (`python -m submitit.local._local`) that starts the task
  (`python -m submitit.core._submit`). The task sets SIGTERM to "bypass" just before it calls our
  task function, which installs the handler again; a SIGTERM that falls in between is lost, so it
  is sent again until the process is gone. The controller forwards SIGTERM to its task and waits
  for it, but answers SIGINT by SIGKILLing it after about a second: SIGTERM is what gets forwarded.

Ctrl-C in a terminal reaches every process of the foreground group, the jobs of both launchers
included: a job already ending ignores the driver's SIGTERM that follows, and a run whose process
was SIGKILLed (by a submitit controller) is ended KILLED by the driver.

A driver killed -9 cannot end anything: each job process on its host watches it (`_watch_driver`,
by the pid and start time the driver leaves in SIMPSONS_DRIVER) and sends itself SIGTERM when it is
gone, so that no job trains on under a sweep whose driver is dead. Slurm jobs are left to run to
their end, as Slurm runs them whatever becomes of the driver (tracking.lifecycle then ends the
sweep's run after them).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

import psutil

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 30.0  # for the job processes to end their runs and exit, before SIGKILL
RESEND_SECONDS = 1.0
POLL_SECONDS = 0.1
WATCH_SECONDS = 1.0  # how often a job process checks that its driver lives
# Set by the driver for the job processes it starts: "<host> <pid> <start time> <Slurm job or ->".
DRIVER_VARIABLE = "SIMPSONS_DRIVER"

_received: signal.Signals | None = None
_raised: KeyboardInterrupt | None = None  # the exception raised for it, to raise again if swallowed
_run_id: str | None = None  # the MLflow run active in this process when the signal came
_driver_pid: int | None = None
_holding = False  # inside held(): a signal waits for the block to end
_pending: signal.Signals | None = None
_why: str | None = None  # what sent the signal, when this process sent it itself (its driver died)
_watching = False


def install(driver: bool = False) -> None:
    """Handle SIGINT and SIGTERM in this process (again: no change). `driver`: this is main()."""
    global _driver_pid
    if driver:
        _driver_pid = os.getpid()
        # loky (the joblib launcher) leaves its semaphores to multiprocessing's resource tracker
        # when its workers are ended; the tracker, a process started with this environment, would
        # warn of "leaked semaphore objects" after the one line an interrupted command ends with.
        quiet = "ignore:resource_tracker:UserWarning"
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
        # Which process the job processes must not outlive (`job_process`); inherited by them.
        started = f"{psutil.Process().create_time():.3f}"
        slurm_job = os.environ.get("SLURM_JOB_ID", "-")
        os.environ[DRIVER_VARIABLE] = f"{socket.gethostname()} {_driver_pid} {started} {slurm_job}"
    if threading.current_thread() is not threading.main_thread():
        return  # Python runs signal handlers in the main thread only, and sets them there only
    for signum in HANDLED:
        signal.signal(signum, _on_signal)


def received() -> signal.Signals | None:
    """The signal that interrupted this process, if one did."""
    return _received


def interruption() -> KeyboardInterrupt | None:
    """The KeyboardInterrupt raised for the signal that interrupted this process, if one was."""
    return _raised


def interrupted_run_id() -> str | None:
    """The MLflow run active in this process when the signal came: a single run's, or a job's of the
    default launcher, which runs jobs in the driver."""
    return _run_id


def exit_code(signum: signal.Signals) -> int:
    """128 + the signal's number (130, 143): what a shell reports for a process the signal ended."""
    return 128 + int(signum)


def summary(signum: signal.Signals, runs: dict[str, str], sweep: tuple[str, str] | None) -> str:
    """The one line an interrupted command ends with; `runs` and `sweep` map run ids to statuses."""
    ended = [f"run {run_id} {status}" for run_id, status in runs.items()]
    if sweep is not None:
        ended.append(f"sweep {sweep[0]} {sweep[1]}")
    return f"interrupted ({signum.name}): {', '.join(ended) or 'no run had started'}"


@contextlib.contextmanager
def job_process() -> Iterator[None]:
    """Around the task function. Once a signal came, the job ends as an interrupted one however it
    comes out: by the interrupt, by another error that the interrupt turned into on its way up
    (tracked_run), or returned (the interrupt swallowed after the job's last store write; a sweep's
    job that ends on a lost server).

    In a job process of a launcher, install the handler and watch the driver; once interrupted, the
    process dies of the signal. A worker that lived on would take its next job with the signal already
    received (loky and Ray reuse workers). Its driver then counts the job killed, even if its run had
    just ended FINISHED: the run's status stays what the store says.

    In the driver (the default launcher runs jobs there), the job raises KeyboardInterrupt, which
    Hydra does not catch (it would start the next job), and main() ends the sweep and exits."""
    if os.getpid() == _driver_pid:
        try:
            yield
        except BaseException as error:
            if _received is None or isinstance(error, KeyboardInterrupt):
                raise
            raise _interrupt_again() from error  # SystemExit too: a single run's one-line exits
        if _received is not None:
            raise _interrupt_again()
        return
    install()
    _watch_driver()
    try:
        yield
    finally:
        if _received is not None:
            _die_of(_received)


def _interrupt_again() -> KeyboardInterrupt:
    return KeyboardInterrupt(str(_raised) if _raised is not None else _received.name)


def end_descendants(grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every descendant of this process until it exits; SIGKILL those left after `grace` s.

    Ray's job workers first, and alone: its raylet, a descendant too, kills its workers at once when
    it gets SIGTERM, which under load left a job's run to be ended by the driver, not by its job."""
    _end(grace, _is_ray_worker)
    _end(grace)


def _end(grace: float, which: Callable[[psutil.Process], bool] = lambda process: True) -> None:
    """end_descendants, for the descendants `which` selects."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + grace
    next_signal = 0.0
    while (waiting := [p for p in _running_descendants(seen) if which(p)]) and time.monotonic() < deadline:
        if time.monotonic() >= next_signal:
            _send(waiting, signal.SIGTERM)  # again later: see the module's docstring (submitit's bypass)
            next_signal = time.monotonic() + RESEND_SECONDS
        time.sleep(POLL_SECONDS)
    if waiting:
        log.warning("%d process(es) still running %g s after SIGTERM: SIGKILL", len(waiting), grace)
        _send(waiting, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while any(alive(process) for process in waiting) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A SIGINT or SIGTERM that arrives inside the block is acted on when the block ends, also when
    the block raised: the KeyboardInterrupt then comes out, with the block's error as its __context__.

    For writes to the store: an interrupt raised inside one (between the SQL statements of an
    SQLite write transaction) was seen to leave the transaction's lock with the process, so that
    ending the run then failed with "database is locked". Python runs signal handlers in the main
    thread, whichever thread the OS delivered the signal to, so a flag checked here suffices.
    """
    global _holding, _pending
    _holding = True
    try:
        yield
    finally:
        _holding = False
        # Even when the block raised: a store write that failed with the signal pending (scancel ends
        # every task of an array at once, and they all write) must end its run KILLED, not FAILED.
        if _pending is not None:
            signum, _pending = _pending, None
            _on_signal(signum, None)
    _raise_again_if_swallowed()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received, _run_id, _pending
    if _holding:
        _pending = _pending or signal.Signals(signum)
        return
    if _received is not None:
        return  # already ending: a second Ctrl-C, or the SIGTERM submitit forwards, must not cut the cleanup short
    _received = signal.Signals(signum)
    _run_id = _active_run_id()
    # Before raising: the launchers react to the exception by killing their workers at once (joblib
    # aborts with SIGKILL), which would leave the jobs no time to end their runs.
    end_descendants()
    _raise()


def _raise() -> NoReturn:
    global _raised
    _raised = KeyboardInterrupt(f"{_received.name}: {_why}" if _why else _received.name)
    raise _raised


def _watch_driver() -> None:
    """Once in a job process: a thread that sends this process SIGTERM when the sweep's driver is gone
    (killed -9, or by a signal that no handler saw), so that no job trains on under a parent run
    that the next command ends: the job ends its run KILLED and the process exits.

    Not for a job on another host (its driver's pid means nothing there), nor a Slurm job of its
    own: Slurm runs those to their end whatever becomes of the driver (docs/scaling-out.md)."""
    global _watching
    value = os.environ.get(DRIVER_VARIABLE, "")
    if _watching or len(value.split()) != 4:
        return
    host, pid, started, slurm_job = value.split()
    if host != socket.gethostname() or os.environ.get("SLURM_JOB_ID", "-") != slurm_job:
        return
    _watching = True
    threading.Thread(target=_watch, args=(int(pid), float(started)), name="driver-watch", daemon=True).start()


def _watch(pid: int, started: float) -> None:
    global _why
    while _is_process(pid, started):
        time.sleep(WATCH_SECONDS)
    _why = f"the sweep's driver (pid {pid}) is gone"
    os.kill(os.getpid(), signal.SIGTERM)


def _is_process(pid: int, started: float) -> bool:
    """Whether the process `pid`, started at `started`, still runs (a reused pid is another process)."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1 and alive(process)
    except psutil.Error:
        return False


def _raise_again_if_swallowed() -> None:
    """Once a signal came, code that runs on (the next epoch's metrics write) means some code
    between swallowed the interrupt: seen under load, a Slurm job that trained on after scancel's
    only SIGTERM until SIGKILL left its run RUNNING. Raised again here, at a point outside the store.
    Not while the interrupt is being handled up the stack (the run being ended)."""
    if _received is None:
        return
    error = sys.exc_info()[1]
    while error is not None:
        if error is _raised:
            return
        error = error.__context__
    _raise()


def _active_run_id() -> str | None:
    mlflow = sys.modules.get("mlflow")  # not imported yet: no run can be active
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


def _die_of(signum: signal.Signals) -> NoReturn:
    """End this process by `signum`'s default action, so that its parent sees it die of it.

    First the exit handlers a normal exit runs: there multiprocessing unregisters its semaphores
    (tqdm's lock), which its resource tracker in the driver would otherwise report as leaked."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(exit_code(signum))  # not reached: the signal is delivered before kill() returns


def _running_descendants(seen: dict[int, psutil.Process]) -> list[psutil.Process]:
    """The descendants still running, but for those that ignore SIGTERM. `seen` remembers every one
    found so far, so that a job process that starts meanwhile, or whose parent (a submitit
    controller) exits first and leaves it to init, is still waited for."""
    with contextlib.suppress(psutil.Error):
        seen.update((process.pid, process) for process in psutil.Process().children(recursive=True))
    return [process for process in seen.values() if alive(process) and not _ignores_sigterm(process)]


def _is_ray_worker(process: psutil.Process) -> bool:
    """A Ray worker ("ray::_run_job", "ray::IDLE"), not one of the raylet's agents, whose death ends the raylet."""
    try:
        name = process.name()
    except psutil.Error:
        return False
    return name.startswith("ray::") and not name.endswith("Agent")


def alive(process: psutil.Process) -> bool:
    """Running, and not a zombie: one whose parent has not reaped it yet has ended all the same."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ignores_sigterm(process: psutil.Process) -> bool:
    """Whether the process set SIGTERM to be ignored (loky's resource tracker): waiting is useless.

    Read from /proc (Linux); elsewhere every process is waited for."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            return bool((int(line.split()[1], 16) >> (signal.SIGTERM - 1)) & 1)
    return False


def _send(processes: list[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)
