"""The Keras callbacks of a run's fits (simpsons/training/callbacks.py): the best epoch kept across
phases and resumes, early stopping told what ran before a resume, and the epoch metrics they log.

They run on tiny real Keras models inside a real MLflow run.
"""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tiny_fits import batches, labelled, softmax_model, two_layer_model, weights

from simpsons.settings import MONITORS
from simpsons.training.callbacks import LOG10_LR_METRIC, BestEpoch, early_stopping
from simpsons.training.phases import fit


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


@pytest.mark.parametrize("monitor", MONITORS)
def test_keras_reports_what_the_monitors_name(monitor):
    model = two_layer_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(batches(), validation_data=batches(), epochs=1, verbose=0)
    assert monitor in history.history


def test_the_log10_lr_curve_is_that_of_the_learning_rate_each_epoch_starts_with(tracking_uri):
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=6)
    two_steps = labelled([0, 1, 2, 0], seed=2, batch_size=2)
    with mlflow.start_run() as run:
        fit(softmax_model(), keras.optimizers.SGD(learning_rate=schedule), two_steps, labelled([1]), epochs=3)
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, LOG10_LR_METRIC)
    assert [m.step for m in history] == [1, 2, 3]  # epochs as Keras prints them, from 1
    expected = [float(schedule(step)) for step in (0, 2, 4)]
    assert [10**m.value for m in history] == pytest.approx(expected)
    assert expected[0] > expected[1] > expected[2]
