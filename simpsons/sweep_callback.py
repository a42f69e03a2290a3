"""Hydra callback: one MLflow parent run per multirun, which every job's run nests under."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from mlflow.entities import Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from simpsons import hydra_jobs, naming, trials
from simpsons.config import SWEEP_ID_VARIABLE
from simpsons.errors import ServerLost
from simpsons.tracking import connection, lifecycle, provenance, reader, retention, schema, store, sweep_outcome

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Judges every job first (simpsons/hydra_jobs.py: a bad value exits 2 before anything is created);
    then creates the store, experiment and parent run before any job starts; closes the parent after.

    The parent is tagged with the sweep's unique id, which every job gets through its config
    (hydra.job.env_set), so jobs find it under any launcher, and two sweeps started in the same
    second stay apart. If the sweep stops early (a job raised, Ctrl-C), an exit hook still ends
    the parent: FAILED, or KILLED when a child was killed; an interrupted driver ends it first
    (`end_interrupted`), once its job processes are gone.

    The parent is named by when it started and what it sweeps; its params are the swept keys and
    their values, its description says what ran, and `multirun.yaml` is its artifact from the
    start (so a sweep killed -9 has them too). When it ends it logs its jobs' outcome
    (simpsons.tracking.sweep_outcome), which the terminal shows too.
    """

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_run_id: str | None = None
        self.heartbeat: lifecycle.Heartbeat | None = None
        self.stale_after = lifecycle.STALE_AFTER_SECONDS
        self.uri = ""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_jobs.exit_on_bad_jobs(config)  # a single run: a bad value creates nothing either

    def __getstate__(self) -> dict[str, Any]:
        # The joblib and submitit launchers pickle Hydra's context, callbacks included, into every
        # job process. A job's copy gets neither the client nor the heartbeat thread (it holds a
        # lock, which does not pickle): without a client it can never end the parent.
        return {"client": None, "parent_run_id": self.parent_run_id, "heartbeat": None, "uri": self.uri}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_jobs.exit_on_bad_jobs(config)  # every job, before the first and before the store is touched
        uri = store.configure(config.tracking.uri, config.tracking.retry_seconds)
        experiment_id = store.ensure_experiment(uri, config.tracking.experiment, config.data.name)
        self.client = MlflowClient(uri)
        self.stale_after = config.tracking.stale_after
        lifecycle.end_dead_runs(self.client, [experiment_id], self.stale_after)
        self.uri = uri
        sweep_id = config.hydra.job.env_set[SWEEP_ID_VARIABLE]
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        overrides = list(config.hydra.overrides.task)
        if config.hydra.sweeper.get("_target_") == trials.SWEEPER:  # an Optuna search: its trials are the jobs
            search = trials.SearchPlan.of(config)
            name, note = naming.search_name(search.keys, search.n_trials), search.describe()
            varying = {key: ["searched"] for key in naming.ordered(search.keys)}
            params = {"searched": ",".join(search.keys), "n_trials": search.n_trials, "study": search.study}
        else:
            grid = naming.sweep_grid(config.hydra.sweeper.get("params") or {}, overrides)
            varying = naming.swept(grid)
            name, note = naming.sweep_name(grid), _plan(grid, overrides, sweep_dir)
            params = {key: ",".join(values) for key, values in varying.items()} | {"num_jobs": _jobs(grid)}
        run = self.client.create_run(
            experiment_id,
            run_name=name,
            tags={
                schema.RUN_TYPE: schema.SWEEP,
                schema.SWEEP_ID: sweep_id,
                schema.SWEEP_DIR: str(sweep_dir),
                schema.HYDRA_OVERRIDES: " ".join(overrides),
                schema.SWEPT_KEYS: json.dumps(list(varying)),
                schema.KEEP_MODELS: str(config.keep_models),  # applied when the sweep ends, whoever ends it
                schema.NOTE: note,
                **provenance.git_tags(),
                **lifecycle.process_tags(),
                schema.HEARTBEAT_SECONDS: f"{config.tracking.heartbeat_seconds:g}",
            },
        )
        self.parent_run_id = run.info.run_id
        _drive(self)
        atexit.register(self._end_at_exit)  # from here on, the parent is ended whatever happens
        self.heartbeat = lifecycle.Heartbeat(self.client, self.parent_run_id, config.tracking.heartbeat_seconds)
        self.heartbeat.start()
        self.client.log_batch(self.parent_run_id, params=[Param(key, str(value)) for key, value in params.items()])
        self.client.log_text(self.parent_run_id, OmegaConf.to_yaml(config), schema.MULTIRUN_YAML)  # what Hydra saves
        log.info(
            "MLflow sweep run %s (%s; sweep %s) in experiment %r",
            run.info.run_id,
            run.info.run_name,
            sweep_id,
            config.tracking.experiment,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with self._exit_if_lost():
            ended = self._end_parent(RunStatus.FINISHED)  # FAILED instead if a child did not finish
            self._say_what_ran(ended)

    def _end_at_exit(self) -> None:
        """The sweep stopped early (a job raised): end it FAILED, and still say what ran."""
        with self._exit_if_lost(exit_code=None):  # already exiting
            ended = self._end_parent(RunStatus.FAILED)
            if ended is not None and not _interrupted:  # an interrupted driver says it in one line
                self._say_what_ran(ended)

    @contextlib.contextmanager
    def _exit_if_lost(self, exit_code: int | None = 1) -> Iterator[None]:
        """The server is lost (its jobs said so, one line each): say it once more for the sweep, and
        exit, leaving the parent to the next command, which ends it KILLED (its process is gone)."""
        try:
            with connection.lost_server(self._left()):
                yield
        except ServerLost as error:
            self.client = None  # nothing more to end: the exit hook does nothing
            log.error("error: %s", error)
            if exit_code is not None:
                sys.exit(exit_code)

    def _left(self) -> str:
        return f"the next command ends sweep run {self.parent_run_id} KILLED; "

    def _end_parent(self, status: RunStatus) -> sweep_outcome.Outcome | None:
        """End the parent (once), and any child still RUNNING, e.g. after a worker was killed;
        log the jobs' outcome on it. Returns that outcome, or None if there was nothing to end."""
        if self.client is None or self.parent_run_id is None:
            return None
        self._check_server()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        parent = self.client.get_run(self.parent_run_id)
        if parent.info.status != "RUNNING":
            return None
        children = self._children()
        for child in children:  # a job on another node (Slurm) may still run: only the dead are ended
            if child.info.status == "RUNNING" and lifecycle.why_dead(child, self.stale_after) is not None:
                self._end_orphan(child.info.run_id)
        statuses = {self.client.get_run(child.info.run_id).info.status for child in children}
        if _interrupted or "KILLED" in statuses:
            status = RunStatus.KILLED
        elif statuses - {"FINISHED"}:
            status = RunStatus.FAILED
        outcome = self._record_outcome(parent)
        self.client.set_terminated(self.parent_run_id, RunStatus.to_string(status))
        if status != RunStatus.KILLED:  # an interrupted sweep is run again: its runs' models may be reused
            retention.delete_sweep_models(self.client, self.parent_run_id)
        return outcome

    def _check_server(self) -> None:
        """A quick look first: after jobs that lost the server, each request would retry for
        tracking.retry_seconds again, and the heartbeat's beat in flight would be waited for."""
        try:
            store.check_server(self.uri)
        except store.ServerUnreachable as error:
            if self.heartbeat is not None:
                self.heartbeat.stop(wait=False)
            raise connection.server_lost(error, self._left(), waited=False) from None

    def _record_outcome(self, parent: Run) -> sweep_outcome.Outcome | None:
        """Best effort: a store error here must not keep the parent from being ended."""
        try:
            return sweep_outcome.record(self.client, parent, self.uri)
        except Exception as error:  # any store error: SQLAlchemy, HTTP, MLflow's own
            log.warning("could not log the outcome of sweep run %s: %s", self.parent_run_id, error)
            return None

    def _end_orphan(self, run_id: str) -> None:
        """End KILLED a child whose process ended before its run did: killed -9, by the OOM killer, or
        by the driver's SIGKILL after its grace period. As any later command would (end_dead_runs)."""
        tags = {schema.ENDED_BY: f"sweep run {self.parent_run_id}: the job's process ended before its run"}
        if _interrupted:
            tags[schema.ERROR] = f"interrupted ({_interrupted})"
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.set_terminated(run_id, "KILLED")

    def _children(self) -> list:
        """The sweep's jobs' runs (an ensemble nested under it is no job)."""
        parent = self.client.get_run(self.parent_run_id)
        found = self.client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{schema.PARENT_RUN}` = '{self.parent_run_id}'"
        )
        return [run for run in found if reader.run_type(run) != schema.ENSEMBLE]

    def _say_what_ran(self, outcome: sweep_outcome.Outcome | None) -> None:
        """The configs that reused an earlier run, in one line; then the jobs' table, best first,
        the best run and what to run next."""
        reused = [c.info.run_name for c in self._children() if reader.run_type(c) == schema.REUSED]
        if reused:
            log.info("reused %d finished config(s) (reuse=false trains them again): %s", len(reused), "; ".join(reused))
        if outcome is not None:
            print(sweep_outcome.summary(outcome, self.uri), flush=True)


def _jobs(grid: dict[str, list[str]]) -> int:
    return math.prod(len(values) for values in grid.values())


def _plan(grid: dict[str, list[str]], overrides: list[str], sweep_dir: Path) -> str:
    """The parent's description at the start (Markdown): what is swept, over what, where its output goes."""
    varying = naming.swept(grid)
    fixed = naming.constant_overrides(overrides, list(varying))
    lines = [
        f"Sweep of {' × '.join(varying) or 'one config'}: {_jobs(grid)} job{'s' * (_jobs(grid) != 1)}; "
        f"Hydra output in `{sweep_dir}`.",
        "",
        f"`python -m simpsons.train -m {' '.join(overrides)}`",
    ]
    if varying:
        lines += ["", "| swept | values |", "|---|---|"]
        lines += [f"| {key} | {', '.join(values)} |" for key, values in varying.items()]
    if fixed:
        lines += ["", "Same in every job: " + ", ".join(f"`{o}`" for o in fixed)]
    return "\n".join(lines)


class EndedSweep(NamedTuple):
    run_id: str
    status: str
    killed_jobs: dict[str, str]  # run id -> status of each job that ended KILLED


_current: MlflowSweepCallback | None = None  # the sweep this process drives
_interrupted: str | None = None  # the signal that interrupted it, e.g. "SIGTERM"


def _drive(sweep: MlflowSweepCallback) -> None:
    global _current
    _current = sweep


def parent_run_id() -> str | None:
    """The parent run of the sweep this process drives (None: none has started), e.g. for a search's best trial."""
    return _current.parent_run_id if _current is not None else None


def tag_sweep(key: str, value: str) -> None:
    """Tag the parent run of the sweep this process drives (none: nothing), e.g. with its Slurm job array."""
    if _current is not None and _current.client is not None and _current.parent_run_id is not None:
        _current.client.set_tag(_current.parent_run_id, key, value)


def end_interrupted(signal_name: str) -> EndedSweep | None:
    """End the sweep this process drives KILLED, and any of its jobs still RUNNING, after `signal_name`.

    Call it once the job processes are gone; None when no sweep had started.
    """
    global _interrupted
    _interrupted = signal_name
    if _current is None or _current.client is None or _current.parent_run_id is None:
        return None
    _current._end_parent(RunStatus.KILLED)
    parent = _current.client.get_run(_current.parent_run_id)
    killed = {child.info.run_id: child.info.status for child in _current._children() if child.info.status == "KILLED"}
    return EndedSweep(parent.info.run_id, parent.info.status, killed)
