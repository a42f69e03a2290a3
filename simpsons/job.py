"""One training job: config -> data -> model -> fit -> evaluate -> log, inside one MLflow run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons import locks, naming, plots, preflight, schedules
from simpsons.backbones import BackboneSpec
from simpsons.data import DataSet, Split, load_dataset
from simpsons.errors import DataError, ServerLost
from simpsons.evaluation import evaluate
from simpsons.features import Lookup, cache_key, cached_features, extract, mirrored
from simpsons.model import build_classifier, feature_extractor, head, unfreeze_top, with_tta
from simpsons.optimizers import build_optimizer
from simpsons.pipeline import image_dataset, load_image, without_autotuner
from simpsons.settings import MONITORS, TrainSettings
from simpsons.stopwatch import Stopwatch
from simpsons.tracking import connection, lifecycle, schema, store, writer
from simpsons.training import (
    BestEpoch,
    balanced_class_weights,
    configure_gpus,
    early_stopping,
    fit,
    gpu_setting,
    log_backed_up_epochs,
    resolve_deterministic,
    seed_everything,
    set_precision,
    use_xla,
)

log = logging.getLogger("simpsons.train")

# The logged model's input example: a validation image at this size. The model resizes any size,
# and MLflow writes the example as JSON twice: at 150 px that was 2 x 67,500 numbers a run.
EXAMPLE_SIZE = 32


@dataclass(frozen=True)
class JobContext:
    """What a run needs from Hydra's runtime (simpsons/train.py reads it): its overrides, .hydra
    folder, and sweep."""

    overrides: list[str]
    hydra_dir: Path | None = None
    sweep_dir: Path | None = None
    sweep_id: str | None = None


def train(cfg: TrainSettings, job: JobContext) -> str:
    """Run one training job as configured; returns the MLflow run id that holds its results.

    That is a new run; or, when the same config already FINISHED with the same data and code
    (and `reuse` is on), the earlier run, which this sweep then lists as REUSED; or a killed
    end-to-end run of the same config, resumed at the epoch after its last backup.
    """
    backbone, optimizer = _checked_parts(cfg)
    single_run_data = load_dataset(cfg.data) if job.sweep_id is None else None  # unusable: nothing created
    try:
        uri = store.configure(cfg.tracking.uri, cfg.tracking.retry_seconds)
    except store.ServerUnreachable as error:
        if job.sweep_id is None:
            raise  # a single run: tracking.uri names no server
        raise ServerLost(f"{error}; the sweep started with it: run the same command again once it answers") from None
    with connection.lost_server():  # a request given up mid-run: one line, not a traceback (connection.py)
        return _train_run(cfg, job, uri, backbone, optimizer, single_run_data)


def _train_run(
    cfg: TrainSettings,
    job: JobContext,
    uri: str,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    single_run_data: DataSet | None,
) -> str:
    """train(), once the store is set up."""
    experiment_id = store.ensure_experiment(uri, cfg.tracking.experiment)
    client = MlflowClient(uri)
    lifecycle.end_dead_runs(client, [experiment_id], cfg.tracking.stale_after)
    parent, swept_keys = _sweep_parent(client, experiment_id, job)
    name = naming.run_name(job.overrides, swept_keys, cfg.backbone.name)
    tags = {schema.RUN_TYPE: schema.TRAIN, schema.HYDRA_OVERRIDES: " ".join(job.overrides), **store.git_tags()}
    if job.sweep_id:
        tags[schema.SWEEP_ID] = job.sweep_id

    data = (
        single_run_data
        if single_run_data is not None
        else _load_sweep_job_data(cfg, job, experiment_id, name, parent, tags)
    )
    identity = lifecycle.config_hash(_training_config(cfg), data.fingerprint, store.code_version())
    tags |= {schema.CONFIG_HASH: identity, schema.CODE_VERSION: store.code_version()}
    done = lifecycle.finished_run(client, experiment_id, identity) if cfg.reuse else None
    if done is not None:
        lifecycle.record_reuse(client, experiment_id, name, parent, done, tags)
        log.info("reused run %s (%s): this config already finished with the same data and code", done.info.run_id, name)
        return done.info.run_id

    with contextlib.ExitStack() as stack:
        resumed = _claim_resumable(client, experiment_id, identity, cfg, stack) if cfg.resumes_killed_runs else None
        resume_id = resumed.info.run_id if resumed else None
        run = stack.enter_context(
            lifecycle.tracked_run(experiment_id, name, parent, tags, resume_id, cfg.tracking.heartbeat_seconds)
        )
        run_id = run.info.run_id
        backups = cfg.checkpoints / run_id
        if resumed is None and cfg.resumable:
            stack.enter_context(locks.exclusive(_lock_path(backups)))  # no two processes train (or resume) one run
        _say_started(run, name, uri, backups if resumed else None)
        _train_and_log(cfg, job, data, backbone, optimizer, backups, swept_keys)
        shutil.rmtree(backups, ignore_errors=True)
        _lock_path(backups).unlink(missing_ok=True)
        return run_id


def _train_and_log(
    cfg: TrainSettings,
    job: JobContext,
    data: DataSet,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    backups: Path,
    swept_keys: list[str] | None,
) -> None:
    """Inside the active run: config and data, then model -> fit -> evaluate -> log.

    The run keeps its best epoch (by `monitor`, over all phases): the model, the outputs and the
    test metrics are that epoch's. The final metrics that are no epoch's (best_val_accuracy,
    best_epoch, val_macro_f1, test_*) are logged once the model is, linked to it at the best
    epoch's step, so that the Models tab shows them beside that epoch's curves.
    Each phase's wall seconds are logged too (`seconds/*`): what a run of a grid costs, and where.
    """
    stopwatch = Stopwatch()
    plots.start_worker()  # it starts while the model is built and trained
    with stopwatch.phase("log_config"):
        writer.log_config(cfg.container(), job.hydra_dir)
        deterministic = seed_everything(cfg.seed, cfg.deterministic)
        mlflow.set_tag(schema.DETERMINISTIC, str(deterministic).lower())
        if gpu_setting() is not None:
            mlflow.set_tag(schema.GPU, gpu_setting())
        xla = use_xla(cfg.jit_compile, deterministic)
        set_precision(cfg.precision)
        _report(data)
        writer.log_data(data)
        if cfg.class_weighted:
            writer.log_class_weights(_class_weights(cfg, data), data.class_names)
        writer.log_dataset_inputs(data, cfg.data.name, cfg.data.root, cfg.data.test_root)
        mlflow.set_tag(schema.NOTE, _description(cfg, data, job.overrides, swept_keys))

    with stopwatch.phase("build_model"):
        model = build_classifier(
            backbone,
            cfg.image_size,
            len(data.class_names),
            cfg.dropout,
            cfg.augment,
            seed=cfg.seed,
            share_backbone=cfg.shares_backbone,
        )
    scored, best = _train(model, backbone, optimizer, data, cfg, xla, backups, stopwatch)
    with stopwatch.phase("evaluate"):
        scores, figures = _evaluate_and_log(scored, data)
        # What the run keeps, hence what ranks it: the kept epoch's logged validation outputs.
        final = {"best_val_accuracy": scores.pop("val_accuracy"), "best_epoch": best.epoch, **scores}
    with stopwatch.phase("log_model"):
        example = load_image(data.val.paths[0], EXAMPLE_SIZE).numpy()[None]
        model_name = naming.model_name(job.overrides, swept_keys, cfg.backbone.name)
        model_id = writer.log_model(with_tta(model, cfg.tta), example, data.class_names, model_name, best.epoch)
        mlflow.log_metrics(final, model_id=model_id)
    with stopwatch.phase("figures"):  # drawn in the figure worker while the model was saved
        writer.log_figures(figures)
    mlflow.log_metrics(stopwatch.metrics())


def _description(cfg: TrainSettings, data: DataSet, overrides: list[str], swept_keys: list[str] | None) -> str:
    """The run's description in the MLflow UI: what it trains on what and how; in a sweep, its swept values."""
    weights = cfg.backbone.weights
    weights = "random weights" if weights is None else f"{Path(str(weights)).name} weights"
    counts = f"{len(data.train)} train, {len(data.val)} validation, {len(data.test) if data.test else 0} test images"
    text = (
        f"{cfg.backbone.name} ({weights}) on `{cfg.data.name}`: {len(data.class_names)} classes; {counts}. "
        f"{cfg.optimizer.name}, lr {cfg.optimizer.lr:g}, dropout {cfg.dropout:g}, {cfg.epochs} epochs at "
        f"{cfg.image_size} px."
    )
    if swept_keys:
        values = {key.lstrip("+~"): value for key, _, value in (o.partition("=") for o in overrides)}
        text += " A sweep's job: " + ", ".join(f"`{key}={values[key]}`" for key in swept_keys if key in values) + "."
    return text


def _training_config(cfg: TrainSettings) -> dict:
    """The settings that decide a run's results (cfg.identity()), with `auto` determinism and XLA
    resolved: a GPU run does not stand for a CPU one."""
    deterministic = resolve_deterministic(cfg.deterministic)
    return cfg.identity() | {"deterministic": deterministic, "jit_compile": use_xla(cfg.jit_compile, deterministic)}


def _load_sweep_job_data(
    cfg: TrainSettings, job: JobContext, experiment_id: str, name: str, parent: str | None, tags: dict
) -> DataSet:
    """A sweep job's data set; a job whose data cannot be used is recorded as a FAILED run with
    its config and error, beside the others of the sweep."""
    try:
        return load_dataset(cfg.data)
    except DataError:
        with lifecycle.tracked_run(experiment_id, name, parent, tags):
            writer.log_config(cfg.container(), job.hydra_dir)
            raise


def _lock_path(backups: Path) -> Path:
    return backups.with_name(backups.name + ".lock")


def _claim_resumable(
    client: MlflowClient, experiment_id: str, identity: str, cfg: TrainSettings, stack: contextlib.ExitStack
) -> Run | None:
    """The newest KILLED or FAILED run of this config with a backup that no other process holds.

    Checked again once locked: the run may have been resumed and finished meanwhile by another
    process, which deletes the backup (and the lock file) when it is done."""
    for run in lifecycle.resumable_runs(client, experiment_id, identity):
        backups = cfg.checkpoints / run.info.run_id
        if not backups.is_dir():
            continue
        lock = locks.try_lock(_lock_path(backups))
        if lock is None:
            continue  # another process is training it
        if client.get_run(run.info.run_id).info.status in ("KILLED", "FAILED") and backups.is_dir():
            stack.callback(lock.close)
            return run
        lock.close()
    return None


def _say_started(run: Run, name: str, uri: str, resumed_from: Path | None) -> None:
    if resumed_from is None:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, name, store.redact_uri(uri))
        return
    epoch = _backup_epoch(resumed_from)
    mlflow.set_tag(schema.RESUMED_AT_EPOCH, str(epoch))
    log.info("resuming MLflow run %s (%s) at epoch %d from its last backup", run.info.run_id, name, epoch)


def _backup_epoch(backups: Path) -> int:
    """The epoch training resumes at: the next one after the last backed-up epoch of either phase."""
    return max((_backed_up_epoch(phase) for phase in backups.iterdir() if phase.is_dir()), default=0)


def _backed_up_epoch(phase: Path) -> int:
    """A phase's backed-up epoch; a metadata file cut short by a kill is replaced by the previous
    backup (weights and metadata), which BackupAndRestore's double checkpoint keeps."""
    metadata = phase / "training_metadata.json"
    try:
        return json.loads(metadata.read_text())["epoch"]
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError):
        pairs = [
            (current, current.with_name(current.name + ".bkp")) for current in (metadata, phase / "latest.weights.h5")
        ]
        if not all(previous.exists() for _, previous in pairs):
            shutil.rmtree(phase)  # cut short in its first backup: the phase starts over
            return 0
        for current, previous in pairs:
            shutil.copyfile(previous, current)
        return json.loads(metadata.read_text())["epoch"]


def _sweep_parent(client: MlflowClient, experiment_id: str, job: JobContext) -> tuple[str | None, list[str] | None]:
    """The sweep's parent run id and its swept keys (which name the job); None, None for a single run."""
    if job.sweep_id is None:
        return None, None
    parent = lifecycle.find_sweep_run(client, experiment_id, job.sweep_id)
    if parent is None:
        log.warning("no MLflow sweep run found for sweep %s (tracking.* swept?): this run is not nested", job.sweep_id)
        return None, None
    return parent, json.loads(client.get_run(parent).data.tags.get(schema.SWEPT_KEYS, "[]"))


def _checked_parts(cfg: TrainSettings) -> tuple[BackboneSpec, keras.optimizers.Optimizer]:
    """Every check that needs no data, so that a bad value fails before anything is created
    (no store, experiment or run): simpsons/preflight.py's, then what only TensorFlow and Keras can say.

    The GPUs are set up in between: after the gpu.* values are checked, before anything (an
    optimizer's variables) starts TensorFlow's runtime, after which they can no longer be set."""
    preflight.raise_errors(cfg)
    configure_gpus(cfg.gpu.memory_growth, cfg.gpu.one_per_job, Path(cfg.cache_dir))
    use_xla(cfg.jit_compile, resolve_deterministic(cfg.deterministic))  # is a GPU visible to TensorFlow?
    return BackboneSpec.from_settings(cfg.backbone), build_optimizer(cfg.optimizer)


def _batches(
    split: Split, cfg: TrainSettings, shuffle_seed: int | None = None, mirror: bool = False
) -> tf.data.Dataset:
    batches = image_dataset(split.paths, split.labels, cfg.image_size, cfg.batch_size, shuffle_seed)
    return mirrored(batches) if mirror else batches


# split -> (model, what it scores): images, or cached features (with tta=flip, the mirror images' too)
Scored = dict[str, tuple[keras.Model, tf.data.Dataset | tuple[np.ndarray, ...]]]


def _train(
    model: keras.Model,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    data: DataSet,
    cfg: TrainSettings,
    xla: bool,
    backups: Path,
    stopwatch: Stopwatch,
) -> tuple[Scored, BestEpoch]:
    """The head phase, then with finetune.layers a fine-tuning phase; the model is left at its best epoch.

    The head phase trains on cached features when it can (the backbone then runs once per image,
    or never on a cache hit), else on images. Fine-tuning runs the backbone on images every epoch.
    Resumable runs (see TrainSettings.resumable) back up every epoch in `backups`, the head phase on features
    too: a rerun of a killed run goes on at the epoch after the last backup, with its best epoch
    and early stopping's count carried over from the curves it logged. Returns what scores each
    evaluated split: the head on features when no backbone layer was trained, else the model on images.
    """
    resumable = cfg.resumable
    restored = _backup_epoch(backups) if resumable and backups.is_dir() else 0
    if restored:  # first what a kill kept from being logged: the curves below are read back from MLflow
        for phase in sorted(path for path in backups.iterdir() if path.is_dir()):
            log_backed_up_epochs(phase, _backed_up_epoch(phase))
    curves = _logged_curves(restored)
    best = BestEpoch(model, cfg.monitor, backups / "best" if resumable else None, curves[cfg.monitor])
    stopping, stopping_monitor = cfg.early_stopping, cfg.early_stopping_monitor
    knobs = {"class_weight": _class_weights(cfg, data), "label_smoothing": cfg.label_smoothing}

    def phase(
        name: str, fitted: keras.Model, opt: keras.optimizers.Optimizer, batches: tuple, epochs: int, first: int
    ) -> int:
        """One fit, epochs first..epochs-1; returns the epoch it ended at (early stopping may end it sooner)."""
        replay = [(epoch, value) for epoch, value in curves[stopping_monitor] if epoch >= first]
        stop = early_stopping(stopping.patience, stopping_monitor, stopping.min_delta, replay)
        backup_dir = backups / name if resumable else None
        opt = schedules.scheduled(opt, cfg.scheduler, (epochs - first) * _steps_per_epoch(data, cfg))
        plateau = [(epoch, value) for epoch, value in curves.get(cfg.scheduler.watches, []) if epoch >= first]
        callbacks = [best, *stop, *schedules.callbacks(cfg.scheduler, plateau)]
        return fit(fitted, opt, *batches, epochs, first, xla, backup_dir, callbacks=callbacks, **knobs)

    train, val = _batches(data.train, cfg, shuffle_seed=cfg.seed), _batches(data.val, cfg)
    features = _features(model, backbone, data, cfg, xla, stopwatch) if cfg.cached_head else None
    with stopwatch.phase("fit"):
        if features is not None:
            classifier_head = head(model)
            head_batches = features.batches("train", cfg.seed), features.batches("val")
            end = phase("head", classifier_head, optimizer, head_batches, cfg.epochs, 0)
            phases = [f"head on cached features: epochs 0-{end - 1}"]
        else:
            mlflow.set_tag(schema.FEATURE_CACHE, "off")
            end = phase("head", model, optimizer, (train, val), cfg.epochs, 0)
            phases = [f"head: epochs 0-{end - 1}"]
        if cfg.finetunes:
            lr = cfg.finetune_lr
            unfreeze_top(model, cfg.finetune.layers)
            finetune_optimizer = build_optimizer(cfg.optimizer, lr)
            total = end + cfg.finetune.epochs
            start, end = end, phase("finetune", model, finetune_optimizer, (train, val), total, end)
            phases.append(f"finetune: epochs {start}-{end - 1}, top {cfg.finetune.layers} layers, lr {lr:g}")
    best.restore()
    phases.append(f"kept epoch {best.epoch} (best {cfg.monitor} {best.value:.4f})")
    on_features = features is not None and not cfg.finetunes
    fitted = classifier_head if on_features else model
    mlflow.set_tags({schema.PHASES: "; ".join(phases), schema.XLA: str(fitted.jit_compile).lower()})  # may refuse XLA
    splits = {name: split for name, split in {"val": data.val, "test": data.test}.items() if split}
    if on_features:
        return {name: (classifier_head, features.views(name)) for name in splits}, best
    return {name: (with_tta(model, cfg.tta), _batches(split, cfg)) for name, split in splits.items()}, best


def _logged_curves(before_epoch: int) -> dict[str, list[tuple[int, float]]]:
    """The active run's logged val_accuracy and val_loss, (epoch, value), of the epochs before
    `before_epoch` (those a resumed run restored); an epoch that a run of an earlier version logged
    twice (before its backup, then again once resumed) counts with its last value."""
    if before_epoch == 0:  # a new run: nothing to read back
        return {metric: [] for metric in MONITORS}
    run_id = mlflow.active_run().info.run_id
    curves = {}
    for metric in MONITORS:
        history = sorted(MlflowClient().get_metric_history(run_id, metric), key=lambda m: m.timestamp)
        last = {m.step: m.value for m in history if m.step < before_epoch}
        curves[metric] = sorted(last.items())
    return curves


@dataclass(frozen=True)
class CachedFeatures:
    """Each split's pooled backbone features, from the feature cache."""

    lookups: dict[str, Lookup]
    labels: dict[str, np.ndarray]
    batch_size: int

    def array(self, split: str) -> np.ndarray:
        return np.asarray(self.lookups[split].features)

    def views(self, split: str) -> tuple[np.ndarray, ...]:
        """A scored split's features, and with tta=flip its mirror images': evaluate averages their softmax."""
        return tuple(self.array(view) for view in (split, f"{split}_mirrored") if view in self.lookups)

    def batches(self, split: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((self.array(split), self.labels[split]))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(self.labels[split]), seed=shuffle_seed, reshuffle_each_iteration=True)
        return without_autotuner(dataset.batch(self.batch_size))


def _features(
    model: keras.Model, backbone: BackboneSpec, data: DataSet, cfg: TrainSettings, xla: bool, stopwatch: Stopwatch
) -> CachedFeatures:
    """Every split's features from the cache, computed first where missing (under its lock)."""
    extractor = feature_extractor(model)
    extractor.jit_compile = xla  # predict_on_batch compiles with XLA if asked
    compute = {"precision": cfg.precision, "xla": extractor.jit_compile}
    splits = {name: split for name, split in {"train": data.train, "val": data.val, "test": data.test}.items() if split}
    views = {name: (split, False) for name, split in splits.items()}
    if cfg.tta == "flip" and not cfg.finetunes:  # the head on features scores them: their mirror images too
        views |= {f"{name}_mirrored": (split, True) for name, split in splits.items() if name != "train"}
    with stopwatch.phase("features"):
        lookups = {
            name: cached_features(
                Path(cfg.cache_dir),
                cache_key(backbone, cfg.image_size, split, compute, cfg.seed, mirror),
                lambda split=split, mirror=mirror: extract(extractor, _batches(split, cfg, mirror=mirror), len(split)),
            )
            for name, (split, mirror) in views.items()
        }
    _log_cache_use(lookups)
    return CachedFeatures(lookups, {name: split.labels for name, split in splits.items()}, cfg.batch_size)


def _steps_per_epoch(data: DataSet, cfg: TrainSettings) -> int:
    """Batches of training images (or of their cached features) in an epoch: the last may be smaller."""
    return math.ceil(len(data.train) / cfg.batch_size)


def _class_weights(cfg: TrainSettings, data: DataSet) -> dict[int, float] | None:
    """fit's class_weight: with class_weight=balanced, from the training split's counts."""
    return balanced_class_weights(data.train.labels) if cfg.class_weighted else None


def _log_cache_use(lookups: dict) -> None:
    computed = [lookup for lookup in lookups.values() if not lookup.hit]
    mlflow.set_tag(schema.FEATURE_CACHE, "miss" if computed else "hit")
    seconds = sum(lookup.seconds for lookup in computed)
    mlflow.log_metric("feature_extraction_seconds", seconds)
    if computed and seconds > 0:
        images = sum(len(lookup.features) for lookup in computed)
        mlflow.log_metric("feature_extraction_images_per_second", images / seconds)
    log.info("feature cache %s; extraction %.1f s", "miss" if computed else "hit", seconds)


def _evaluate_and_log(scored: Scored, data: DataSet) -> tuple[dict[str, float], dict[str, plots.Drawing]]:
    """Softmax outputs of each split from the model (or head) that scores it, in file order, with
    their report; returns the metrics to log (the test split's, and of the validation split's its
    accuracy and macro F1: its loss and accuracy per epoch are the curves) and the figures still
    being drawn, by artifact path."""
    metrics: dict[str, float] = {}
    figures: dict[str, plots.Drawing] = {}
    for name, (model, batches) in scored.items():
        split = data.val if name == "val" else data.test
        evaluation = evaluate(model, batches, split, name)
        writer.log_evaluation(evaluation, data.class_names, figures, with_metrics=False)
        scores = evaluation.metrics()
        metrics |= {key: scores[key] for key in ("val_accuracy", "val_macro_f1")} if name == "val" else scores
        log.info("%s: %s", name, {k: round(v, 4) for k, v in scores.items()})
    return metrics, figures


def _report(data: DataSet) -> None:
    counts = (len(data.class_names), len(data.train), len(data.val), len(data.test) if data.test else 0)
    log.info("%d classes; %d train, %d validation, %d test images; data fingerprint %s", *counts, data.fingerprint[:12])
    if data.skipped:
        log.warning("skipped %d files that are not usable images:", len(data.skipped))
        for skipped in data.skipped:
            log.warning("  %s (%s)", skipped.path, skipped.reason)
    if data.dropped_classes:
        log.warning("dropped classes below data.min_images_per_class: %s", data.dropped_classes)
    if data.unknown_test_classes:
        log.warning("left out test classes unknown to training: %s", data.unknown_test_classes)
