"""What a training run logs: its config, its data, its epochs, its evaluations and its Keras model.

The write side: it imports Keras (the model flavor), so the read side never imports it. It
takes plain values, or objects that have the attributes named by the protocols below (a DataSet,
an Evaluation): it imports nothing from the modules that make them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import tempfile
from collections.abc import Sequence, Sized
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import keras
import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec
from omegaconf import OmegaConf

from simpsons import plots, signals
from simpsons.tracking import predictions, provenance, races, schema
from simpsons.tracking.store import redact_uri

log = logging.getLogger(__name__)

# The dataset digest MLflow shows: the data fingerprint's first hex digits, as the training log
# prints it (MLflow keeps at most 36 characters; the whole fingerprint is in the profile and the tag).
DATASET_DIGEST_CHARS = 12


class Skipped(Protocol):
    path: str
    reason: str


class Data(Protocol):
    """What is logged of a run's data (simpsons.data.DataSet has it)."""

    class_names: list[str]
    fingerprint: str
    train: Sized
    val: Sized
    test: Sized | None
    skipped: Sequence[Skipped]
    dropped_classes: dict[str, int]
    unknown_test_classes: dict[str, int]


class Scores(Protocol):
    """What is logged of a split's evaluation (simpsons.evaluation.Evaluation has it)."""

    split: str
    names: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray

    def metrics(self) -> dict[str, float]: ...

    def report(self, class_names: list[str]) -> str: ...


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config (plain data, e.g. TrainSettings.container()), with any password in the
    tracking URI masked."""
    resolved = {**config, "tracking": {**config["tracking"]}}
    resolved["tracking"]["uri"] = redact_uri(resolved["tracking"]["uri"])
    return resolved


def log_config(config: dict[str, Any], hydra_dir: Path | None) -> None:
    """The resolved config (plain data), flattened as params and whole as config.yaml, and Hydra's
    .hydra/*.yaml files.

    With uncommitted changes to tracked files, their diff too (git_diff.patch), so that the
    commit tag plus the diff reproduce the code.
    """
    resolved = resolved_config(config)
    mlflow.log_params(_not_yet_logged(provenance.params(resolved)))
    mlflow.log_text(OmegaConf.to_yaml(resolved), schema.CONFIG_YAML)
    if hydra_dir is not None and hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), schema.HYDRA_FILES)
    diff = provenance.git_diff()
    if diff:
        mlflow.log_text(diff, schema.GIT_DIFF)


def _not_yet_logged(params: dict[str, Any]) -> dict[str, Any]:
    """The params the active run does not have yet. A resumed run has them all from its first start,
    and MLflow refuses a changed value: keys outside the config hash (tracking.*, cache_dir, reuse,
    where the data lies) keep the first start's values; config.yaml has this start's."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    return {key: value for key, value in params.items() if key not in logged}


def log_data(data: Data) -> None:
    mlflow.log_params(
        {
            "data.num_classes": len(data.class_names),
            "data.train_images": len(data.train),
            "data.val_images": len(data.val),
            "data.test_images": len(data.test) if data.test else 0,
            "data.skipped_files": len(data.skipped),
        }
    )
    mlflow.set_tags({schema.DATA_FINGERPRINT: data.fingerprint, schema.CLASS_NAMES: json.dumps(data.class_names)})
    mlflow.log_dict(data.class_names, schema.CLASS_NAMES_JSON)
    if data.skipped:
        mlflow.log_text("".join(f"{s.path}\t{s.reason}\n" for s in data.skipped), schema.SKIPPED_FILES)
    if data.dropped_classes:
        mlflow.log_dict(data.dropped_classes, schema.DROPPED_CLASSES)
    if data.unknown_test_classes:
        mlflow.log_dict(data.unknown_test_classes, schema.UNKNOWN_TEST_CLASSES)


PARAM_COUNTS = "model/params/"  # as lightning-hydra-template logs them: total, trainable, non_trainable


def log_param_counts(model: keras.Model, phase: str = "") -> None:
    """The model's parameter counts as params: `model/params/total`, `.../trainable` and
    `.../non_trainable` (the head phase's: the backbone frozen); a fine-tuning phase adds its own
    `model/params/trainable_finetune`, with its top layers unfrozen."""
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    if phase:
        mlflow.log_param(f"{PARAM_COUNTS}trainable_{phase}", trainable)
        return
    total = int(model.count_params())
    counts = {"total": total, "trainable": trainable, "non_trainable": total - trainable}
    mlflow.log_params({PARAM_COUNTS + key: value for key, value in counts.items()})


def log_class_weights(weights: dict[int, float], class_names: list[str]) -> None:
    """The weight of each class's training examples in the loss, by class name."""
    mlflow.log_dict({class_names[index]: weight for index, weight in weights.items()}, schema.CLASS_WEIGHTS_JSON)


class SplitDataset(MetaDataset):
    """One split of the image folders as an MLflow dataset input: where it lies, the data
    fingerprint, and its counts; no image is read (MLflow's own datasets hash the data they hold)."""

    def __init__(self, name: str, root: str, fingerprint: str, profile: dict[str, Any]) -> None:
        self._profile = {"fingerprint": fingerprint, **profile}
        source = get_dataset_source_from_json(json.dumps({"uri": root}), "local")  # a local folder
        super().__init__(source, name=name, digest=fingerprint[:DATASET_DIGEST_CHARS])

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def log_dataset_inputs(data: Data, data_name: str, root: str, test_root: str | None) -> None:
    """The data set as the run's dataset inputs, one per split, so the UI's Dataset column shows it.

    MLflow keeps one input per (name, digest) and run: each split has its own name, e.g.
    'demo/train', and the context train, validation or test. Train and validation are split from
    `root`; test is `test_root`.
    """
    splits = {"train": data.train, "val": data.val, "test": data.test}
    logged = {key: split for key, split in splits.items() if split}
    datasets = [
        SplitDataset(
            f"{data_name}/{schema.DATASET_CONTEXTS[key]}",
            str(Path(test_root if key == "test" else root).resolve()),
            data.fingerprint,
            {"images": len(split), "classes": len(data.class_names)},
        )
        for key, split in logged.items()
    ]
    contexts = [schema.DATASET_CONTEXTS[key] for key in logged]
    races.shared_write(  # every job of a sweep logs the same data set at the same moment
        mlflow.get_tracking_uri(),
        lambda: mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(datasets)),
        f"dataset inputs {data_name}",
    )


def log_evaluation(
    evaluation: Scores,
    class_names: list[str],
    figures: dict[str, plots.Drawing],
    with_metrics: bool = True,
) -> None:
    """The split's metrics, each file's softmax outputs, the per-class report and the confusion matrix.

    with_metrics=False where the metrics are logged already (a training run's val_* curves). The
    confusion matrix is drawn meanwhile in the figure worker and added to `figures` (artifact path
    -> drawing): the caller logs them with log_figures once it has done its other work.
    """
    split = evaluation.split
    if with_metrics:
        mlflow.log_metrics(evaluation.metrics())
    labels = [class_names[label] for label in evaluation.labels]
    csv = predictions.to_csv(evaluation.names, labels, evaluation.probabilities, class_names)
    mlflow.log_text(csv, schema.predictions_csv(split))
    mlflow.log_text(evaluation.report(class_names), schema.report_txt(split))
    drawing = plots.draw_meanwhile("confusion_matrix", evaluation.labels, evaluation.predicted, class_names, split)
    figures[schema.confusion_matrix_png(split)] = drawing


def epoch_step(epoch: int) -> int:
    """The MLflow step of Keras's 0-based `epoch`: the epoch's number as Keras prints it ("Epoch 1/5"),
    so that the curves' steps, best_epoch and the `phases` tag all count epochs from 1."""
    return epoch + 1


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """An epoch's metrics (epoch/loss, ..., epoch/log10_lr), at its step (epoch_step: counted from 1)."""
    with signals.held():  # a Ctrl-C waits for the write: the run must still be ended afterwards
        mlflow.log_metrics(metrics, step=epoch_step(epoch))


def log_feature_cache(miss: bool) -> None:
    """Whether the run found its features in the cache (what extracting them cost is in timings.json)."""
    mlflow.set_tag(schema.FEATURE_CACHE, "miss" if miss else "hit")


def log_timings(timings: dict[str, Any]) -> None:
    """Each step's wall seconds and the feature extraction's cost (Stopwatch.timings), as one artifact."""
    mlflow.log_dict(timings, schema.TIMINGS_JSON)


def log_figures(drawings: dict[str, plots.Drawing]) -> None:
    """Each drawing's PNG, once drawn, at its artifact path."""
    with tempfile.TemporaryDirectory() as folder:
        for artifact_path, drawing in drawings.items():
            local = Path(folder) / Path(artifact_path).name
            local.write_bytes(drawing.png())
            mlflow.log_artifact(str(local), str(Path(artifact_path).parent))


def log_model(model: keras.Model, input_example: np.ndarray, class_names: list[str], name: str, step: int) -> str:
    """The Keras model, taking raw RGB images of any size, loadable with mlflow.pyfunc.load_model;
    returns its model id, to link the run's final metrics to it.

    MLflow links the run's metrics at the model's `step` to it: the kept (best) epoch's, so the
    Models tab shows that epoch's loss and accuracy (at step 0 it showed the first epoch's).

    MLflow's serving-input check (reload the saved model, predict on the input example) is off:
    it cost 8 of a cached run's 20 s with a 95 MB backbone, and the tests reload logged models
    through pyfunc and compare their softmax with the trained one's.
    """
    info = Model.log(  # what mlflow.keras.log_model does, through the flavor shim below
        artifact_path=None,
        name=name,
        step=step,
        flavor=_KerasFlavor,
        model=model,
        signature=image_signature(len(class_names)),
        input_example=input_example,
        metadata={"class_names": class_names},
        pip_requirements=keras_requirements(),
        validate_serving_input=False,
    )
    return info.model_id


def keras_requirements() -> list[str]:
    """What a logged model needs: Keras, and the backend it was saved on. A .keras file loads on either
    backend (README: Backends): whichever KERAS_BACKEND the loading process sets."""
    backend = keras.config.backend()
    return [f"keras=={keras.__version__}", f"{backend}=={importlib.metadata.version(backend)}"]


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
