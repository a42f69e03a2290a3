"""Hydra callback: one MLflow parent run per multirun, which every job's run nests under."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from simpsons import checks
from simpsons.config import SWEEP_ID_VARIABLE
from simpsons.tracking import lifecycle, reader, schema, store

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Checks every job first (simpsons/checks.py: a bad value exits 2 before anything is created);
    then creates the store, experiment and parent run before any job starts; closes the parent after.

    The parent is tagged with the sweep's unique id, which every job gets through its config
    (hydra.job.env_set), so jobs find it under any launcher, and two sweeps started in the same
    second stay apart. If the sweep stops early (a job raised, Ctrl-C), an exit hook still ends
    the parent: FAILED, or KILLED when a child was killed; an interrupted driver ends it first
    (`end_interrupted`), once its job processes are gone.
    """

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_run_id: str | None = None
        self.heartbeat: lifecycle.Heartbeat | None = None
        self.stale_after = lifecycle.STALE_AFTER_SECONDS

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        checks.exit_on_bad_jobs(config)  # a single run: a bad value creates nothing either

    def __getstate__(self) -> dict[str, Any]:
        # The joblib and submitit launchers pickle Hydra's context, callbacks included, into every
        # job process. A job's copy gets neither the client nor the heartbeat thread (it holds a
        # lock, which does not pickle): without a client it can never end the parent.
        return {"client": None, "parent_run_id": self.parent_run_id, "heartbeat": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        checks.exit_on_bad_jobs(config)  # every job, before the first and before the store is touched
        uri = store.configure(config.tracking.uri)
        experiment_id = store.ensure_experiment(uri, config.tracking.experiment)
        self.client = MlflowClient(uri)
        self.stale_after = config.tracking.stale_after
        lifecycle.end_dead_runs(self.client, [experiment_id], self.stale_after)
        sweep_id = config.hydra.job.env_set[SWEEP_ID_VARIABLE]
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep {sweep_dir.name}",
            tags={
                schema.RUN_TYPE: schema.SWEEP,
                schema.SWEEP_ID: sweep_id,
                schema.SWEEP_DIR: str(sweep_dir),
                schema.HYDRA_OVERRIDES: " ".join(config.hydra.overrides.task),
                **store.git_tags(),
                **lifecycle.process_tags(),
                schema.HEARTBEAT_SECONDS: f"{config.tracking.heartbeat_seconds:g}",
            },
        )
        self.parent_run_id = run.info.run_id
        self.heartbeat = lifecycle.Heartbeat(self.client, self.parent_run_id, config.tracking.heartbeat_seconds)
        self.heartbeat.start()
        _drive(self)
        atexit.register(self._end_parent, RunStatus.FAILED)
        log.info(
            "MLflow sweep run %s (sweep %s) in experiment %r", run.info.run_id, sweep_id, config.tracking.experiment
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end_parent(RunStatus.FINISHED)  # FAILED instead if a child did not finish
        self._say_what_ran()

    def _end_parent(self, status: RunStatus) -> None:
        """End the parent (once), and any child still RUNNING, e.g. after a worker was killed."""
        if self.client is None or self.parent_run_id is None:
            return
        if self.heartbeat is not None:
            self.heartbeat.stop()
        parent = self.client.get_run(self.parent_run_id)
        if parent.info.status != "RUNNING":
            return
        children = self._children()
        for child in children:  # a job on another node (Slurm) may still run: only the dead are ended
            if child.info.status == "RUNNING" and lifecycle.why_dead(child, self.stale_after) is not None:
                self._end_orphan(child.info.run_id)
        statuses = {self.client.get_run(child.info.run_id).info.status for child in children}
        if _interrupted or "KILLED" in statuses:
            status = RunStatus.KILLED
        elif statuses - {"FINISHED"}:
            status = RunStatus.FAILED
        self.client.set_terminated(self.parent_run_id, RunStatus.to_string(status))

    def _end_orphan(self, run_id: str) -> None:
        """End a child whose process ended before its run did (a launcher may SIGKILL a job: loky
        kills the other workers as soon as one exits)."""
        tags = {schema.ENDED_BY: f"sweep run {self.parent_run_id}: the job's process ended before its run"}
        if _interrupted:
            tags[schema.ERROR] = f"interrupted ({_interrupted})"
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.set_terminated(run_id, "KILLED" if _interrupted else "FAILED")

    def _children(self) -> list:
        parent = self.client.get_run(self.parent_run_id)
        return self.client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{schema.PARENT_RUN}` = '{self.parent_run_id}'"
        )

    def _say_what_ran(self) -> None:
        """One line each: the configs that reused an earlier run, and those that trained."""
        children = self._children()
        reused = [c.info.run_name for c in children if reader.run_type(c) == schema.REUSED]
        trained = [c.info.run_name for c in children if reader.run_type(c) == schema.TRAIN]
        if reused:
            log.info("reused %d finished config(s) (reuse=false trains them again): %s", len(reused), "; ".join(reused))
        log.info("trained %d config(s): %s", len(trained), "; ".join(trained) or "none")


class EndedSweep(NamedTuple):
    run_id: str
    status: str
    killed_jobs: dict[str, str]  # run id -> status of each job that ended KILLED


_current: MlflowSweepCallback | None = None  # the sweep this process drives
_interrupted: str | None = None  # the signal that interrupted it, e.g. "SIGTERM"


def _drive(sweep: MlflowSweepCallback) -> None:
    global _current
    _current = sweep


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
