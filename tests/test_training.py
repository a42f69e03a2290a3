"""The fit loop (simpsons/training.py): its callbacks (the best epoch kept across phases and resumes,
early stopping) and its training knobs (class weights, label smoothing, the lr curve).

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
import tensorflow as tf
from conftest import TINY_MODEL, folder_data, train_settings
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons.job import JobContext, train
from simpsons.settings import MONITORS
from simpsons.tracking.predictions import from_csv
from simpsons.training import (
    EPOCH_METRICS,
    LR_METRIC,
    BestEpoch,
    balanced_class_weights,
    early_stopping,
    fit,
    log_backed_up_epochs,
    loss_and_targets,
)


def two_layer_model() -> keras.Model:
    """A stand-in for backbone + head: `base` is frozen in the first phase, trained in the second."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.Dense(4, name="base")(inputs))
    return keras.Model(inputs, outputs)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def epoch(keeper: BestEpoch, number: int, value: float, model: keras.Model) -> None:
    """One epoch as fit runs it: the callbacks around a change of the trainable weights."""
    keeper.on_epoch_begin(number)
    for variable in model.trainable_variables:
        variable.assign(variable + 1.0)
    keeper.on_epoch_end(number, {"val_accuracy": value})


def test_the_best_epoch_of_the_head_phase_is_restored_after_fine_tuning_whole():
    model = two_layer_model()
    original = weights(model)
    keeper = BestEpoch(model, "val_accuracy")
    model.get_layer("base").trainable = False
    keeper.set_model(model)
    epoch(keeper, 0, 0.5, model)
    epoch(keeper, 1, 0.8, model)  # the best: head moved twice, base never
    at_best = weights(model)
    epoch(keeper, 2, 0.7, model)
    model.get_layer("base").trainable = True  # fine-tuning: base changes from here on
    epoch(keeper, 3, 0.8, model)  # a tie: the earlier epoch stays the best
    epoch(keeper, 4, 0.6, model)

    keeper.restore()
    assert keeper.epoch == 1 and keeper.value == 0.8
    assert all(np.array_equal(a, b) for a, b in zip(weights(model), at_best, strict=True))
    assert np.array_equal(model.get_layer("base").get_weights()[0], original[0])  # its value before fine-tuning


def test_val_loss_keeps_the_lowest_epoch():
    model = two_layer_model()
    keeper = BestEpoch(model, "val_loss")
    keeper.set_model(model)
    for number, loss in enumerate([0.9, 0.4, 0.6]):
        keeper.on_epoch_begin(number)
        keeper.on_epoch_end(number, {"val_loss": loss})
    assert (keeper.epoch, keeper.value) == (1, 0.4)


def test_a_resumed_run_knows_its_best_epoch_and_restores_it_from_disk(tmp_path):
    model = two_layer_model()
    keeper = BestEpoch(model, "val_accuracy", tmp_path)
    keeper.set_model(model)
    epoch(keeper, 0, 0.5, model)
    epoch(keeper, 1, 0.9, model)
    at_best = weights(model)
    epoch(keeper, 2, 0.95, model)  # a better epoch, then a kill before its backup: the run resumes at 2
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["best-epoch-1.weights.h5", "best-epoch-2.weights.h5"]

    resumed_model = two_layer_model()  # a new process, whose BackupAndRestore restored epoch 1's end
    resumed = BestEpoch(resumed_model, "val_accuracy", tmp_path, history=[(0, 0.5), (1, 0.9)])
    resumed.set_model(resumed_model)
    assert (resumed.epoch, resumed.value) == (1, 0.9)
    epoch(resumed, 2, 0.6, resumed_model)  # the retrained epoch 2 is worse this time
    assert [p.name for p in tmp_path.glob("*.h5")] == ["best-epoch-1.weights.h5"], "epoch 2's stale best is gone"
    resumed.restore()
    assert all(np.array_equal(a, b) for a, b in zip(weights(resumed_model), at_best, strict=True))


def batches(rows: int = 32) -> tf.data.Dataset:
    generator = np.random.default_rng(0)
    x, y = generator.normal(size=(rows, 3)).astype(np.float32), generator.integers(0, 2, rows)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_early_stopping_counts_the_epochs_a_resumed_phase_ran_before(tracking_uri):
    """An unbeatable best at epoch 0 and a worse epoch 1 before the kill: with patience 3, two more
    epochs without progress stop the phase, at epoch 3."""
    model = two_layer_model()
    [stopping] = early_stopping(3, "val_accuracy", 0.0, replay=[(0, 1.0), (1, 0.5)])
    with mlflow.start_run():  # fit logs every epoch's metrics to the active run
        end = fit(model, keras.optimizers.Adam(), batches(), batches(), 10, 2, callbacks=[stopping])
    assert end == 4 and stopping.stopped_epoch == 3


def test_early_stopping_is_off_with_patience_null():
    assert early_stopping(None, "val_loss", 0.0) == []


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


@pytest.mark.parametrize("monitor", MONITORS)
def test_keras_reports_what_the_monitors_name(monitor):
    model = two_layer_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(batches(), validation_data=batches(), epochs=1, verbose=0)
    assert monitor in history.history


# Training knobs

CLASSES = 3


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


def labelled(labels: list[int], seed: int = 0, batch_size: int | None = None) -> tf.data.Dataset:
    """Random 4-feature rows with these integer labels, in one batch unless `batch_size` says."""
    features = np.random.default_rng(seed).normal(size=(len(labels), 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((features, np.array(labels))).batch(batch_size or len(labels))


def softmax_model() -> keras.Model:
    inputs = keras.Input(shape=(4,))
    outputs = keras.layers.Dense(CLASSES, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(1))
    return keras.Model(inputs, outputs(inputs))


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
    assert logged["loss"] == pytest.approx(np.mean(weights * per_example), rel=1e-5)
    assert {"accuracy", "val_loss", "val_accuracy", LR_METRIC} <= logged.keys()  # named as without the knobs


def test_the_lr_metric_is_the_learning_rate_each_epoch_starts_with(tracking_uri):
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=6)
    two_steps = labelled([0, 1, 2, 0], seed=2, batch_size=2)
    with mlflow.start_run() as run:
        fit(softmax_model(), keras.optimizers.SGD(learning_rate=schedule), two_steps, labelled([1]), epochs=3)
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, LR_METRIC)
    assert [m.step for m in history] == [0, 1, 2]
    expected = [float(schedule(step)) for step in (0, 2, 4)]
    assert [m.value for m in history] == pytest.approx(expected)
    assert expected[0] > expected[1] > expected[2]


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
    curves = [[m.value for key in ("loss", "val_loss") for m in client.get_metric_history(run, key)] for run in runs]
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


class CutShort(Exception):
    """Raised where a kill -9 would land: the epoch's end stops there, and nothing after it runs."""


def histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Each epoch metric's (step, value) points, in the order they were logged."""
    client = MlflowClient()
    return {
        name: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)]
        for name in EPOCH_METRICS
    }


def steps(run_id: str) -> dict[str, list[int]]:
    return {name: [step for step, _ in points] for name, points in histories(run_id).items()}


def fit_phase(backup_dir: Path, epochs: int, *callbacks: keras.callbacks.Callback) -> int:
    return fit(
        two_layer_model(), keras.optimizers.Adam(), batches(), batches(), epochs, 0, False, backup_dir, callbacks
    )


def test_an_epoch_cut_short_before_its_backup_is_logged_once_by_the_resumed_run(tracking_uri, tmp_path):
    """The run dies at epoch 2's end, among the callbacks that run before its backup: the resumed fit
    trains epoch 2 again from the backup of epoch 1, and every curve has each of the 4 epochs once.
    (Logged before the backup, epoch 2 was logged twice: 31 points for 30 epochs.)"""

    def die_at_2(epoch: int, logs: dict) -> None:
        if epoch == 2:
            raise CutShort

    with mlflow.start_run() as run, pytest.raises(CutShort):
        fit_phase(tmp_path, 4, keras.callbacks.LambdaCallback(on_epoch_end=die_at_2))
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 2  # epochs 0-1 backed up

    trained = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    with mlflow.start_run(run_id=run.info.run_id):
        assert log_backed_up_epochs(tmp_path, 2) == []  # all that was backed up was logged
        assert fit_phase(tmp_path, 4, record) == 4
    assert trained == [2, 3]
    assert steps(run.info.run_id) == dict.fromkeys(EPOCH_METRICS, [0, 1, 2, 3])


def test_an_epoch_backed_up_but_not_logged_is_logged_from_beside_its_backup_when_resumed(tracking_uri, tmp_path):
    """The run dies after epoch 2's backup, before its metrics reach MLflow: the resumed run logs
    epoch 2's metrics, as they were, from beside the backup, and trains epoch 3 only."""
    with mlflow.start_run() as whole:
        fit_phase(tmp_path / "whole", 3)
    # The same run cut short after epoch 2's backup: its backup, and epochs 0-1 logged
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    (tmp_path / "cut" / "phase_end.json").unlink()
    logged = histories(whole.info.run_id)
    with mlflow.start_run() as cut:
        for epoch in (0, 1):
            mlflow.log_metrics({name: points[epoch][1] for name, points in logged.items()}, step=epoch)

    trained = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    with mlflow.start_run(run_id=cut.info.run_id):
        assert log_backed_up_epochs(tmp_path / "cut", 3) == [2]
        assert log_backed_up_epochs(tmp_path / "cut", 3) == []  # once
        assert fit_phase(tmp_path / "cut", 4, record) == 4
    assert trained == [3]
    assert steps(cut.info.run_id) == dict.fromkeys(EPOCH_METRICS, [0, 1, 2, 3])
    resumed = histories(cut.info.run_id)
    assert {name: points[2] for name, points in resumed.items()} == {name: points[2] for name, points in logged.items()}
