"""A run's phases: the head on the frozen backbone, then with finetune.layers the backbone's top layers.

Each phase is one Keras fit with its own optimizer and scheduler; they share the run's BestEpoch
(the best epoch over every phase), its backup, and, once resumed, the curves the run logged before
its kill. The head phase trains on cached features when it can (the backbone then runs once per
image, or never on a cache hit), else on images; fine-tuning runs the backbone on images every epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from simpsons import pipeline
from simpsons.backbones import BackboneSpec
from simpsons.data import DataSet, Split
from simpsons.features import CachedFeatures, cache_splits
from simpsons.model import feature_extractor, head, unfreeze_top, with_tta
from simpsons.optimizers import build_optimizer
from simpsons.pipeline import Batches, image_dataset
from simpsons.settings import MONITORS, TrainSettings
from simpsons.stopwatch import Stopwatch
from simpsons.tracking import schema, writer
from simpsons.training import schedules
from simpsons.training.backup import Backup
from simpsons.training.callbacks import (
    BackupThenLog,
    BestEpoch,
    MlflowEpochMetrics,
    PruneTrial,
    ResumedEarlyStopping,
    early_stopping,
)
from simpsons.trials import JobTrial

log = logging.getLogger("simpsons.train")

# split -> (model, what it scores): images, or cached features (with tta=flip, the mirror images' too)
Scored = dict[str, tuple[keras.Model, Batches | tuple[np.ndarray, ...]]]


@dataclass(frozen=True)
class Phase:
    """One fit of a run: what it trains, on which batches, from which epoch to which."""

    name: str  # its backup folder
    model: keras.Model  # the head alone (on cached features) or the whole classifier
    optimizer: keras.optimizers.Optimizer
    train: Batches
    val: Batches
    first: int  # a second phase continues the curves
    epochs: int  # it ends before this epoch, or sooner when early stopping ends it

    def describe(self, end: int) -> str:
        """What the run's `phases` tag says of it, once it ended at `end`."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeadPhase(Phase):
    """The head on the frozen backbone, from epoch 0: on cached features, or on images."""

    on_features: bool = False

    @classmethod
    def of(
        cls,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        settings: TrainSettings,
        images: tuple[Batches, Batches],
        features: CachedFeatures | None,
    ) -> HeadPhase:
        """The head alone on cached features where there are, else the whole classifier on images."""
        if features is None:
            return cls("head", model, optimizer, *images, 0, settings.epochs)
        head_model = head(model)
        batches = features.batches("train", settings.seed), features.batches("val")
        return cls("head", head_model, optimizer, *batches, 0, settings.epochs, on_features=True)

    def describe(self, end: int) -> str:
        # Epochs as Keras prints them, from 1 (the curves' steps too): Keras's epoch e is "Epoch e+1".
        return f"head{' on cached features' if self.on_features else ''}: epochs 1-{end}"


@dataclass(frozen=True)
class FinetunePhase(Phase):
    """The backbone's top `layers` unfrozen, on images, with a new optimizer at the fine-tuning lr."""

    layers: int = 0
    lr: float = 0.0

    @classmethod
    def after(
        cls, end: int, model: keras.Model, settings: TrainSettings, images: tuple[Batches, Batches]
    ) -> FinetunePhase:
        """From the epoch the head phase ended at, the top layers unfrozen (the model's own, for good)."""
        layers, lr = settings.finetune.layers, settings.finetune_lr
        unfreeze_top(model, layers)
        optimizer = build_optimizer(settings.optimizer, lr)
        return cls("finetune", model, optimizer, *images, end, end + settings.finetune.epochs, layers, lr)

    def describe(self, end: int) -> str:
        return f"finetune: epochs {self.first + 1}-{end}, top {self.layers} layers, lr {self.lr:g}"


class Phases:
    """What a run's phases share, and their fits.

    Resumable runs (TrainSettings.resumable) back up every epoch, the head phase on features too: a
    rerun of a killed run goes on at the epoch after the last backup, with its best epoch, early
    stopping's and plateau's counts carried over from the curves it logged.
    """

    def __init__(
        self,
        classifier: keras.Model,
        settings: TrainSettings,
        data: DataSet,
        xla: bool,
        backup: Backup,
        trial: JobTrial | None = None,
    ):
        self.settings, self.xla = settings, xla
        self.pruning = [PruneTrial(trial, settings.monitor)] if trial is not None else []
        self.backup = backup if settings.resumable else None
        resumed_at = self.backup.resume_epoch() if self.backup is not None else 0
        if resumed_at:
            self.backup.log_unlogged_epochs()  # the curves below are read back from MLflow
        self.curves = Backup.logged_curves(MONITORS, resumed_at)
        best = self.backup.best if self.backup is not None else None
        self.best = BestEpoch(classifier, settings.monitor, best, self.curves[settings.monitor])
        self.steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)  # the last batch may be smaller
        self.knobs = {"class_weight": class_weights(settings, data), "label_smoothing": settings.label_smoothing}

    def fit(self, phase: Phase) -> int:
        """Fit `phase`; returns the epoch it ended at (early stopping may end it sooner)."""
        settings = self.settings
        monitor, stopping = settings.early_stopping_monitor, settings.early_stopping
        stop = early_stopping(stopping.patience, monitor, stopping.min_delta, self._replay(monitor, phase))
        steps = (phase.epochs - phase.first) * self.steps_per_epoch
        optimizer = schedules.scheduled(phase.optimizer, settings.scheduler, steps)
        plateau = schedules.callbacks(settings.scheduler, self._replay(settings.scheduler.watches, phase))
        backup = self.backup.phase(phase.name) if self.backup is not None else None
        callbacks = [self.best, *stop, *plateau, *self.pruning]
        fitted = (phase.model, optimizer, phase.train, phase.val, phase.epochs, phase.first, self.xla, backup)
        return fit(*fitted, callbacks=callbacks, **self.knobs)

    def _replay(self, metric: str | None, phase: Phase) -> list[tuple[int, float]]:
        """The phase's epochs of `metric` that a resumed run logged before its kill."""
        return [(epoch, value) for epoch, value in self.curves.get(metric, []) if epoch >= phase.first]


def train(
    model: keras.Model,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    data: DataSet,
    settings: TrainSettings,
    xla: bool,
    backup: Backup,
    stopwatch: Stopwatch,
    trial: JobTrial | None = None,
) -> tuple[Scored, BestEpoch]:
    """The head phase, then with finetune.layers a fine-tuning phase; the model is left at its best epoch.
    A search's `trial` is reported every epoch, and its pruner may stop the run (no fine-tuning then).

    Returns what scores each evaluated split: the head on features when no backbone layer was
    trained, else the model on images.
    """
    phases = Phases(model, settings, data, xla, backup, trial)
    train, val = batches(data.train, settings, shuffle_seed=settings.seed), batches(data.val, settings)  # images
    features = _features(model, backbone, data, settings, xla, stopwatch) if settings.cached_head else None
    with stopwatch.phase("fit"):
        if features is None:
            mlflow.set_tag(schema.FEATURE_CACHE, "off")
        first = HeadPhase.of(model, optimizer, settings, (train, val), features)
        end = phases.fit(first)
        described = [first.describe(end)]
        pruned = trial is not None and trial.pruned_at is not None
        if pruned:
            described.append(f"pruned after epoch {trial.pruned_at}")
        if settings.finetunes and not pruned:
            finetune = FinetunePhase.after(end, model, settings, (train, val))
            writer.log_param_counts(model, "finetune")
            end = phases.fit(finetune)
            described.append(finetune.describe(end))
    best = phases.best
    best.restore()
    described.append(f"kept epoch {writer.epoch_step(best.epoch)} (best {settings.monitor} {best.value:.4f})")
    on_features = features is not None and not settings.finetunes
    fitted = first.model if on_features else model  # Keras may have refused XLA: what it compiled with
    mlflow.set_tags({schema.PHASES: "; ".join(described), schema.XLA: str(fitted.jit_compile).lower()})
    splits = {name: split for name, split in {"val": data.val, "test": data.test}.items() if split}
    if on_features:
        return {name: (first.model, features.views(name)) for name in splits}, best
    return {name: (with_tta(model, settings.tta), batches(split, settings)) for name, split in splits.items()}, best


def batches(split: Split, settings: TrainSettings, shuffle_seed: int | None = None) -> Batches:
    """A split's (images, labels) batches, in file order unless shuffled."""
    return image_dataset(split.paths, split.labels, settings.image_size, settings.batch_size, shuffle_seed)


def _features(
    model: keras.Model, backbone: BackboneSpec, data: DataSet, settings: TrainSettings, xla: bool, stopwatch: Stopwatch
) -> CachedFeatures:
    """Every split's features from the cache, computed first where missing (under its lock)."""
    extractor = feature_extractor(model)
    extractor.jit_compile = xla  # predict_on_batch compiles with XLA if asked
    splits = {name: split for name, split in {"train": data.train, "val": data.val, "test": data.test}.items() if split}
    with stopwatch.phase("features"):
        features = cache_splits(
            extractor,
            backbone,
            splits,
            settings,
            mirrored_views=settings.tta == "flip" and not settings.finetunes,  # the head on features scores them
        )
    computed, seconds, rate = features.extraction()
    writer.log_feature_cache(computed)
    stopwatch.note("feature_extraction_seconds", seconds)  # 0 on a hit
    if rate is not None:
        stopwatch.note("feature_extraction_images_per_second", rate)
    log.info("feature cache %s; extraction %.1f s", "miss" if computed else "hit", seconds)
    return features


def class_weights(settings: TrainSettings, data: DataSet) -> dict[int, float] | None:
    """fit's class_weight: with class_weight=balanced, from the training split's counts."""
    return balanced_class_weights(data.train.labels) if settings.class_weighted else None


def fit(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    train: Batches,
    val: Batches,
    epochs: int,
    initial_epoch: int = 0,
    jit_compile: bool = False,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    label_smoothing: float = 0.0,
    class_weight: dict[int, float] | None = None,
) -> int:
    """Compile (with XLA if asked) and fit; epochs count from initial_epoch, so a second phase
    continues the curves. Returns the epoch the phase ends at (the next one's first epoch): earlier
    than `epochs` when a callback (early stopping) stopped it.

    `callbacks` run before the backup. Without `backup_dir` (a phase's folder, Backup.phase), the
    epoch's metrics are logged before them; with it, Keras's BackupAndRestore saves the weights,
    optimizer and epoch there after every epoch, the metrics are logged after the backup
    (BackupThenLog), and it restores them when fit starts: a rerun goes on at the epoch after the
    last backup. The backup is kept after fit, with the phase's end epoch beside it (a rerun of a
    finished phase trains nothing), for the caller to delete once the whole run is logged.

    `label_smoothing` > 0 trains on smoothed one-hot targets (see loss_and_targets); `class_weight`
    (class index -> weight) weighs each training example's loss by its class.
    """
    marked = None if backup_dir is None else Backup.phase_end(backup_dir)
    stops = [c.stopped_before_resume(model) for c in callbacks if isinstance(c, ResumedEarlyStopping)]
    done = marked or min(filter(None, stops), default=None)
    if done is not None:
        epochs = done  # BackupAndRestore restores the phase's last epoch and trains no more
    if backup_dir is None:
        all_callbacks: list[keras.callbacks.Callback] = [MlflowEpochMetrics(), *callbacks]
    else:
        all_callbacks = [*callbacks, BackupThenLog(backup_dir)]
    loss, train, val = loss_and_targets(label_smoothing, model.output_shape[-1], train, val)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit_compile)
    # BackupAndRestore tells fit where a restored phase resumes through this private attribute, which
    # Keras never clears: left set, the next phase (same model, nothing to restore) would start there.
    model._initial_epoch = None
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        class_weight=class_weight,
        callbacks=all_callbacks,
        verbose=2,
    )
    end = max(history.epoch, default=max(initial_epoch, epochs - 1)) + 1
    if backup_dir is not None and marked is None:
        Backup.mark_phase_end(backup_dir, end)
    return end


def loss_and_targets(
    label_smoothing: float, num_classes: int, train: Batches, val: Batches
) -> tuple[str | keras.losses.Loss, Batches, Batches]:
    """The loss to compile with, and the (inputs, targets) batches to fit on, for `label_smoothing`.

    Keras's SparseCategoricalCrossentropy has no label smoothing; CategoricalCrossentropy has,
    and takes one-hot targets. So with smoothing, the integer labels become one-hot here, as the
    batches are read: the pipelines and the feature cache keep their integer labels. It is a Keras
    loss, not a custom one, so that the compile config a saved model holds loads in a process
    that never imports simpsons. Without smoothing: the sparse loss on integer labels, as before.
    """
    if not label_smoothing:
        return "sparse_categorical_crossentropy", train, val
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return loss, pipeline.one_hot(train, num_classes), pipeline.one_hot(val, num_classes)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """Class index -> examples / (classes * examples of the class), from the training labels
    (scikit-learn's "balanced"): each class weighs the same in the loss, in total.

    Over the classes the labels hold: a class without training examples adds nothing to the loss.
    """
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels))
    return {int(index): float(weight) for index, weight in zip(classes, weights, strict=True)}
