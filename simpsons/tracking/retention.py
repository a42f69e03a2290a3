"""Which training runs keep their model files: a sweep's (or an experiment's) best N by its monitor.

`keep_models=N` applies it when a sweep ends (simpsons/sweep_callback.py, and tracking/lifecycle.py
for a sweep that its last job ends); `simpsons-gc` applies it to an existing store. A run below the
best N keeps its metrics, curves, predictions, reports and confusion matrices; only its logged
model's files go, and the run and its logged model get the tag `simpsons.model_deleted` saying why.
Ensembles skip such runs (simpsons/ensembling/selection.py). No TensorFlow here.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModel, Run
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from simpsons.tracking import races, reader, schema

log = logging.getLogger(__name__)

# A run's monitor (its `monitor` param) -> the metric that ranks it, and which way is better: its kept
# epoch's best_*, or for a run logged before best_val_loss existed, its val_loss curve at best_epoch.
RANKED_BY = {"val_accuracy": ("best_val_accuracy", "max"), "val_loss": ("best_val_loss", "min")}
FALLBACK_MONITOR = "val_accuracy"  # runs of several monitors are ranked by what every run logs


@dataclass(frozen=True)
class Verdict:
    """One run of the pool: its rank, whether its model stays, and what deleting it frees."""

    run: Run
    score: float | None
    keep: bool
    reason: str  # why it keeps its model, or why it is deleted
    models: list[LoggedModel]  # its logged models whose files are still there
    size: int | None  # their bytes on a local store; None elsewhere

    @property
    def frees(self) -> bool:
        return not self.keep and bool(self.models)


def plan(client: MlflowClient, runs: list[Run], keep: int, scope: str) -> list[Verdict]:
    """Every FINISHED training run among `runs` (a sweep's jobs, REUSED ones standing for the run
    they reuse), best first: the best `keep` that still have a model keep it, the others do not.

    `scope` says where the ranking was made, for the tag (e.g. "sweep <id>"). A run whose model is
    registered in the Model Registry always keeps it: a version must stay loadable.
    """
    pool, _ = reader.training_runs(client, runs)
    pool = [run for run in pool if run.info.status == "FINISHED"]
    monitor = _common_monitor(pool)
    metric, direction = RANKED_BY[monitor]
    scored = [(run, _score(client, run, monitor)) for run in pool]
    sign = -1 if direction == "max" else 1
    scored.sort(key=lambda pair: (pair[1] is None, sign * pair[1] if pair[1] is not None else 0.0))
    verdicts, kept = [], 0
    for rank, (run, score) in enumerate(scored, start=1):
        models = _live_models(client, run)
        registered = _registered(client, run.info.run_id)
        if registered:
            verdicts.append(Verdict(run, score, True, f"registered as {registered}", models, _size(models)))
            continue
        if models and kept < keep:
            kept += 1
            verdicts.append(Verdict(run, score, True, f"rank {rank} by {metric}", models, _size(models)))
            continue
        reason = (
            f"keep_models={keep}: rank {rank} of {len(scored)} by {metric} ({direction}) in {scope}; "
            f"model files deleted {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )
        verdicts.append(Verdict(run, score, False, reason, models, _size(models)))
    return verdicts


def apply(client: MlflowClient, verdicts: list[Verdict]) -> int:
    """Delete the model files of every run not kept; returns how many runs lost theirs.

    The run is tagged first: should the deletion stop half-way, ensembles already skip it, and the
    next `simpsons-gc` finishes it. Each run's deletion runs under the store's lock on SQLite, and
    tolerates files another process has just deleted elsewhere, so that two at once both succeed.
    """
    done = 0
    for verdict in verdicts:
        if not verdict.frees:
            continue
        run_id = verdict.run.info.run_id
        races.shared_write(client.tracking_uri, lambda v=verdict: _delete(client, v), f"delete models of {run_id}")
        done += 1
    return done


def delete_sweep_models(client: MlflowClient, sweep_run_id: str) -> None:
    """At a sweep's end: apply its keep_models (a tag of its parent run, set at its start); best
    effort, the sweep has ended already."""
    try:
        sweep = client.get_run(sweep_run_id)
        keep = sweep.data.tags.get(schema.KEEP_MODELS, "all")
        if keep == "all":
            return
        jobs = reader.search(client, sweep.info.experiment_id, sweep_run_id)
        verdicts = plan(client, jobs, int(keep), f"sweep {sweep_run_id}")
        deleted = apply(client, verdicts)
        if deleted:
            freed = total_size([v for v in verdicts if not v.keep])
            log.info(
                "keep_models=%s: kept the models of the best %s run(s), deleted those of %d other(s)%s",
                keep,
                keep,
                deleted,
                f" ({human_size(freed)})" if freed is not None else "",
            )
    except Exception as error:  # any store error: SQLAlchemy, HTTP, MLflow's own
        log.warning("could not apply keep_models to sweep run %s: %s", sweep_run_id, error)


def total_size(verdicts: list[Verdict]) -> int | None:
    """The bytes the verdicts' model files take; None when any lies where it cannot be measured."""
    sizes = [v.size for v in verdicts if v.models]
    return None if any(size is None for size in sizes) else sum(sizes)


def human_size(size: float) -> str:
    """Bytes in binary units, as `du -h` counts them (a ResNet50V2's model: 90.9 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _common_monitor(runs: list[Run]) -> str:
    """The monitor every run kept its epoch by; runs of several (monitor swept) by val_accuracy."""
    monitors = {run.data.params.get("monitor", FALLBACK_MONITOR) for run in runs}
    return monitors.pop() if len(monitors) == 1 and monitors <= RANKED_BY.keys() else FALLBACK_MONITOR


def _score(client: MlflowClient, run: Run, monitor: str) -> float | None:
    """The run's kept epoch's value of its monitor; None when it has none (then it ranks last)."""
    metrics = run.data.metrics
    if monitor == "val_accuracy":
        value = metrics.get("best_val_accuracy")
    elif (value := metrics.get("best_val_loss")) is None:  # logged by runs since issue 18; before, the curve's
        best = metrics.get("best_epoch")
        history = client.get_metric_history(run.info.run_id, "val_loss") if best is not None else []
        value = next((m.value for m in history if m.step == int(best)), None)
    return value if value is not None and math.isfinite(value) else None


def _live_models(client: MlflowClient, run: Run) -> list[LoggedModel]:
    """The run's logged models that are not deleted (MLflow's search leaves out the deleted)."""
    return list(
        client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
    )


def _registered(client: MlflowClient, run_id: str) -> str | None:
    """'NAME version N' when a registered model version was made from the run's model."""
    try:
        found = client.search_model_versions(f"run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None  # a store without a model registry
    return ", ".join(f"{v.name} version {v.version}" for v in found) or None


def _size(models: list[LoggedModel]) -> int | None:
    total = 0
    for model in models:
        folder = _local_folder(model.artifact_location)
        if folder is None:
            return None
        total += sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0
    return total


def _local_folder(uri: str) -> Path | None:
    if uri.startswith("file:") or "://" not in uri:
        return Path(local_file_uri_to_path(uri))
    return None


def _delete(client: MlflowClient, verdict: Verdict) -> None:
    """Tag the run, then delete each logged model's files and mark the logged model deleted."""
    client.set_tag(verdict.run.info.run_id, schema.MODEL_DELETED, verdict.reason)
    for model in verdict.models:
        if not _still_there(client, model.model_id):
            continue  # another process has deleted it meanwhile
        client.set_logged_model_tags(model.model_id, {schema.MODEL_DELETED: verdict.reason})
        folder = _local_folder(model.artifact_location)
        if folder is not None:
            # The logged model's folder (models/<id>/: its artifacts/ and nothing else), not only
            # its files: an empty folder per deleted model would still be counted as a model.
            shutil.rmtree(folder.parent if folder.name == "artifacts" else folder, ignore_errors=True)
        else:
            _delete_remote(model.artifact_location)
        try:
            client.delete_logged_model(model.model_id)
        except mlflow.exceptions.MlflowException:
            if _still_there(client, model.model_id):
                raise  # not another process's deletion meanwhile


def _still_there(client: MlflowClient, model_id: str) -> bool:
    """Whether the logged model is not deleted yet (its files may be, by a deletion that stopped half-way)."""
    try:
        client.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _delete_remote(uri: str) -> None:
    """The files behind a server's or a cloud store's artifact URI; already gone is no error."""
    try:
        get_artifact_repository(uri).delete_artifacts()
    except (OSError, mlflow.exceptions.MlflowException) as error:
        if "not found" not in str(error).lower() and "does not exist" not in str(error).lower():
            raise
