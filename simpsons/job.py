"""One training job: config -> data -> model -> fit -> evaluate -> log, inside one MLflow run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from simpsons import tracking
from simpsons.backbones import BackboneSpec
from simpsons.config import check_training_keys
from simpsons.data import DataSet, Split, load_dataset
from simpsons.evaluation import evaluate
from simpsons.model import build_classifier
from simpsons.optimizers import build_optimizer
from simpsons.pipeline import image_dataset, load_image
from simpsons.training import fit, seed_everything

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
        mlflow.set_tag("deterministic", str(seed_everything(cfg.seed, cfg.deterministic)).lower())

        data = load_dataset(cfg.data)
        _report(data)
        tracking.log_data(data)

        model = build_classifier(backbone, cfg.image_size, len(data.class_names), cfg.dropout)
        train_batches = _batches(data.train, cfg, shuffle_seed=cfg.seed)
        history = fit(model, optimizer, train_batches, _batches(data.val, cfg), cfg.epochs)
        mlflow.log_metric("best_val_accuracy", max(history.history["val_accuracy"]))

        _evaluate_and_log(model, data, cfg)
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


def _evaluate_and_log(model: keras.Model, data: DataSet, cfg: DictConfig) -> None:
    splits = {"val": data.val, "test": data.test}
    for name, split in splits.items():
        if split is None:
            continue
        evaluation = evaluate(model, _batches(split, cfg), split, name)
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
