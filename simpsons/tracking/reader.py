"""Reading runs back from MLflow: training runs, sweeps, their outputs and their models.

The read side: no TensorFlow, so `report` and `--help` answer fast.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from simpsons.errors import ConfigError
from simpsons.tracking import predictions, schema
from simpsons.tracking.predictions import Outputs

SEARCH_LIMIT = 50_000  # the most runs one MLflow search returns
SHORT_ID = 8  # the run ids report and the ensemble print; enough to find a run


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.experiment={name!r} does not exist in {client.tracking_uri}; train first")
    return experiment.experiment_id


def find_run(client: MlflowClient, run_id: str, label: str) -> Run:
    """A run by its id, or by the first characters of it (at least SHORT_ID), as report prints them;
    `label` names the argument in the error (`--run`, `RUN_ID`)."""
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        pass
    hint = f"give a run id (its first {SHORT_ID} characters are enough)"
    if len(run_id) >= SHORT_ID and re.fullmatch("[0-9a-f]+", run_id):  # a hex prefix: safe in a filter
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        found = client.search_runs(experiments, f"attributes.run_id LIKE '{run_id}%'", max_results=2)
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(f"{label} {run_id!r} starts more than one run id; {hint}, or more of it")
    raise ConfigError(f"{label} {run_id!r} is not a run in {client.tracking_uri}; {hint}")


def resolve_sweep(
    client: MlflowClient, experiment: str, sweep: str | None, experiment_key: str = "tracking.experiment="
) -> str | None:
    """A sweep's parent run id: as given, the newest sweep for 'latest', or None for no sweep.

    A sweep of another experiment is refused, naming it (`experiment_key`: how the command sets the
    experiment): an ensemble of it would be logged, and registered, beside another data set's runs.
    """
    if sweep is None:
        return None
    if sweep == "latest":
        found = client.search_runs(
            [experiment],
            f"tags.`{schema.RUN_TYPE}` = '{schema.SWEEP}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise ConfigError("sweep=latest, but the experiment has no sweep; run python -m simpsons.train -m ...")
        return found[0].info.run_id
    try:
        run = client.get_run(sweep)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"sweep={sweep!r} is not a run id; use a sweep's parent run id, latest or null") from error
    if run.data.tags.get(schema.RUN_TYPE) != schema.SWEEP:
        raise ConfigError(f"sweep={sweep!r} is not a sweep's parent run; use one, latest or null")
    if run.info.experiment_id != experiment:
        name = client.get_experiment(run.info.experiment_id).name
        raise ConfigError(f"sweep={sweep!r} is a sweep of experiment {name!r}; add {experiment_key}{name}")
    return sweep


def search(client: MlflowClient, experiment: str, sweep: str | None = None, where: str | None = None) -> list[Run]:
    """Every run of the experiment (one sweep's children, if given), oldest first."""
    clauses = [f"tags.`{schema.PARENT_RUN}` = '{sweep}'"] if sweep else []
    clauses += [where] if where else []
    try:
        return client.search_runs(
            [experiment], " AND ".join(clauses), order_by=["attributes.start_time ASC"], max_results=SEARCH_LIMIT
        )
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"filter={where!r} is not a valid MLflow search filter: {error.message}") from error


def run_type(run: Run) -> str:
    return run.data.tags.get(schema.RUN_TYPE, "")


def metric(run: Run, name: str) -> float | None:
    """The run's `name` as a person reads it: a training run's epoch curve (val_loss, val_accuracy,
    loss, accuracy) at the epoch it kept, `best_<name>`, not its latest value, the last epoch's; any
    other metric (and an ensemble's: it has no epochs) as logged. A run logged before best_<name>
    existed (issue 18) falls back to its latest value. A curve named as logged (epoch/val_loss, as
    the UI shows it) is the same curve."""
    curve = name.removeprefix(schema.CURVE_PREFIX)
    if curve in schema.EPOCH_CURVES and run_type(run) != schema.ENSEMBLE:
        kept = run.data.metrics.get(schema.kept(curve))
        if kept is not None:
            return kept
    return run.data.metrics.get(name) if name in run.data.metrics else run.data.metrics.get(curve)


def class_names(run: Run) -> list[str]:
    return json.loads(run.data.tags.get(schema.CLASS_NAMES, "[]"))


def outputs(run_id: str, split: str) -> Outputs | None:
    """What a run logged in predictions/<split>.csv, or None when it logged none."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=schema.predictions_csv(split), dst_path=scratch
            )
        except (OSError, mlflow.exceptions.MlflowException):
            return None
        return predictions.from_csv(Path(path).read_text())


def model_uri(run: Run) -> str:
    """The URI of the model a run logged (an MLflow 3 logged model)."""
    deleted = run.data.tags.get(schema.MODEL_DELETED)
    if deleted:  # keep_models or simpsons-gc (tracking/retention.py)
        raise ConfigError(f"run {run.info.run_id}'s model files were deleted ({deleted}); train it again to have one")
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    if not models:
        raise ConfigError(f"run {run.info.run_id} logged no model")
    return models[0].model_uri


def training_runs(client: MlflowClient, runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """The training runs among `runs`, each config counted once, and the older runs left out.

    A sweep's REUSED runs stand for the earlier run they point to. Of several FINISHED runs of
    the same config (same config hash: a rerun with reuse=false, or two sweeps at once), the
    latest counts. Runs that are not FINISHED are kept, for the caller to judge.
    """
    resolved = {}
    for run in runs:
        original = _original(client, run)
        if original is not None:
            resolved.setdefault(original.info.run_id, original)
    latest: dict[str, Run] = {}
    superseded = []
    for run in sorted(resolved.values(), key=lambda r: r.info.start_time, reverse=True):
        key = run.data.tags.get(schema.CONFIG_HASH) or run.info.run_id
        if run.info.status != "FINISHED":
            key = run.info.run_id
        if key in latest:
            superseded.append(run)
        else:
            latest[key] = run
    return sorted(latest.values(), key=lambda r: r.info.start_time), superseded


def _original(client: MlflowClient, run: Run) -> Run | None:
    kind = run_type(run)
    if kind == schema.TRAIN:
        return run
    if kind != schema.REUSED:
        return None
    try:
        return client.get_run(run.data.tags[schema.REUSED_RUN])
    except (KeyError, mlflow.exceptions.MlflowException):
        return None  # the original was deleted
