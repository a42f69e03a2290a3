"""What an ensemble run logs: its config and candidates, its members' data sets, its evaluations, a members
table and chart, its model, and its metrics.

The metrics are logged once, after the model, with its model id and the data set each was scored
on (validation or test, the members' own dataset inputs): the run page, the model page and the Models
tab show the same values, and the model page lists the data sets it was scored on.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.entities import Dataset, DatasetInput, Metric
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from simpsons import plots
from simpsons.config import flatten
from simpsons.ensembling import charts
from simpsons.ensembling.scoring import Ensemble
from simpsons.settings import EnsembleSettings
from simpsons.tracking import races, reader, schema, writer

SERVED_MODEL = Path(__file__).with_name("served_model.py")  # logged as code, never imported here
INPUT_EXAMPLE = np.full((1, 32, 32, 3), 128, dtype=np.float32)


def log_params(cfg: EnsembleSettings, ensemble: Ensemble, sweep: str | None) -> None:
    """The resolved config, the sweep, and one `member_<i>` line per member (run name and id, score, weight)."""
    resolved = writer.resolved_config(cfg.container())
    counts = {"sweep": sweep, "num_candidates": len(ensemble.candidates), "num_members": len(ensemble.members)}
    mlflow.log_params(flatten(resolved) | counts)
    for i, (member, weight) in enumerate(ensemble.members):
        value = reader.metric(member.run, cfg.metric)
        described = f"{member.run.info.run_name} (run {member.run_id}) {cfg.metric}={value:.4f} w={weight:.4f}"
        mlflow.log_param(f"member_{i}", described)


def log_dataset_inputs(client: MlflowClient, run_id: str, ensemble: Ensemble) -> dict[str, Dataset]:
    """The members' dataset inputs (they share them: same data, split and files), as the ensemble's;
    returns them by context (train, validation, test)."""
    first = client.get_run(ensemble.candidates[0].run_id)
    inputs = list(first.inputs.dataset_inputs) if first.inputs is not None else []
    if inputs:  # the same rows every member and other ensembles link: see races.py
        races.shared_write(client.tracking_uri, lambda: client.log_inputs(run_id, datasets=inputs), "dataset inputs")
    return {_context(found): found.dataset for found in inputs}


def _context(found: DatasetInput) -> str:
    return next((tag.value for tag in found.tags if tag.key == "mlflow.data.context"), "")


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], model_id: str, datasets: dict[str, Dataset]
) -> None:
    """The ensemble's metrics, on the run and its model, each with the data set it was scored on."""
    now = int(time.time() * 1000)
    found = []
    for key, value in metrics.items():
        dataset = datasets.get(_scored_on(key))
        named = {"dataset_name": dataset.name, "dataset_digest": dataset.digest} if dataset else {}
        found.append(Metric(key, value, now, 0, model_id=model_id, **named))
    client.log_batch(run_id, metrics=found)


def _scored_on(key: str) -> str:
    """The dataset context a metric was computed on: test_* on test; the others (val_*, best_val_accuracy,
    the temperature, fitted on validation) on validation."""
    return schema.DATASET_CONTEXTS["test"] if key.startswith("test_") else schema.DATASET_CONTEXTS["val"]


def log_results(ensemble: Ensemble, class_names: list[str], chart_title: str) -> dict[str, float]:
    """Per split: outputs, report, confusion matrix; the candidates table and the members-vs-ensemble
    chart. Returns the metrics, for log_metrics once the model is logged: per split, the scores and
    the gain over the best candidate; best_val_accuracy and best_val_loss (= val_accuracy, val_loss: an
    ensemble has no epochs), so that ensembles rank and show in the runs table's best_* columns with
    training runs; the calibration errors (and temperature)."""
    metrics: dict[str, float] = {}
    figures: dict[str, plots.Drawing] = {}
    for split, evaluation in ensemble.evaluations.items():
        writer.log_evaluation(evaluation, class_names, figures, with_metrics=False)
        metrics |= evaluation.metrics() | {f"{split}_accuracy_gain": ensemble.gain(split)}
    metrics |= {schema.kept(name): metrics[name] for name in ("val_accuracy", "val_loss") if name in metrics}
    metrics |= ensemble.calibration.metrics()
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


def member_rows(ensemble: Ensemble, metric: str) -> list[dict]:
    """One row per member, best-ranked first: its run name, run id, links, weight and scores (`metric` as
    its run logged it, and its accuracy on each split from its logged outputs)."""
    rows = []
    for i, (candidate, weight) in enumerate(zip(ensemble.candidates, ensemble.weights, strict=True)):
        if weight <= 0:
            continue
        run = candidate.run
        rows.append(
            {
                "run_name": run.info.run_name,
                "run_id": run.info.run_id,
                "link": f"runs:/{run.info.run_id}",
                "ui": f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
                "backbone": candidate.backbone,
                "weight": float(weight),
                metric: reader.metric(run, metric),
                **{f"{split}_accuracy": ensemble.accuracies[split][i] for split in ensemble.splits},
            }
        )
    return rows


def log_members(rows: list[dict]) -> None:
    """members.json and members.csv: the table of member_rows."""
    mlflow.log_dict(rows, schema.MEMBERS_JSON)
    table = io.StringIO()
    out = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    out.writeheader()
    out.writerows(rows)
    mlflow.log_text(table.getvalue(), schema.MEMBERS_CSV)


def chart_labels(ensemble: Ensemble) -> list[str]:
    """Each candidate by its run name; with its short run id where two candidates share a name."""
    names = [c.run.info.run_name for c in ensemble.candidates]
    return [
        name if names.count(name) == 1 else f"{name} ({c.run_id[:8]})"
        for c, name in zip(ensemble.candidates, names, strict=True)
    ]


def members_chart(ensemble: Ensemble, title: str) -> Figure:
    split = ensemble.chart_split
    members = [i for i, weight in enumerate(ensemble.weights) if weight > 0]
    labels = chart_labels(ensemble)
    return charts.members_vs_ensemble(
        [labels[i] for i in members],
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
        pip_requirements=[f"mlflow=={mlflow.__version__}", *writer.keras_requirements()],
    )
