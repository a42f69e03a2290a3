"""What an ensemble run logs: its config and candidates, its evaluations and metrics, a chart, its model.

The metrics are all logged before the model, at step 0: MLflow links a run's step-0 metrics to the
model logged at step 0, so the model page (the Models tab) shows the ensemble's final scores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.models.model import ModelInfo

from simpsons import plots
from simpsons.config import flatten
from simpsons.ensembling import charts
from simpsons.ensembling.scoring import Ensemble
from simpsons.settings import EnsembleSettings
from simpsons.tracking import schema, writer

SERVED_MODEL = Path(__file__).with_name("served_model.py")  # logged as code, never imported here
INPUT_EXAMPLE = np.full((1, 32, 32, 3), 128, dtype=np.float32)


def log_params(cfg: EnsembleSettings, ensemble: Ensemble, sweep: str | None) -> None:
    """The resolved config, the sweep, and one `member_<i>` line per member (run, backbone, score, weight)."""
    resolved = writer.resolved_config(cfg.container())
    counts = {"sweep": sweep, "num_candidates": len(ensemble.candidates), "num_members": len(ensemble.members)}
    mlflow.log_params(flatten(resolved) | counts)
    for i, (member, weight) in enumerate(ensemble.members):
        value = member.run.data.metrics[cfg.metric]
        mlflow.log_param(f"member_{i}", f"{member.run_id} {member.backbone} {cfg.metric}={value:.4f} w={weight:.4f}")


def log_results(ensemble: Ensemble, class_names: list[str], chart_title: str) -> dict[str, float]:
    """Per split: metrics, outputs, report, confusion matrix and the gain over the best candidate;
    best_val_accuracy (= val_accuracy: an ensemble has no epochs), so that ensembles rank with
    training runs; the calibration errors (and temperature); the candidates table and the
    members-vs-ensemble chart. Returns the metrics."""
    metrics: dict[str, float] = {}
    figures: dict[str, plots.Drawing] = {}
    for split, evaluation in ensemble.evaluations.items():
        writer.log_evaluation(evaluation, class_names, figures, with_metrics=False)
        metrics |= evaluation.metrics() | {f"{split}_accuracy_gain": ensemble.gain(split)}
    metrics["best_val_accuracy"] = metrics["val_accuracy"]
    metrics |= ensemble.calibration.metrics()
    mlflow.log_metrics(metrics)
    mlflow.log_dict(candidate_table(ensemble), schema.CANDIDATES_JSON)
    mlflow.log_figure(members_chart(ensemble, chart_title), schema.MEMBERS_CHART)
    writer.log_figures(figures)  # the confusion matrices, drawn in the figure worker meanwhile
    return metrics


def candidate_table(ensemble: Ensemble) -> list[dict]:
    return [
        {
            "run_id": c.run_id,
            "run_name": c.run.info.run_name,
            "backbone": c.backbone,
            "weight": float(w),
            "member": bool(w > 0),
            **{f"{split}_accuracy": ensemble.accuracies[split][i] for split in ensemble.splits},
            **calibration.metrics(),
        }
        for i, (c, w, calibration) in enumerate(
            zip(ensemble.candidates, ensemble.weights, ensemble.calibrations, strict=True)
        )
    ]


def members_chart(ensemble: Ensemble, title: str) -> Figure:
    split = ensemble.chart_split
    members = [i for i, weight in enumerate(ensemble.weights) if weight > 0]
    return charts.members_vs_ensemble(
        [ensemble.candidates[i].label for i in members],
        [ensemble.accuracies[split][i] for i in members],
        ensemble.accuracy(split),
        split,
        title,
    )


def log_model(ensemble: Ensemble, class_names: list[str], name: str) -> ModelInfo:
    """The pyfunc model that averages the members' logged Keras models, named `name`; with a temperature
    (calibrate=true), it scales the average as the logged outputs were."""
    members = {f"member_{i}": (member, weight) for i, (member, weight) in enumerate(ensemble.members)}
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(SERVED_MODEL),
        artifacts={key: member.model_uri for key, (member, _) in members.items()},
        model_config={
            "members": list(members),
            "member_weights": [weight for _, weight in members.values()],
            "temperature": ensemble.calibration.temperature,
            "class_names": class_names,
        },
        signature=writer.image_signature(len(class_names)),
        input_example=INPUT_EXAMPLE,
        metadata={"class_names": class_names},
        pip_requirements=[f"mlflow=={mlflow.__version__}", *_keras_requirements()],
    )


def _keras_requirements() -> list[str]:
    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
