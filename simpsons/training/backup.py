"""A resumable run's backup: every file a killed run resumes from, and how it resumes from them.

The one place that knows the layout, under `checkpoints/` (settings.checkpoints):

    <run id>.lock                   held by the process that trains the run: no two train (or resume) one
    <run id>/<phase>/               a phase's backup (`head`, `finetune`), by Keras's BackupAndRestore:
        training_metadata.json      the epoch backed up, with latest.weights.h5 (the weights and optimizer);
        *.bkp                       the previous epoch's two files (double_checkpoint): a kill mid-write keeps them
        epoch_metrics.json          each epoch's metrics, written before the epoch is backed up (BackupThenLog)
        phase_end.json              the epoch the phase ended at, once it has: a rerun trains it no more
    <run id>/best/best-epoch-<n>.weights.h5   the whole classifier at the best epoch so far (BestEpoch)

A rerun of the killed run's config claims the newest backup no process holds, logs the epochs a kill
kept from being logged, reads the curves it logged back from MLflow (for the best epoch, early
stopping's and plateau's counts), and goes on at the epoch after the last backup. The whole folder is
deleted once the run is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import mlflow
from mlflow.tracking import MlflowClient

from simpsons import locks
from simpsons.tracking import schema, writer

EPOCHS_FILE = "epoch_metrics.json"  # beside a phase's backup: each epoch's metrics, logged or not yet
PHASE_END = "phase_end.json"
KERAS_METADATA = "training_metadata.json"  # BackupAndRestore's, with its weights file
KERAS_WEIGHTS = "latest.weights.h5"
BEST = "best"

Curve = list[tuple[int, float]]  # (epoch, value) of a logged metric


class Backup:
    """The backup folder of one run, `<checkpoints>/<run id>`, and its lock file beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def of(cls, checkpoints: Path, run_id: str) -> Backup:
        return cls(checkpoints / run_id)

    @property
    def lock_path(self) -> Path:
        return self.folder.with_name(self.folder.name + ".lock")

    def exists(self) -> bool:
        return self.folder.is_dir()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the run's lock: no other process trains (or resumes) it meanwhile."""
        with locks.exclusive(self.lock_path):
            yield

    def try_hold(self) -> IO[str] | None:
        """The run's lock, if no other process holds it (close it to let go); else None."""
        return locks.try_lock(self.lock_path)

    def delete(self) -> None:
        """Once the run is logged: nothing is left to resume."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.lock_path.unlink(missing_ok=True)

    # -- where each part lies

    def phase(self, name: str) -> Path:
        """A phase's backup folder (Keras's BackupAndRestore writes it; so do record_epoch and mark_end)."""
        return self.folder / name

    @property
    def best(self) -> Path:
        """The folder of the best epoch's whole weights (BestEpoch)."""
        return self.folder / BEST

    @staticmethod
    def best_weights(best: Path, epoch: int | str) -> Path:
        return best / f"best-epoch-{epoch}.weights.h5"

    def _phases(self) -> list[Path]:
        if not self.exists():
            return []
        return sorted(path for path in self.folder.iterdir() if path.is_dir() and path.name != BEST)

    # -- the epoch a rerun resumes at

    def resume_epoch(self) -> int:
        """The epoch training resumes at: the next one after the last backed-up epoch of either phase."""
        return max((_backed_up_epoch(phase) for phase in self._phases()), default=0)

    # -- each epoch's metrics, beside the phase's backup

    @staticmethod
    def record_epoch(phase: Path, epoch: int, metrics: dict[str, float]) -> None:
        """Add an epoch's metrics to the phase's EPOCHS_FILE, renamed into place: a kill leaves the
        previous one whole."""
        phase.mkdir(parents=True, exist_ok=True)
        partial = phase / f"{EPOCHS_FILE}.{os.getpid()}.partial"
        partial.write_text(json.dumps(_recorded_epochs(phase) | {str(epoch): metrics}))
        os.replace(partial, phase / EPOCHS_FILE)

    # -- the epoch a phase ended at

    @staticmethod
    def phase_end(phase: Path) -> int | None:
        try:
            return json.loads((phase / PHASE_END).read_text())["end"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    @staticmethod
    def mark_phase_end(phase: Path, end: int) -> None:
        partial = phase / f"{PHASE_END}.{os.getpid()}.partial"
        partial.write_text(json.dumps({"end": end}))
        os.replace(partial, phase / PHASE_END)

    # -- resuming, inside the resumed MLflow run

    def log_unlogged_epochs(self) -> None:
        """First what a kill kept from being logged: each phase's backed-up epochs that the run lacks
        (a kill fell between an epoch's backup and its log). The curves are read back from MLflow next."""
        for phase in self._phases():
            log_backed_up_epochs(phase, _backed_up_epoch(phase))

    @staticmethod
    def logged_curves(metrics: Iterable[str], before_epoch: int) -> dict[str, Curve]:
        """The active run's logged curves of `metrics`, of the epochs before `before_epoch` (those a
        resumed run restored); an epoch that a run of an earlier version logged twice (before its
        backup, then again once resumed) counts with its last value."""
        if before_epoch == 0:  # a new run: nothing to read back
            return {metric: [] for metric in metrics}
        run_id = mlflow.active_run().info.run_id
        curves = {}
        for metric in metrics:
            history = sorted(MlflowClient().get_metric_history(run_id, schema.curve(metric)), key=lambda m: m.timestamp)
            # Steps count epochs from 1 (writer.epoch_step); Keras's epochs, and these curves, from 0.
            last = {m.step - 1: m.value for m in history if m.step - 1 < before_epoch}
            curves[metric] = sorted(last.items())
        return curves


def _backed_up_epoch(phase: Path) -> int:
    """A phase's backed-up epoch; a metadata file cut short by a kill is replaced by the previous
    backup (weights and metadata), which BackupAndRestore's double checkpoint keeps."""
    metadata = phase / KERAS_METADATA
    try:
        return json.loads(metadata.read_text())["epoch"]
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError):
        pairs = [(current, current.with_name(current.name + ".bkp")) for current in (metadata, phase / KERAS_WEIGHTS)]
        if not all(previous.exists() for _, previous in pairs):
            shutil.rmtree(phase)  # cut short in its first backup: the phase starts over
            return 0
        for current, previous in pairs:
            shutil.copyfile(previous, current)
        return json.loads(metadata.read_text())["epoch"]


def _recorded_epochs(phase: Path) -> dict[str, dict[str, float]]:
    try:
        return json.loads((phase / EPOCHS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def log_backed_up_epochs(phase: Path, before_epoch: int) -> list[int]:
    """Log to the active run the metrics of the phase's backed-up epochs (those before `before_epoch`)
    that it lacks: a kill fell between an epoch's backup and its log. Returns those epochs."""
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    recorded = {int(epoch): metrics for epoch, metrics in _recorded_epochs(phase).items()}
    wanted = {epoch: metrics for epoch, metrics in recorded.items() if epoch < before_epoch}
    if not wanted:
        return []
    names = {name for metrics in wanted.values() for name in metrics}
    logged = {name: {m.step for m in client.get_metric_history(run_id, name)} for name in names}
    missing = {}
    for epoch, metrics in sorted(wanted.items()):
        absent = {name: value for name, value in metrics.items() if writer.epoch_step(epoch) not in logged[name]}
        if absent:
            missing[epoch] = absent
    for epoch, metrics in missing.items():
        writer.log_epoch(epoch, metrics)
    return sorted(missing)
