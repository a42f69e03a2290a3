"""`python -m simpsons.train`: one transfer-learning run per job, tracked in MLflow.

config -> data -> model -> fit -> evaluate -> log. `-m` sweeps a grid with Hydra's multirun;
simpsons.sweep then nests every job's run under one parent run.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.types import RunMode
from omegaconf import DictConfig

from simpsons import config
from simpsons.errors import SimpsonsError

log = logging.getLogger("simpsons.train")
config.register_resolvers()
CHECKED_GROUPS = ("backbone", "optimizer", "data", "experiment")


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
    # Heavy imports here, so that `--help` and config errors answer without loading TensorFlow.
    import mlflow

    from simpsons import tracking
    from simpsons.backbones import BackboneSpec
    from simpsons.data import load_dataset
    from simpsons.evaluation import evaluate
    from simpsons.model import build_classifier
    from simpsons.optimizers import build_optimizer
    from simpsons.pipeline import image_dataset, load_image
    from simpsons.training import fit, seed_everything

    uri = tracking.configure(cfg.tracking.uri)
    experiment_id = tracking.ensure_experiment(uri, cfg.tracking.experiment)
    parent_run_id = tracking.find_sweep_run(experiment_id, job.sweep_dir) if job.sweep_dir else None
    name = tracking.run_name(cfg.backbone.name, cfg.optimizer.name, job.overrides)
    tags = {tracking.RUN_TYPE: "train", "hydra.overrides": " ".join(job.overrides), **tracking.git_tags()}

    with tracking.tracked_run(experiment_id, name, parent_run_id, tags) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, name, uri)
        tracking.log_config(cfg, job.hydra_dir)
        config.check_training_keys(cfg)
        backbone = BackboneSpec.from_config(cfg.backbone)
        backbone.check_image_size(cfg.image_size)
        optimizer = build_optimizer(cfg.optimizer)
        deterministic = seed_everything(cfg.seed, cfg.deterministic)
        mlflow.set_tag("deterministic", str(deterministic).lower())

        data = load_dataset(cfg.data)
        _report_data(data)
        tracking.log_data(data)

        def batches(split, shuffle_seed=None):
            return image_dataset(split.paths, split.labels, cfg.image_size, cfg.batch_size, shuffle_seed)

        model = build_classifier(backbone, cfg.image_size, len(data.class_names), cfg.dropout)
        history = fit(model, optimizer, batches(data.train, cfg.seed), batches(data.val), cfg.epochs)
        mlflow.log_metric("best_val_accuracy", max(history.history["val_accuracy"]))

        splits = [("val", data.val)] + ([("test", data.test)] if data.test else [])
        for split_name, split in splits:
            evaluation = evaluate(model, batches(split), split, split_name)
            tracking.log_evaluation(evaluation, data.class_names)
            log.info("%s: %s", split_name, evaluation.metrics())

        example = load_image(data.val.paths[0], cfg.image_size).numpy()[None]
        tracking.log_model(model, example)
        return run.info.run_id


def _report_data(data) -> None:
    log.info(
        "%d classes; %d train, %d validation, %d test images; data fingerprint %s",
        len(data.class_names),
        len(data.train),
        len(data.val),
        len(data.test) if data.test else 0,
        data.fingerprint[:12],
    )
    if data.skipped:
        log.warning("skipped %d files that are not usable images:", len(data.skipped))
        for skipped in data.skipped:
            log.warning("  %s (%s)", skipped.path, skipped.reason)
    if data.dropped_classes:
        log.warning("dropped classes below data.min_images_per_class: %s", data.dropped_classes)
    if data.unknown_test_classes:
        log.warning("left out test classes unknown to training: %s", data.unknown_test_classes)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    job = JobContext.from_hydra()
    try:
        train(cfg, job)
    except SimpsonsError as error:
        log.error("error: %s", error)
        if job.sweep_dir is None:
            sys.exit(2)
        raise  # in a sweep: this job is FAILED, the others go on


def check_group_overrides(args: list[str]) -> None:
    """Reject unknown config-group choices (backbone=foo) in one line, before Hydra composes."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:
        return  # Hydra reports malformed overrides itself
    for override in overrides:
        group = override.key_or_group
        if group not in CHECKED_GROUPS or override.is_delete():
            continue
        if isinstance(override.value(), Glob):
            continue  # glob(...) matches existing options only
        choices = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for choice in choices:
            if isinstance(choice, str) and "glob(" not in choice:
                config.check_choice(group, choice)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    try:
        check_group_overrides(sys.argv[1:])
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # Slurm and `kill` end runs as KILLED too
    hydra_main()


if __name__ == "__main__":
    main()
