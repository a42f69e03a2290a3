"""`python -m simpsons.ensemble`: the top-N training runs' softmax outputs, averaged, as a new run.

Scores come from the outputs each run logged (predictions/<split>.csv), so no model is reloaded
to score; the logged ensemble model bundles the members' models for prediction and serving.
"""

from __future__ import annotations

import logging
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

from simpsons import ensemble_model, runs, tracking
from simpsons.config import register_resolvers
from simpsons.ensembling import greedy_weights, weighted_mean
from simpsons.errors import ConfigError, SimpsonsError
from simpsons.evaluation import Evaluation

log = logging.getLogger("simpsons.ensemble")
register_resolvers()
CHOICES = {"method": ("mean", "greedy"), "weights": ("equal", "val_accuracy"), "direction": ("max", "min")}


@dataclass(frozen=True)
class Member:
    run: Run
    val: runs.Outputs
    test: runs.Outputs | None

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
    if not isinstance(cfg.top_n, int) or cfg.top_n < 1:
        raise ConfigError(f"top_n={cfg.top_n!r} is invalid; expected an integer >= 1")


def select_members(candidates: list[Run], cfg: DictConfig) -> tuple[list[Member], list[str]]:
    """The best top_n runs that can be averaged together, and a line for each run left out."""
    ranked, left_out = _rank(candidates, cfg.metric, cfg.direction)
    members: list[Member] = []
    for run in ranked:
        if len(members) == cfg.top_n:
            break
        reason = _mismatch(run, members, cfg.one_per_backbone)
        val = None if reason else runs.outputs(run.info.run_id, "val")
        if reason is None and val is None:
            reason = "logged no validation outputs"
        if reason is None and members and val.names != members[0].val.names:
            reason = "its validation files differ"
        if reason:
            left_out.append(f"{run.info.run_name} ({run.info.run_id[:8]}): {reason}")
            continue
        members.append(Member(run, val, runs.outputs(run.info.run_id, "test")))
    if not members:
        raise ConfigError(f"no finished training run with {cfg.metric} to ensemble (see the lines above)")
    return members, left_out


def _rank(candidates: list[Run], metric: str, direction: str) -> tuple[list[Run], list[str]]:
    eligible, left_out = [], []
    for run in candidates:
        kind = runs.run_type(run)
        reason = (
            "a sweep's parent run" if kind == "sweep"
            else "an ensemble run" if kind == "ensemble"
            else "not a training run" if kind != "train"
            else f"status {run.info.status}" if run.info.status != "FINISHED"
            else f"has no metric {metric}" if metric not in run.data.metrics
            else None
        )  # fmt: skip
        if reason:
            left_out.append(f"{run.info.run_name} ({run.info.run_id[:8]}): {reason}")
        else:
            eligible.append(run)
    sign = -1 if direction == "max" else 1
    return sorted(eligible, key=lambda run: sign * run.data.metrics[metric]), left_out


def _mismatch(run: Run, members: list[Member], one_per_backbone: bool) -> str | None:
    """Why `run` cannot join `members` (same classes, data and validation split are required)."""
    if not members:
        return None
    first = members[0].run
    if runs.class_names(run) != runs.class_names(first):
        return "its class names differ"
    if run.data.tags.get("data.fingerprint") != first.data.tags.get("data.fingerprint"):
        return "its data fingerprint differs"
    for key in ("data.split_seed", "data.val_split"):
        if run.data.params.get(key) != first.data.params.get(key):
            return f"its {key} differs"
    backbone = run.data.params.get("backbone.name")
    if one_per_backbone and backbone in {m.backbone for m in members}:
        return f"a better {backbone} run is already in"
    return None


def member_weights(members: list[Member], cfg: DictConfig, val_labels: np.ndarray) -> np.ndarray:
    if cfg.method == "greedy":
        return greedy_weights([m.val.probabilities for m in members], val_labels)
    if cfg.weights == "val_accuracy":
        return np.array([m.run.data.metrics["val_accuracy"] for m in members])
    return np.ones(len(members))


def ensemble(cfg: DictConfig) -> str:
    """Select, combine, score and log; returns the ensemble's MLflow run id."""
    check_options(cfg)
    client = MlflowClient(tracking.configure(cfg.tracking.uri))
    experiment = runs.experiment_id(client, cfg.tracking.experiment)
    sweep = runs.resolve_sweep(client, experiment, cfg.sweep)
    members, left_out = select_members(runs.search(client, experiment, sweep, cfg.filter), cfg)
    for line in left_out:
        log.info("left out %s", line)
    if len(members) < cfg.top_n:
        log.warning("only %d eligible run(s) for top_n=%d: using %d", len(members), cfg.top_n, len(members))
    class_names = runs.class_names(members[0].run)
    weights, combined, scores = combine(members, cfg, class_names)

    first = members[0].run
    tags = {
        tracking.RUN_TYPE: "ensemble",
        "simpsons.sweep": sweep or "",
        "class_names": first.data.tags.get("class_names", "[]"),
        "data.fingerprint": first.data.tags.get("data.fingerprint", ""),
        "members": ",".join(m.run.info.run_id for m in members),
        **tracking.git_tags(),
    }
    name = f"ensemble {cfg.method} of {np.count_nonzero(weights)}"
    with tracking.tracked_run(experiment, name, parent_run_id=None, tags=tags) as run:
        _log_params(cfg, members, weights, sweep)
        for split, evaluation in combined.items():
            tracking.log_evaluation(evaluation, class_names)
            gain = evaluation.metrics()[f"{split}_accuracy"] - max(scores[split])
            mlflow.log_metric(f"{split}_accuracy_gain", gain)
        mlflow.log_dict(_member_table(members, weights, scores), "members.json")
        mlflow.log_figure(_comparison_figure(members, scores, combined), "evaluation/members_vs_ensemble.png")
        _log_model(members, weights, class_names)
        _print_summary(members, weights, scores, combined, cfg)
        return run.info.run_id


def combine(
    members: list[Member], cfg: DictConfig, class_names: list[str]
) -> tuple[np.ndarray, dict[str, Evaluation], dict[str, list[float]]]:
    """Member weights, the ensemble's evaluation per split, and each member's accuracy per split.

    Test is scored only when every member logged test outputs.
    """
    splits = ["val"] + (["test"] if all(m.test for m in members) else [])
    labels = {split: _label_indices(getattr(members[0], split), class_names) for split in splits}
    weights = member_weights(members, cfg, labels["val"])
    weights = weights / weights.sum()
    combined = {
        split: Evaluation(
            split,
            getattr(members[0], split).names,
            labels[split],
            weighted_mean([getattr(m, split).probabilities for m in members], weights),
        )
        for split in splits
    }
    scores = {split: _member_accuracies(members, split, labels[split]) for split in splits}
    return weights, combined, scores


def _label_indices(outputs: runs.Outputs, class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in outputs.labels], dtype=np.int32)


def _member_accuracies(members: list[Member], split: str, labels: np.ndarray) -> list[float]:
    return [float(np.mean(getattr(m, split).probabilities.argmax(axis=1) == labels)) for m in members]


def _log_params(cfg: DictConfig, members: list[Member], weights: np.ndarray, sweep: str | None) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["tracking"]["uri"] = tracking.redact_uri(resolved["tracking"]["uri"])
    used = int(np.count_nonzero(weights))
    mlflow.log_params(
        tracking.flatten(resolved) | {"sweep": sweep, "num_candidates": len(members), "num_members": used}
    )
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
        name="model",
        python_model=str(Path(ensemble_model.__file__)),
        artifacts={name: runs.model_uri(m.run) for name, m, _ in kept},
        model_config={
            "members": [name for name, _, _ in kept],
            "member_weights": [float(w) for _, _, w in kept],
            "class_names": class_names,
        },
        signature=tracking.image_signature(len(class_names)),
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
