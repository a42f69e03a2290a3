"""One training job: config -> data -> model -> fit -> evaluate -> log, inside one MLflow run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from simpsons import tracking
from simpsons.backbones import BackboneSpec
from simpsons.config import check_training_keys
from simpsons.data import DataSet, Split, load_dataset
from simpsons.evaluation import evaluate
from simpsons.features import cache_key, cached_features, extract
from simpsons.model import build_classifier, feature_extractor, head, unfreeze_top
from simpsons.optimizers import build_optimizer
from simpsons.pipeline import image_dataset, load_image, without_autotuner
from simpsons.training import fit, seed_everything, set_precision, use_xla

log = logging.getLogger("simpsons.train")


@dataclass(frozen=True)
class JobContext:
    """What a run needs from Hydra's runtime: its overrides, .hydra folder, and sweep folder."""

    overrides: list[str]
    hydra_dir: Path | None = None
    sweep_dir: Path | None = None

    @classmethod
    def from_hydra(cls) -> JobContext:
        hydra_cfg = HydraConfig.get()
        output_dir = Path(hydra_cfg.runtime.output_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            overrides=list(hydra_cfg.overrides.task),
            hydra_dir=output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None,
            sweep_dir=Path(hydra_cfg.sweep.dir).resolve() if multirun else None,
        )


def train(cfg: DictConfig, job: JobContext) -> str:
    """Run one training job as configured; returns its MLflow run id."""
    uri = tracking.configure(cfg.tracking.uri)
    experiment_id = tracking.ensure_experiment(uri, cfg.tracking.experiment)
    name = tracking.run_name(cfg.backbone.name, cfg.optimizer.name, job.overrides)
    tags = {tracking.RUN_TYPE: "train", "hydra.overrides": " ".join(job.overrides), **tracking.git_tags()}

    with tracking.tracked_run(experiment_id, name, _sweep_parent(experiment_id, job), tags) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, name, tracking.redact_uri(uri))
        tracking.log_config(cfg, job.hydra_dir)
        backbone, optimizer = _checked_parts(cfg)
        deterministic = seed_everything(cfg.seed, cfg.deterministic)
        mlflow.set_tag("deterministic", str(deterministic).lower())
        xla = use_xla(cfg.jit_compile, deterministic)
        set_precision(cfg.precision)

        data = load_dataset(cfg.data)
        _report(data)
        tracking.log_data(data)

        model = build_classifier(
            backbone, cfg.image_size, len(data.class_names), cfg.dropout, cfg.augment, seed=cfg.seed
        )
        if cfg.cache and cfg.augment.name == "none" and cfg.finetune.layers == 0:
            scored, val_accuracy = _train_head_on_cached_features(model, backbone, optimizer, data, cfg, xla)
        else:
            scored, val_accuracy = _train_end_to_end(model, optimizer, data, cfg, xla)
        mlflow.log_metric("best_val_accuracy", max(val_accuracy))
        _evaluate_and_log(scored, data)
        example = load_image(data.val.paths[0], cfg.image_size).numpy()[None]
        tracking.log_model(model, example, data.class_names)
        return run.info.run_id


def _sweep_parent(experiment_id: str, job: JobContext) -> str | None:
    if job.sweep_dir is None:
        return None
    parent = tracking.find_sweep_run(experiment_id, job.sweep_dir)
    if parent is None:
        log.warning("no MLflow sweep run found for %s (tracking.* swept?): this run is not nested", job.sweep_dir)
    return parent


def _checked_parts(cfg: DictConfig) -> tuple[BackboneSpec, keras.optimizers.Optimizer]:
    """Every config check that needs no data, so bad values fail before any data is read."""
    check_training_keys(cfg)
    backbone = BackboneSpec.from_config(cfg.backbone)
    backbone.check_image_size(cfg.image_size)
    return backbone, build_optimizer(cfg.optimizer)


def _batches(split: Split, cfg: DictConfig, shuffle_seed: int | None = None) -> tf.data.Dataset:
    return image_dataset(split.paths, split.labels, cfg.image_size, cfg.batch_size, shuffle_seed)


def _train_end_to_end(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, data: DataSet, cfg: DictConfig, xla: bool
) -> tuple[dict[str, tuple[keras.Model, tf.data.Dataset]], list[float]]:
    """Images through the whole model every epoch; then, with finetune.layers, a second phase."""
    mlflow.set_tag("feature_cache", "off")
    train, val = _batches(data.train, cfg, shuffle_seed=cfg.seed), _batches(data.val, cfg)
    val_accuracy = fit(model, optimizer, train, val, cfg.epochs, jit_compile=xla).history["val_accuracy"]
    phases = [f"head: epochs 0-{cfg.epochs - 1}"]
    if cfg.finetune.layers:
        lr = cfg.finetune.lr or cfg.optimizer.lr / 10
        unfreeze_top(model, cfg.finetune.layers)
        finetune_optimizer = build_optimizer(OmegaConf.merge(cfg.optimizer, {"lr": lr}))
        total = cfg.epochs + cfg.finetune.epochs
        finetuned = fit(model, finetune_optimizer, train, val, total, initial_epoch=cfg.epochs, jit_compile=xla)
        val_accuracy += finetuned.history["val_accuracy"]
        phases.append(f"finetune: epochs {cfg.epochs}-{total - 1}, top {cfg.finetune.layers} layers, lr {lr:g}")
    mlflow.set_tags({"phases": "; ".join(phases), "xla": str(model.jit_compile).lower()})  # layers may refuse XLA
    splits = {"val": data.val, "test": data.test}
    return {name: (model, _batches(split, cfg)) for name, split in splits.items() if split}, val_accuracy


def _train_head_on_cached_features(
    model: keras.Model,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    data: DataSet,
    cfg: DictConfig,
    xla: bool,
) -> tuple[dict[str, tuple[keras.Model, tf.data.Dataset]], list[float]]:
    """The backbone runs once per image (or never, on a cache hit); the head trains on features."""
    extractor = feature_extractor(model)
    extractor.jit_compile = xla  # predict_on_batch compiles with XLA if asked
    compute = {"precision": cfg.precision, "xla": extractor.jit_compile}
    splits = {name: split for name, split in {"train": data.train, "val": data.val, "test": data.test}.items() if split}
    lookups = {
        name: cached_features(
            Path(cfg.cache_dir),
            cache_key(backbone, cfg.image_size, split, compute),
            lambda split=split: extract(extractor, _batches(split, cfg), len(split)),
        )
        for name, split in splits.items()
    }
    _log_cache_use(lookups)

    def features(name: str, shuffle_seed: int | None = None) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((np.asarray(lookups[name].features), splits[name].labels))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(splits[name]), seed=shuffle_seed, reshuffle_each_iteration=True)
        return without_autotuner(dataset.batch(cfg.batch_size))

    classifier_head = head(model)
    train, val = features("train", cfg.seed), features("val")
    val_accuracy = fit(classifier_head, optimizer, train, val, cfg.epochs, jit_compile=xla).history["val_accuracy"]
    phases = f"head on cached features: epochs 0-{cfg.epochs - 1}"
    mlflow.set_tags({"phases": phases, "xla": str(extractor.jit_compile).lower()})
    return {name: (classifier_head, features(name)) for name in splits if name != "train"}, val_accuracy


def _log_cache_use(lookups: dict) -> None:
    computed = [lookup for lookup in lookups.values() if not lookup.hit]
    mlflow.set_tag("feature_cache", "miss" if computed else "hit")
    seconds = sum(lookup.seconds for lookup in computed)
    mlflow.log_metric("feature_extraction_seconds", seconds)
    if computed and seconds > 0:
        images = sum(len(lookup.features) for lookup in computed)
        mlflow.log_metric("feature_extraction_images_per_second", images / seconds)
    log.info("feature cache %s; extraction %.1f s", "miss" if computed else "hit", seconds)


def _evaluate_and_log(scored: dict[str, tuple[keras.Model, tf.data.Dataset]], data: DataSet) -> None:
    """Softmax outputs of each split from the model (or head) that scores it, in file order."""
    for name, (model, batches) in scored.items():
        split = data.val if name == "val" else data.test
        evaluation = evaluate(model, batches, split, name)
        tracking.log_evaluation(evaluation, data.class_names, with_metrics=name != "val")  # val: the curves
        log.info("%s: %s", name, {k: round(v, 4) for k, v in evaluation.metrics().items()})


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
