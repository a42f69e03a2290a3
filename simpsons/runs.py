"""Reading runs back from MLflow: training runs, sweeps, their outputs and their models."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons.errors import ConfigError
from simpsons.evaluation import read_predictions_csv
from simpsons.tracking import RUN_TYPE

SEARCH_LIMIT = 50_000  # the most runs one MLflow search returns


@dataclass(frozen=True)
class Outputs:
    """The softmax outputs a run logged for one split, with the file names and true labels."""

    names: list[str]
    labels: list[str]
    probabilities: np.ndarray


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment={name!r} does not exist in {client.tracking_uri}; train first")
    return experiment.experiment_id


def resolve_sweep(client: MlflowClient, experiment: str, sweep: str | None) -> str | None:
    """A sweep's parent run id: as given, the newest sweep for 'latest', or None for no sweep."""
    if sweep is None:
        return None
    if sweep == "latest":
        found = client.search_runs(
            [experiment], f"tags.`{RUN_TYPE}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not found:
            raise ConfigError("sweep=latest, but the experiment has no sweep; run python -m simpsons.train -m ...")
        return found[0].info.run_id
    try:
        run = client.get_run(sweep)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"sweep={sweep!r} is not a run id; use a sweep's parent run id, latest or null") from error
    if run.data.tags.get(RUN_TYPE) != "sweep":
        raise ConfigError(f"sweep={sweep!r} is not a sweep's parent run; use one, latest or null")
    return sweep


def search(client: MlflowClient, experiment: str, sweep: str | None = None, where: str | None = None) -> list[Run]:
    """Every run of the experiment (one sweep's children, if given), oldest first."""
    clauses = [f"tags.mlflow.parentRunId = '{sweep}'"] if sweep else []
    clauses += [where] if where else []
    try:
        return client.search_runs(
            [experiment], " AND ".join(clauses), order_by=["attributes.start_time ASC"], max_results=SEARCH_LIMIT
        )
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"filter={where!r} is not a valid MLflow search filter: {error.message}") from error


def run_type(run: Run) -> str:
    return run.data.tags.get(RUN_TYPE, "")


def class_names(run: Run) -> list[str]:
    return json.loads(run.data.tags.get("class_names", "[]"))


def outputs(run_id: str, split: str) -> Outputs | None:
    """What a run logged in predictions/<split>.csv, or None when it logged none."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"predictions/{split}.csv", dst_path=scratch
            )
        except (OSError, mlflow.exceptions.MlflowException):
            return None
        return Outputs(*read_predictions_csv(Path(path).read_text()))


def model_uri(run: Run) -> str:
    """The URI of the model a run logged (an MLflow 3 logged model)."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    if not models:
        raise ConfigError(f"run {run.info.run_id} logged no model")
    return models[0].model_uri
