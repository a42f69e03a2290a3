"""Everything MLflow: the store, the experiment, run names, and what a training run logs.

A run is never left RUNNING: `tracked_run` ends it FINISHED, FAILED (error logged) or KILLED.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from omegaconf import DictConfig, OmegaConf

from simpsons.config import PROJECT_ROOT
from simpsons.data import DataSet
from simpsons.errors import ConfigError
from simpsons.evaluation import Evaluation, confusion_matrix_figure, predictions_csv, report_text

log = logging.getLogger(__name__)

RUN_TYPE = "simpsons.run_type"  # "train" or "sweep"
SWEEP_DIR = "simpsons.sweep_dir"
SQLITE_PREFIX = "sqlite:///"


def configure(uri: str) -> str:
    """Point MLflow at `uri`, with a relative SQLite path made absolute; returns the URI used."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        uri = SQLITE_PREFIX + str(Path(uri.removeprefix(SQLITE_PREFIX)).resolve())
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating it if needed (safe when parallel jobs race to create it).

    With a SQLite store, artifacts go to mlruns/ beside the database, whatever the working
    directory; a server or other database keeps its own artifact root.
    """
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"tracking.experiment={name!r} is deleted in {redact_uri(uri)}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
        )
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith(SQLITE_PREFIX):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (Path(uri.removeprefix(SQLITE_PREFIX)).parent / "mlruns" / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_sweep_run(experiment_id: str, sweep_dir: Path) -> str | None:
    """The parent run simpsons.sweep.MlflowSweepCallback opened for this multirun, if any."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_TYPE}` = 'sweep' AND tags.`{SWEEP_DIR}` = '{sweep_dir.resolve()}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def run_name(backbone: str, optimizer: str, overrides: list[str]) -> str:
    """E.g. 'resnet50v2-rmsprop lr=3e-4 image_size=180': the choices, then the other overrides."""
    extras = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in ("backbone", "optimizer") or "/" in value or key.startswith(("hydra", "tracking")):
            continue
        extras.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join([f"{backbone}-{optimizer}", *extras])


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def git_tags() -> dict[str, str]:
    """The project's git commit and whether tracked files differ from it ('unknown' outside git)."""
    commit = _git("rev-parse", "HEAD").strip()
    if not commit:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def _git(*args: str) -> str:
    """git's output in the project folder; empty where git or the repository is missing."""
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


@contextmanager
def tracked_run(experiment_id: str, name: str, parent_run_id: str | None, tags: dict[str, str]) -> Iterator[Run]:
    """An active MLflow run that ends FINISHED, FAILED (with the error logged) or KILLED (Ctrl-C)."""
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id, tags=tags)
    status = RunStatus.FINISHED
    try:
        yield run
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        _record_error("interrupted", None)
        raise
    except BaseException as error:
        status = RunStatus.FAILED
        _record_error(f"{type(error).__name__}: {error}", error)
        raise
    finally:
        mlflow.end_run(RunStatus.to_string(status))


def _record_error(message: str, error: BaseException | None) -> None:
    """Best effort: the run must still be ended if the store cannot take the error."""
    try:
        mlflow.set_tag("error", message[:5000])
        if error is not None:
            mlflow.log_text("".join(traceback.format_exception(error)), "error.txt")
    except Exception:
        log.exception("could not log the error to MLflow")


def log_config(cfg: DictConfig, hydra_dir: Path | None) -> None:
    """The flattened resolved config as params and as config.yaml, and Hydra's .hydra/*.yaml files.

    With uncommitted changes to tracked files, their diff too (git_diff.patch), so that the
    commit tag plus the diff reproduce the code.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["tracking"]["uri"] = redact_uri(resolved["tracking"]["uri"])
    mlflow.log_params(flatten(resolved))
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), "hydra")
    diff = _git("diff", "HEAD")
    if diff:
        mlflow.log_text(diff, "git_diff.patch")


def redact_uri(uri: str) -> str:
    """The URI without a password (postgresql://user:secret@host -> postgresql://user:***@host)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def log_data(data: DataSet) -> None:
    mlflow.log_params(
        {
            "data.num_classes": len(data.class_names),
            "data.train_images": len(data.train),
            "data.val_images": len(data.val),
            "data.test_images": len(data.test) if data.test else 0,
            "data.skipped_files": len(data.skipped),
        }
    )
    mlflow.set_tags({"data.fingerprint": data.fingerprint, "class_names": json.dumps(data.class_names)})
    mlflow.log_dict(data.class_names, "class_names.json")
    if data.skipped:
        mlflow.log_text("".join(f"{s.path}\t{s.reason}\n" for s in data.skipped), "data/skipped_files.tsv")
    if data.dropped_classes:
        mlflow.log_dict(data.dropped_classes, "data/dropped_classes.json")
    if data.unknown_test_classes:
        mlflow.log_dict(data.unknown_test_classes, "data/unknown_test_classes.json")


def log_evaluation(evaluation: Evaluation, class_names: list[str], with_metrics: bool = True) -> None:
    """The split's metrics, each file's softmax outputs, the per-class report and the confusion matrix.

    with_metrics=False where the metrics are logged already (a training run's val_* curves).
    """
    split = evaluation.split
    if with_metrics:
        mlflow.log_metrics(evaluation.metrics())
    mlflow.log_text(predictions_csv(evaluation, class_names), f"predictions/{split}.csv")
    mlflow.log_text(report_text(evaluation, class_names), f"evaluation/{split}_report.txt")
    mlflow.log_figure(confusion_matrix_figure(evaluation, class_names), f"evaluation/{split}_confusion_matrix.png")


def log_model(model: keras.Model, input_example: np.ndarray, class_names: list[str]) -> None:
    """The Keras model, taking raw RGB images of any size, loadable with mlflow.pyfunc.load_model.

    MLflow's serving-input check (reload the saved model, predict on the input example) is off:
    it cost 8 of a cached run's 20 s with a 95 MB backbone, and the tests reload logged models
    through pyfunc and compare their softmax with the trained one's.
    """
    Model.log(  # what mlflow.keras.log_model does, through the flavor shim below
        artifact_path=None,
        name="model",
        flavor=_KerasFlavor,
        model=model,
        signature=image_signature(len(class_names)),
        input_example=input_example,
        metadata={"class_names": class_names},
        pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
        validate_serving_input=False,
    )


def image_signature(num_classes: int) -> ModelSignature:
    """Batches of float32 RGB images of any size in, one probability per class out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def _save_keras_model(path: str, **kwargs: Any) -> None:
    """mlflow.keras.save_model, creating the model folder first.

    mlflow 3.17.2's mlflow.keras.save_model writes the input example before it creates its
    folder, so mlflow.keras.log_model(..., input_example=...) fails with FileNotFoundError.
    """
    Path(path).mkdir(parents=True, exist_ok=True)
    kwargs.pop("validate_serving_input", None)  # Model.log's own option, not save_model's
    mlflow.keras.save_model(path=path, **kwargs)


_KerasFlavor = SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)
