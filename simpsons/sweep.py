"""Hydra callback: one MLflow parent run per multirun, which every job's run nests under."""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from simpsons import tracking

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    """Creates the store, experiment and parent run before any job starts; closes the parent after.

    Jobs find the parent by the sweep folder tag, so this works with any launcher. If the sweep
    stops early (a job raised, Ctrl-C), an exit hook still ends the parent: FAILED, or KILLED when
    a child was killed.
    """

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking.configure(config.tracking.uri)
        experiment_id = tracking.ensure_experiment(uri, config.tracking.experiment)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self.client = MlflowClient(uri)
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep {sweep_dir.name}",
            tags={
                tracking.RUN_TYPE: "sweep",
                tracking.SWEEP_DIR: str(sweep_dir),
                "hydra.overrides": " ".join(config.hydra.overrides.task),
                **tracking.git_tags(),
            },
        )
        self.parent_run_id = run.info.run_id
        atexit.register(self._end_parent, RunStatus.FAILED)
        log.info("MLflow sweep run %s in experiment %r", self.parent_run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end_parent(RunStatus.FINISHED)  # FAILED instead if a child did not finish

    def _end_parent(self, status: RunStatus) -> None:
        """End the parent (once), and any child still RUNNING, e.g. after a worker was killed."""
        if self.client is None or self.parent_run_id is None:
            return
        parent = self.client.get_run(self.parent_run_id)
        if parent.info.status != "RUNNING":
            return
        children = self.client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        )
        for child in children:
            if child.info.status == "RUNNING":
                self.client.set_terminated(child.info.run_id, "KILLED" if _interrupted else "FAILED")
        statuses = {self.client.get_run(child.info.run_id).info.status for child in children}
        if _interrupted or "KILLED" in statuses:
            status = RunStatus.KILLED
        elif statuses - {"FINISHED"}:
            status = RunStatus.FAILED
        self.client.set_terminated(self.parent_run_id, RunStatus.to_string(status))


_interrupted = False


def note_interrupted() -> None:
    """Called by the app on Ctrl-C, so that the exit hook ends the sweep KILLED, not FAILED."""
    global _interrupted
    _interrupted = True
