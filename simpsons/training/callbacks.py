"""The Keras callbacks of a run's fits: each epoch's metrics to MLflow, the backup they follow, the best
epoch kept across phases and resumes, and early stopping and plateau told what ran before a resume.

They run in this order in a phase's fit (simpsons/training/phases.py): BestEpoch, early stopping,
the scheduler's plateau, then the backup (BackupThenLog), or MlflowEpochMetrics first where there is none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from simpsons.settings import MONITORS
from simpsons.tracking import schema, writer
from simpsons.training.backup import Backup
from simpsons.trials import JobTrial

# The learning rate an epoch starts with, as its log10: MLflow plots a learning rate (1e-3 falling to
# 1e-5) on a linear axis whose labels round it to 0, a flat line at 0; log10_lr is -3 falling to -5.
LOG10_LR_METRIC = schema.curve("log10_lr")
# The logged names of each epoch's metrics: Keras's, under schema.CURVE_PREFIX (epoch/val_accuracy).
EPOCH_METRICS = (*map(schema.curve, schema.EPOCH_CURVES), LOG10_LR_METRIC)


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's next step (a schedule's value at its current step)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs loss, accuracy, val_loss, val_accuracy and log10_lr (EPOCH_METRICS: under epoch/) to the
    active MLflow run, one step per epoch.

    log10_lr is that of the learning rate of the epoch's first step, read when the epoch begins: a plateau
    scheduler lowers it at an epoch's end, for the next epoch, and a cosine one at every step.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._learning_rate = learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        writer.log_epoch(epoch, _epoch_metrics(logs, self._learning_rate))


class BackupThenLog(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore that logs each epoch's metrics (as MlflowEpochMetrics) once the epoch is backed up.

    Logged before the backup, an epoch that a kill cut short between the two was trained and logged
    again by the resumed run: its curves had that step twice, with two values (31 points for 30
    epochs). So the metrics are first written beside the backup (Backup.record_epoch), then the epoch
    is backed up, then logged. A kill before the backup: the rerun trains the epoch again and logs it
    once; a kill after it: the rerun logs it from the file (Backup.log_unlogged_epochs), and trains on.
    """

    def __init__(self, phase: Path) -> None:
        # double_checkpoint: a kill -9 in the middle of writing the weights leaves the previous
        # epoch's backup, which BackupAndRestore falls back to.
        super().__init__(str(phase), double_checkpoint=True, delete_checkpoint=False)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._learning_rate = learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = _epoch_metrics(logs, self._learning_rate)
        Backup.record_epoch(Path(self.backup_dir), epoch, metrics)
        super().on_epoch_end(epoch, logs)
        writer.log_epoch(epoch, metrics)


def _epoch_metrics(logs: dict | None, learning_rate: float) -> dict[str, float]:
    metrics = {schema.curve(name): float(value) for name, value in (logs or {}).items() if name in schema.EPOCH_CURVES}
    return metrics | ({LOG10_LR_METRIC: math.log10(learning_rate)} if learning_rate > 0 else {})  # no log of 0


class BestEpoch(keras.callbacks.Callback):
    """The epoch with the best `monitor` value over every phase of a run, and its weights.

    Keras's EarlyStopping(restore_best_weights=True) keeps the best weights of one fit; a run fits
    its head, may fine-tune after, and may be resumed after a kill. One BestEpoch follows all of
    its fits. It copies only the variables the fits train (the head's, then the unfrozen backbone
    layers'), and remembers each one's value from before its first trained epoch: that is its value
    at any best epoch before then. Ties keep the earlier epoch, as Keras's callbacks do.

    With `directory` (runs that back up every epoch and can be resumed), each new best is saved
    there too, whole, before BackupAndRestore's backup of that epoch: a resumed run, given the
    curve it logged before (`history`, as (epoch, value)), knows its best epoch and can restore it.
    """

    def __init__(
        self,
        classifier: keras.Model,
        monitor: str,
        directory: Path | None = None,
        history: Sequence[tuple[int, float]] = (),
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.monitor = monitor
        self.directory = directory
        self.epoch: int | None = None
        self.value: float | None = None
        self._first: dict[int, tuple[keras.Variable, np.ndarray]] = {}  # id -> (variable, value before training)
        self._best: dict[int, np.ndarray] | None = None  # id -> value at the best epoch, once it is in this process
        for epoch, value in history:
            self._consider(epoch, value)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # Not on_train_begin: BackupAndRestore restores a resumed phase's weights there.
        for variable in self.model.trainable_variables:
            self._first.setdefault(id(variable), (variable, keras.ops.convert_to_numpy(variable)))
        if self.directory is not None:
            self._prune()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._consider(epoch, float((logs or {})[self.monitor])):
            return
        self._best = {key: keras.ops.convert_to_numpy(variable) for key, (variable, _) in self._first.items()}
        if self.directory is not None:
            self._save(epoch)

    def restore(self) -> None:
        """Set the classifier to its weights at the best epoch (no epoch trained: nothing to do)."""
        if self._best is not None:
            for key, (variable, first) in self._first.items():
                variable.assign(self._best.get(key, first))
        elif self.epoch is not None and self.directory is not None:  # best before a resume
            self.classifier.load_weights(Backup.best_weights(self.directory, self.epoch))

    def _consider(self, epoch: int, value: float) -> bool:
        better = np.greater if MONITORS[self.monitor] == "max" else np.less
        if self.value is not None and not better(value, self.value):
            return False
        self.epoch, self.value = epoch, value
        return True

    def _save(self, epoch: int) -> None:
        """The whole classifier's weights, renamed into place: a kill leaves the previous best whole."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = Backup.best_weights(self.directory, epoch)
        partial = path.with_name(f"partial-{os.getpid()}.weights.h5")
        self.classifier.save_weights(partial)
        os.replace(partial, path)

    def _prune(self) -> None:
        """Delete the earlier bests' weights, once the epoch that beat them is backed up (the next
        one begins): until then a kill resumes before that epoch, and the earlier best still counts."""
        for older in self.directory.glob(Backup.best_weights(Path(), "*").name):
            if older != Backup.best_weights(self.directory, self.epoch):
                older.unlink()


class PruneTrial(keras.callbacks.Callback):
    """Reports each epoch's `monitor` to the job's Optuna trial (simpsons/trials.py), and stops the
    fit when the study's pruner says the trial is weak: the run then ends FINISHED at that epoch,
    tagged pruned, with its best epoch kept as any run's."""

    def __init__(self, trial: JobTrial, monitor: str) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.trial.report(epoch, float((logs or {})[self.monitor])):
            self.model.stop_training = True


class Replay:
    """A mixin for Keras's monitoring callbacks (EarlyStopping, ReduceLROnPlateau): told the phase's
    epochs that ran before a resume (`replay`, as (epoch, monitored value)), it counts them when
    training begins, as if the run had never stopped.

    Quietly: those epochs said what they did when they ran. ReduceLROnPlateau replays before
    BackupAndRestore (the last of fit's callbacks) restores the optimizer, so the learning rates the
    replay sets are overwritten by the ones backed up, which the same epochs had set.
    """

    monitor: str
    verbose: int

    def __init__(self, replay: Sequence[tuple[int, float]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = list(replay)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        verbose, self.verbose = self.verbose, 0
        for epoch, value in self.replay:
            self.on_epoch_end(epoch, {self.monitor: value})
        self.verbose = verbose


class ResumedEarlyStopping(Replay, keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping, its patience counting the epochs a resumed phase ran before (Replay)."""

    def stopped_before_resume(self, model: keras.Model) -> int | None:
        """The epoch the phase ended at, if the replayed epochs alone stop it: a kill came after
        its last backup, before the phase's end was marked. Keras checks `stop_training` only after
        an epoch, so fit must be told not to train one more."""
        self.set_model(model)
        model.stop_training = False  # what fit sets before its callbacks start
        self.on_train_begin()
        stopped, model.stop_training = model.stop_training, False
        return self.replay[-1][0] + 1 if stopped else None


class ResumedReduceLROnPlateau(Replay, keras.callbacks.ReduceLROnPlateau):
    """Keras's ReduceLROnPlateau, its patience counting the epochs a resumed phase ran before (Replay).
    The learning rate it had lowered to comes back with the optimizer's backup."""


def early_stopping(
    patience: int | None, monitor: str, min_delta: float, replay: Sequence[tuple[int, float]] = ()
) -> list[keras.callbacks.Callback]:
    """[EarlyStopping] for a phase, or [] with patience null. Weights are not restored here: the
    run's BestEpoch does that, across phases."""
    if patience is None:
        return []
    stopping = ResumedEarlyStopping(
        replay, monitor=monitor, mode=MONITORS[monitor], patience=patience, min_delta=min_delta, verbose=1
    )
    return [stopping]
