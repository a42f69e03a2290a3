"""A run's phases (simpsons/training/phases.py): one fit each, resumed where its backup left off, and
the training knobs (class weights, label smoothing).

fit runs on tiny real Keras models inside a real MLflow run; the jobs train the tiny MobileNet on
the demo images, and a logged model is loaded back in a process that never imports simpsons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import TINY_MODEL, folder_data, train_settings
from mlflow.tracking import MlflowClient
from PIL import Image
from tiny_fits import CLASSES, batches, labelled, softmax_model, two_layer_model, weights

from simpsons.tracking.predictions import from_csv
from simpsons.training.callbacks import EPOCH_METRICS, LOG10_LR_METRIC, early_stopping
from simpsons.training.phases import balanced_class_weights, fit, loss_and_targets
from simpsons.training.recipe import JobContext, train


def test_a_finished_phase_trains_no_more_when_run_again(tracking_uri, tmp_path):
    """The phase's end is kept beside its backup: a rerun (a resumed run) restores it, and an early
    stopped phase does not train on to its last epoch."""
    model, again = two_layer_model(), two_layer_model()
    [stopping] = early_stopping(1, "val_loss", 0.0, replay=[(0, 0.0)])  # nothing beats a loss of 0
    with mlflow.start_run():
        end = fit(
            model, keras.optimizers.Adam(), batches(), batches(), 10, 1, backup_dir=tmp_path, callbacks=[stopping]
        )
        assert end == 2
        trained = weights(model)
        assert fit(again, keras.optimizers.Adam(), batches(), batches(), 10, 1, backup_dir=tmp_path) == 2
    assert all(np.array_equal(a, b) for a, b in zip(weights(again), trained, strict=True))


def test_a_phase_after_a_resumed_one_starts_at_its_own_first_epoch(tracking_uri, tmp_path):
    """A run killed in its head phase and resumed: the head goes on from its backup, then fine-tuning
    trains its own epochs, not again from where the head resumed."""
    with mlflow.start_run():
        fit(two_layer_model(), keras.optimizers.Adam(), batches(), batches(), 2, backup_dir=tmp_path / "head")
    (tmp_path / "head" / "phase_end.json").unlink()  # killed after epoch 1's backup, before the phase ended

    model, trained = two_layer_model(), []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    with mlflow.start_run():
        head_end = fit(model, keras.optimizers.Adam(), batches(), batches(), 4, 0, False, tmp_path / "head", [record])
        assert (head_end, trained) == (4, [2, 3])
        end = fit(model, keras.optimizers.Adam(), batches(), batches(), 6, 4, False, tmp_path / "finetune", [record])
    assert (end, trained) == (6, [2, 3, 4, 5])


def test_a_phase_that_early_stopping_ended_just_before_a_kill_trains_no_more(tracking_uri, tmp_path):
    """Killed after the stopping epoch's backup, before the phase's end was marked: the replayed
    curve alone stops the phase, and the resumed fit trains no epoch."""
    with mlflow.start_run():
        fit(two_layer_model(), keras.optimizers.Adam(), batches(), batches(), 3, backup_dir=tmp_path)
    (tmp_path / "phase_end.json").unlink()

    model, trained = two_layer_model(), []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    [stopping] = early_stopping(2, "val_accuracy", 0.0, replay=[(0, 0.9), (1, 0.5), (2, 0.5)])  # stopped at 2
    with mlflow.start_run():
        end = fit(model, keras.optimizers.Adam(), batches(), batches(), 10, 0, False, tmp_path, [stopping, record])
    assert (end, trained) == (3, [])
    assert json.loads((tmp_path / "phase_end.json").read_text()) == {"end": 3}


# Training knobs


def test_balanced_weights_are_the_inverse_of_each_class_count_scaled_to_a_mean_of_one_per_example():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = balanced_class_weights(labels)
    assert weights == pytest.approx({0: 10 / (3 * 6), 1: 10 / (3 * 3), 2: 10 / (3 * 1)})
    assert sum(weights[label] for label in labels) == pytest.approx(len(labels))  # each class's total: 10/3


def test_a_class_without_training_examples_gets_no_weight():
    assert balanced_class_weights(np.array([0, 0, 2])) == pytest.approx({0: 3 / 4, 2: 3 / 2})


def test_without_smoothing_the_sparse_loss_trains_on_the_integer_labels_as_given():
    train, val = labelled([0, 1, 2]), labelled([2])
    assert loss_and_targets(0.0, CLASSES, train, val) == ("sparse_categorical_crossentropy", train, val)


def test_with_smoothing_keras_categorical_loss_trains_on_one_hot_targets_made_as_batches_are_read():
    loss, train, val = loss_and_targets(0.1, CLASSES, labelled([0, 1, 2]), labelled([2]))
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    assert loss.get_config()["label_smoothing"] == 0.1
    [(_, targets)] = list(train.as_numpy_iterator())
    np.testing.assert_array_equal(targets, np.eye(CLASSES))
    [(_, targets)] = list(val.as_numpy_iterator())
    np.testing.assert_array_equal(targets, [[0, 0, 1]])


@pytest.mark.parametrize(
    "class_weight,label_smoothing", [(None, 0.0), ({0: 0.5, 1: 2.0, 2: 1.0}, 0.0), (None, 0.2)], ids=str
)
def test_fit_trains_on_the_weighted_and_smoothed_loss(class_weight, label_smoothing, tracking_uri):
    """With a learning rate of 0 the weights stay put: the epoch's training loss is the loss of the
    first predictions, which is computed here by hand."""
    labels = [0, 0, 1, 2, 2, 2]
    model, train = softmax_model(), labelled(labels)
    [(features, _)] = list(train.as_numpy_iterator())
    probabilities = keras.ops.convert_to_numpy(model(features))
    targets = np.eye(CLASSES)[labels] * (1 - label_smoothing) + label_smoothing / CLASSES
    per_example = -(targets * np.log(probabilities)).sum(axis=1)
    weights = np.array([class_weight[label] for label in labels]) if class_weight else np.ones(len(labels))
    with mlflow.start_run() as run:
        fit(
            model,
            keras.optimizers.SGD(learning_rate=0.0),
            train,
            labelled([1, 2], seed=1),
            epochs=1,
            label_smoothing=label_smoothing,
            class_weight=class_weight,
        )
    logged = MlflowClient(tracking_uri).get_run(run.info.run_id).data.metrics
    assert logged["epoch/loss"] == pytest.approx(np.mean(weights * per_example), rel=1e-5)
    assert set(EPOCH_METRICS) - {LOG10_LR_METRIC} <= logged.keys()  # named as without the knobs (lr 0: no log10)


# Jobs


def unbalanced_images(images: Path, tmp_path: Path) -> Path:
    """The demo's training folder with 4 of red_circle's 12 images and 6 of green_triangle's."""
    root = tmp_path / "unbalanced"
    shutil.copytree(images / "train", root)
    for label, kept in (("red_circle", 4), ("green_triangle", 6)):
        for image in sorted((root / label).iterdir())[kept:]:
            image.unlink()
    return root


@pytest.mark.slow
def test_balanced_class_weights_come_from_the_training_split_and_are_logged(image_folders, tracking_uri, tmp_path):
    root = unbalanced_images(image_folders, tmp_path)
    base = [*TINY_MODEL, *folder_data(image_folders), f"data.root={root}", "epochs=2", f"tracking.uri={tracking_uri}"]
    balanced = train(train_settings([*base, "class_weight=balanced"]), JobContext(overrides=[]))
    unweighted = train(train_settings(base), JobContext(overrides=[]))
    runs = (balanced, unweighted)

    client = MlflowClient(tracking_uri)
    weights = mlflow.artifacts.load_dict(f"runs:/{balanced}/class_weights.json")
    val_csv = mlflow.artifacts.load_text(f"runs:/{balanced}/predictions/val.csv")
    val_labels = from_csv(val_csv).labels
    counts = {folder.name: len(list(folder.iterdir())) - val_labels.count(folder.name) for folder in root.iterdir()}
    assert counts["red_circle"] < counts["green_triangle"] < counts["blue_square"]  # the training split's counts
    total = sum(counts.values())
    assert weights == pytest.approx({label: total / (len(counts) * count) for label, count in counts.items()})
    assert client.get_run(balanced).data.params["class_weight"] == "balanced"
    assert "class_weights.json" not in {a.path for a in client.list_artifacts(unweighted)}
    # The weights reached fit: a config otherwise the same trains the same (deterministic=auto: on without a GPU)
    curves = [
        [m.value for key in ("epoch/loss", "epoch/val_loss") for m in client.get_metric_history(run, key)]
        for run in runs
    ]
    assert curves[0] != curves[1]


LOAD_IN_A_FRESH_PROCESS = """
import json, sys
import mlflow, numpy as np
images = np.load(sys.argv[2])
keras_model = mlflow.keras.load_model(sys.argv[1])
served = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps({
    "loss": keras_model.loss.get_config(),
    "learning_rate": type(keras_model.optimizer._learning_rate).__name__,
    "keras": keras_model.predict(images, verbose=0).tolist(),
    "pyfunc": np.asarray(served.predict(images)).tolist(),
    "simpsons imported": any(name.split(".")[0] == "simpsons" for name in sys.modules),
}))
"""


@pytest.mark.slow
def test_a_model_trained_end_to_end_with_every_knob_loads_where_simpsons_is_not_imported(
    image_folders, tracking_uri, tmp_path
):
    """The compiled state a saved Keras model keeps (its loss, its optimizer's schedule) is Keras's own,
    so mlflow.keras.load_model and mlflow.pyfunc.load_model need no custom_objects, and the model
    reproduces the logged validation softmax."""
    knobs = ["label_smoothing=0.1", "class_weight=balanced", "scheduler=cosine"]
    overrides = [*TINY_MODEL, *folder_data(image_folders), "cache=false", "epochs=2", *knobs]
    run_id = train(train_settings([*overrides, f"tracking.uri={tracking_uri}"]), JobContext(overrides=[]))

    experiment = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    query = f"source_run_id = '{run_id}'"
    [logged] = mlflow.search_logged_models([experiment], filter_string=query, output_format="list")
    names, _, recorded = astuple(from_csv(mlflow.artifacts.load_text(f"runs:/{run_id}/predictions/val.csv")))
    raw = np.stack([np.asarray(Image.open(image_folders / "train" / n), dtype=np.float32) for n in names])
    np.save(tmp_path / "images.npy", raw)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": tracking_uri}
    command = [sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, logged.model_uri, str(tmp_path / "images.npy")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert loaded["simpsons imported"] is False
    assert loaded["loss"]["label_smoothing"] == pytest.approx(0.1)
    assert loaded["learning_rate"] == "CosineDecay"
    np.testing.assert_allclose(loaded["keras"], recorded, atol=1e-5)
    np.testing.assert_allclose(loaded["pyfunc"], recorded, atol=1e-5)
