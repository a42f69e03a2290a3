"""`python -m simpsons.ensemble`: the top-N training runs' softmax outputs, averaged, as a new run.

Scores come from the outputs each run logged (predictions/<split>.csv), so no model is reloaded
to score; the logged ensemble model bundles the members' models for prediction and serving.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from simpsons import ensemble_model
from simpsons.config import register_resolvers
from simpsons.ensembling import greedy_weights, weighted_mean
from simpsons.errors import ConfigError, SimpsonsError
from simpsons.evaluation import Evaluation
from simpsons.tracking import lifecycle, reader, schema, store, writer

log = logging.getLogger("simpsons.ensemble")
register_resolvers()
CHOICES = {"method": ("mean", "greedy"), "weights": ("equal", "val_accuracy"), "direction": ("max", "min")}


@dataclass(frozen=True)
class Member:
    run: Run
    outputs: dict[str, reader.Outputs]  # "val", and "test" where the run had a test set
    model_uri: str

    @property
    def backbone(self) -> str:
        return self.run.data.params.get("backbone.name", "?")

    @property
    def label(self) -> str:
        return f"{self.run.info.run_name} ({self.run.info.run_id[:8]})"


def check_options(cfg: DictConfig) -> None:
    for key, accepted in CHOICES.items():
        if cfg[key] not in accepted:
            raise ConfigError(f"{key}={cfg[key]!r} is unknown; use one of: {', '.join(accepted)}")
    if not isinstance(cfg.top_n, int) or isinstance(cfg.top_n, bool) or cfg.top_n < 1:
        raise ConfigError(f"top_n={cfg.top_n!r} is invalid; expected an integer >= 1")


def select_members(candidates: list[Run], cfg: DictConfig) -> list[Member]:
    """The best top_n runs that can be averaged together; logs why each other run is left out.

    The best-ranked run sets what the others must share with it: class names, data fingerprint,
    validation split, and the same validation and test files.
    """
    members: list[Member] = []
    for run, reason in _ranked(candidates, cfg):
        if reason is None and len(members) == cfg.top_n:
            break
        if reason is None:
            reason = _mismatch(run, members, cfg.one_per_backbone)
        if reason is None:
            member, reason = _load_member(run, members)
            if member is not None:
                members.append(member)
                continue
        log.info("left out %s (%s): %s", run.info.run_name, run.info.run_id[:8], reason)
    if not members:
        raise ConfigError(f"no finished training run with {cfg.metric} to ensemble (see the lines above)")
    return members


def _ranked(candidates: list[Run], cfg: DictConfig) -> list[tuple[Run, str | None]]:
    """Runs that cannot be members, with the reason, then the others best first (reason None)."""
    judged = [(run, _ineligible(run, cfg)) for run in candidates]
    sign = -1 if cfg.direction == "max" else 1
    eligible = [run for run, reason in judged if reason is None]
    eligible.sort(key=lambda run: sign * run.data.metrics[cfg.metric])
    return [(run, reason) for run, reason in judged if reason] + [(run, None) for run in eligible]


def _ineligible(run: Run, cfg: DictConfig) -> str | None:
    if reader.run_type(run) != schema.TRAIN:
        return "not a training run"
    if run.info.status != "FINISHED":
        return f"status {run.info.status}"
    value = run.data.metrics.get(cfg.metric)
    if value is None or not math.isfinite(value):
        return f"no finite {cfg.metric}"
    if cfg.weights == "val_accuracy" and cfg.method == "mean" and not run.data.metrics.get("val_accuracy"):
        return "no val_accuracy to weight by"
    return None


def _mismatch(run: Run, members: list[Member], one_per_backbone: bool) -> str | None:
    """Why `run` cannot join `members` (same classes, data and validation split are required)."""
    if not members:
        return None
    first = members[0].run
    if reader.class_names(run) != reader.class_names(first):
        return "its class names differ"
    if run.data.tags.get(schema.DATA_FINGERPRINT) != first.data.tags.get(schema.DATA_FINGERPRINT):
        return "its data fingerprint differs"
    for key in ("data.split_seed", "data.val_split"):
        if run.data.params.get(key) != first.data.params.get(key):
            return f"its {key} differs"
    backbone = run.data.params.get("backbone.name")
    if one_per_backbone and backbone in {m.backbone for m in members}:
        return f"a better {backbone} run is already in"
    return None


def _load_member(run: Run, members: list[Member]) -> tuple[Member | None, str | None]:
    """The run's logged outputs and model, or why they do not fit the members so far."""
    outputs = {split: found for split in ("val", "test") if (found := reader.outputs(run.info.run_id, split))}
    if "val" not in outputs:
        return None, "logged no validation outputs"
    if members and outputs.keys() != members[0].outputs.keys():
        return None, "it has a test set where the best run has none, or the reverse"
    for split, found in outputs.items():
        if members and found.names != members[0].outputs[split].names:
            return None, f"its {split} files differ"
    try:
        model_uri = reader.model_uri(run)
    except ConfigError:
        return None, "logged no model"
    return Member(run, outputs, model_uri), None


def member_weights(members: list[Member], cfg: DictConfig, val_labels: np.ndarray) -> np.ndarray:
    """Weights summing to 1: greedy selection counts, validation accuracies, or equal."""
    if cfg.method == "greedy":
        weights = greedy_weights([m.outputs["val"].probabilities for m in members], val_labels)
    elif cfg.weights == "val_accuracy":
        weights = np.array([m.run.data.metrics["val_accuracy"] for m in members])
    else:
        weights = np.ones(len(members))
    return weights / weights.sum()


def ensemble(cfg: DictConfig) -> str:
    """Select, combine, score and log; returns the ensemble's MLflow run id."""
    check_options(cfg)
    client = MlflowClient(store.configure(cfg.tracking.uri))
    experiment = reader.experiment_id(client, cfg.tracking.experiment)
    sweep = reader.resolve_sweep(client, experiment, cfg.sweep)
    lifecycle.end_dead_runs(client, [experiment], cfg.tracking.stale_after)
    candidates, superseded = reader.training_runs(client, reader.search(client, experiment, sweep, cfg.filter))
    if superseded:
        log.info("counted each config once (its latest finished run): left out %d older run(s)", len(superseded))
    members = select_members(candidates, cfg)
    if len(members) < cfg.top_n:
        log.warning("only %d eligible run(s) for top_n=%d: using %d", len(members), cfg.top_n, len(members))
    class_names = reader.class_names(members[0].run)
    weights, combined, scores = combine(members, cfg, class_names)

    first = members[0].run
    tags = {
        schema.RUN_TYPE: schema.ENSEMBLE,
        schema.ENSEMBLE_SWEEP: sweep or "",
        schema.CLASS_NAMES: first.data.tags.get(schema.CLASS_NAMES, "[]"),
        schema.DATA_FINGERPRINT: first.data.tags.get(schema.DATA_FINGERPRINT, ""),
        schema.MEMBERS: ",".join(m.run.info.run_id for m in members),
        **store.git_tags(),
    }
    name = f"ensemble {cfg.method} of {np.count_nonzero(weights)}"
    with lifecycle.tracked_run(experiment, name, None, tags, heartbeat_seconds=cfg.tracking.heartbeat_seconds) as run:
        _log_params(cfg, members, weights, sweep)
        for split, evaluation in combined.items():
            writer.log_evaluation(evaluation, class_names)
            gain = evaluation.metrics()[f"{split}_accuracy"] - max(scores[split])
            mlflow.log_metric(f"{split}_accuracy_gain", gain)
        mlflow.log_dict(_member_table(members, weights, scores), schema.MEMBERS_JSON)
        mlflow.log_figure(_comparison_figure(members, scores, combined), schema.MEMBERS_CHART)
        _log_model(members, weights, class_names)
        _print_summary(members, weights, scores, combined, cfg)
        return run.info.run_id


def combine(
    members: list[Member], cfg: DictConfig, class_names: list[str]
) -> tuple[np.ndarray, dict[str, Evaluation], dict[str, list[float]]]:
    """Member weights, the ensemble's evaluation per split, and each member's accuracy per split."""
    first = members[0].outputs
    if "test" not in first:
        log.warning("the members have no test set: the ensemble is scored on validation only")
    labels = {split: _label_indices(outputs, class_names) for split, outputs in first.items()}
    weights = member_weights(members, cfg, labels["val"])
    combined = {
        split: Evaluation(
            split,
            outputs.names,
            labels[split],
            weighted_mean([m.outputs[split].probabilities for m in members], weights),
        )
        for split, outputs in first.items()
    }
    scores = {split: _member_accuracies(members, split, labels[split]) for split in first}
    return weights, combined, scores


def _label_indices(outputs: reader.Outputs, class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in outputs.labels], dtype=np.int32)


def _member_accuracies(members: list[Member], split: str, labels: np.ndarray) -> list[float]:
    return [float(np.mean(m.outputs[split].probabilities.argmax(axis=1) == labels)) for m in members]


def _log_params(cfg: DictConfig, members: list[Member], weights: np.ndarray, sweep: str | None) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["tracking"]["uri"] = store.redact_uri(resolved["tracking"]["uri"])
    used = int(np.count_nonzero(weights))
    mlflow.log_params(store.flatten(resolved) | {"sweep": sweep, "num_candidates": len(members), "num_members": used})
    for i, (member, weight) in enumerate(zip(members, weights, strict=True)):
        value = member.run.data.metrics[cfg.metric]
        mlflow.log_param(
            f"member_{i}", f"{member.run.info.run_id} {member.backbone} {cfg.metric}={value:.4f} w={weight:.4f}"
        )


def _member_table(members: list[Member], weights: np.ndarray, scores: dict[str, list[float]]) -> list[dict]:
    return [
        {
            "run_id": m.run.info.run_id,
            "run_name": m.run.info.run_name,
            "backbone": m.backbone,
            "weight": float(w),
            **{f"{split}_accuracy": scores[split][i] for split in scores},
        }
        for i, (m, w) in enumerate(zip(members, weights, strict=True))
    ]


def _comparison_figure(members: list[Member], scores: dict[str, list[float]], combined: dict) -> Figure:
    split = "test" if "test" in scores else "val"
    names = [m.label for m in members] + ["ensemble"]
    values = scores[split] + [combined[split].metrics()[f"{split}_accuracy"]]
    figure = Figure(figsize=(8, 0.45 * len(names) + 1.5), layout="constrained")
    axes = figure.subplots()
    bars = axes.barh(names, values, color=["tab:blue"] * len(members) + ["tab:orange"])
    axes.bar_label(bars, fmt="%.4f")
    axes.invert_yaxis()
    axes.set_xlabel(f"{split} accuracy")
    axes.set_xlim(0, 1.08)
    return figure


def _log_model(members: list[Member], weights: np.ndarray, class_names: list[str]) -> None:
    kept = [(f"member_{i}", m, w) for i, (m, w) in enumerate(zip(members, weights, strict=True)) if w > 0]
    mlflow.pyfunc.log_model(
        name=schema.MODEL,
        python_model=str(Path(ensemble_model.__file__)),
        artifacts={name: m.model_uri for name, m, _ in kept},
        model_config={
            "members": [name for name, _, _ in kept],
            "member_weights": [float(w) for _, _, w in kept],
            "class_names": class_names,
        },
        signature=writer.image_signature(len(class_names)),
        input_example=np.full((1, 32, 32, 3), 128, dtype=np.float32),
        metadata={"class_names": class_names},
        pip_requirements=[f"mlflow=={mlflow.__version__}", *_keras_requirements()],
    )


def _keras_requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]


def _print_summary(
    members: list[Member], weights: np.ndarray, scores: dict[str, list[float]], combined: dict, cfg: DictConfig
) -> None:
    labels = [m.label for m in members] + [f"ensemble ({cfg.method})"]
    width = max(map(len, labels))
    splits = list(scores)
    header = f"{'member':<{width}}  {'weight':>6}  " + "  ".join(f"{s + '_accuracy':>13}" for s in splits)
    lines = [header, "-" * len(header)]
    for i, (label, weight) in enumerate(zip(labels, [*weights, 1.0], strict=True)):
        values = [scores[s][i] if i < len(members) else combined[s].metrics()[f"{s}_accuracy"] for s in splits]
        lines.append(f"{label:<{width}}  {weight:>6.3f}  " + "  ".join(f"{v:>13.4f}" for v in values))
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def hydra_main(cfg: DictConfig) -> None:
    try:
        ensemble(cfg)
    except SimpsonsError as error:
        log.error("error: %s", error)
        sys.exit(2)


if __name__ == "__main__":
    hydra_main()
