"""The fit loop's callbacks: the best epoch kept across phases and resumes, and early stopping."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from simpsons.config import MONITORS
from simpsons.training import BestEpoch, early_stopping, fit


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
