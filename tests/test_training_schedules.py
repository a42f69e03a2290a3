"""Learning-rate schedulers (simpsons/training/schedules.py): what each does to a phase, and the logged curve.

The jobs train the tiny MobileNet on the demo images, in a private SQLite store; the epoch/log10_lr
curve is the log10 of the learning rate each epoch starts with.
"""

from __future__ import annotations

import math

import keras
import pytest
from conftest import TINY_MODEL, folder_data, run_cli, train_settings
from mlflow.tracking import MlflowClient

from simpsons.training import schedules
from simpsons.training.callbacks import LOG10_LR_METRIC
from simpsons.training.recipe import JobContext, train

LR = 1e-3  # TINY_MODEL's


def scheduler(*overrides: str):
    return train_settings([*overrides]).scheduler


def test_constant_leaves_the_optimizer_as_it_is_and_adds_no_callback():
    optimizer = keras.optimizers.Adam(learning_rate=LR)
    assert schedules.scheduled(optimizer, scheduler(), steps=10) is optimizer
    assert schedules.learning_rate(optimizer) == pytest.approx(LR)
    assert isinstance(optimizer._learning_rate, keras.Variable)  # a plain learning rate, as before
    assert schedules.callbacks(scheduler()) == []


def test_cosine_decays_the_optimizers_own_learning_rate_over_the_phases_steps():
    optimizer = schedules.scheduled(keras.optimizers.Adam(learning_rate=LR), scheduler("scheduler=cosine"), steps=10)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.get_config() | {"initial_learning_rate": pytest.approx(LR)} == {
        "initial_learning_rate": LR,
        "decay_steps": 10,
        "alpha": 0.0,
        "name": "CosineDecay",
        "warmup_target": None,
        "warmup_steps": 0,
    }
    assert schedules.callbacks(scheduler("scheduler=cosine")) == []


def test_plateau_is_a_new_reduce_lr_on_plateau_each_phase_with_the_configs_values():
    config = scheduler("scheduler=plateau", "scheduler.factor=0.2", "scheduler.patience=3")
    [callback] = schedules.callbacks(config)
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    assert (callback.monitor, callback.factor, callback.patience) == ("val_loss", 0.2, 3)
    assert (callback.min_delta, callback.cooldown, callback.min_lr) == (1e-4, 0, 0.0)
    assert schedules.callbacks(config)[0] is not callback


def test_a_resumed_plateau_counts_the_epochs_its_phase_ran_before():
    """Epochs 0-2 ran before a kill: told them, the resumed phase's callback is where the first
    run's was, and lowers the learning rate after the same epoch as a run never stopped."""
    config = scheduler("scheduler=plateau", "scheduler.patience=2", "scheduler.factor=0.5")
    losses = [1.0, 0.5, 0.6, 0.7, 0.8]  # no progress after epoch 1: the lr falls at the end of epoch 3
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), loss="mse")

    [resumed] = schedules.callbacks(config, replay=list(enumerate(losses[:3])))
    resumed.set_model(model)
    resumed.on_train_begin()  # in fit, BackupAndRestore then restores the optimizer's backed-up lr
    assert (resumed.best, resumed.wait) == (0.5, 1)
    model.optimizer.learning_rate = LR
    lrs = []
    for epoch in (3, 4):
        resumed.on_epoch_end(epoch, {"val_loss": losses[epoch]})
        lrs.append(schedules.learning_rate(model.optimizer))
    assert lrs == pytest.approx([LR / 2, LR / 2])


# Jobs: the logged lr curve


def lr_curve(uri: str, run_id: str) -> list[float]:
    """The learning rate each epoch started with, from its logged log10."""
    history = MlflowClient(uri).get_metric_history(run_id, LOG10_LR_METRIC)
    assert [m.step for m in history] == list(range(1, len(history) + 1))  # epochs counted from 1
    return [10**m.value for m in history]


def steps_per_epoch(uri: str, run_id: str) -> int:
    return math.ceil(int(MlflowClient(uri).get_run(run_id).data.params["data.train_images"]) / 16)  # batch_size=16


def job(image_folders, uri: str, *overrides: str) -> str:
    base = [*TINY_MODEL, *folder_data(image_folders), f"tracking.uri={uri}"]
    return train(train_settings([*base, *overrides]), JobContext(overrides=[]))


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
def test_the_default_lr_curve_is_flat(image_folders, tracking_uri):
    run_id = job(image_folders, tracking_uri, "epochs=2")
    assert lr_curve(tracking_uri, run_id) == pytest.approx([LR, LR])
    assert MlflowClient(tracking_uri).get_run(run_id).data.params["scheduler.name"] == "constant"


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
def test_the_cosine_lr_curve_falls_as_keras_cosine_decay_over_the_runs_steps(image_folders, tracking_uri):
    run_id = job(image_folders, tracking_uri, "epochs=3", "scheduler=cosine")
    steps = steps_per_epoch(tracking_uri, run_id)
    decay = keras.optimizers.schedules.CosineDecay(LR, decay_steps=3 * steps)
    curve = lr_curve(tracking_uri, run_id)
    assert curve == pytest.approx([float(decay(epoch * steps)) for epoch in range(3)])
    assert curve[0] > curve[1] > curve[2] > 0


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
def test_plateau_lowers_the_lr_once_val_loss_stalls(image_folders, tracking_uri):
    """No epoch improves val_loss by 10: after the first (the first value is the best so far),
    val_loss has stalled, and after `patience` such epochs the next epoch starts at lr * factor."""
    stalls = ["scheduler=plateau", "scheduler.min_delta=10", "scheduler.patience=1", "scheduler.factor=0.5"]
    run_id = job(image_folders, tracking_uri, "epochs=4", *stalls)
    assert lr_curve(tracking_uri, run_id) == pytest.approx([LR, LR, LR / 2, LR / 4])


@pytest.mark.slow
def test_fine_tuning_decays_its_own_learning_rate_over_its_own_epochs(image_folders, tracking_uri):
    finetune = ["finetune.layers=2", "finetune.epochs=2", "finetune.lr=4e-4"]
    run_id = job(image_folders, tracking_uri, "epochs=2", "scheduler=cosine", *finetune)
    steps = steps_per_epoch(tracking_uri, run_id)
    head, tuning = (keras.optimizers.schedules.CosineDecay(lr, decay_steps=2 * steps) for lr in (LR, 4e-4))
    expected = [float(head(0)), float(head(steps)), float(tuning(0)), float(tuning(steps))]
    assert lr_curve(tracking_uri, run_id) == pytest.approx(expected)


@pytest.mark.slow
def test_a_sweep_over_schedulers_runs_a_job_with_each(image_folders, tracking_uri, tmp_path):
    args = ["-m", "scheduler=constant,cosine", *TINY_MODEL, *folder_data(image_folders), "epochs=2"]
    result = run_cli([*args, f"tracking.uri={tracking_uri}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("simpsons").experiment_id])
    jobs = {r.data.params["scheduler.name"]: r for r in runs if r.data.tags["simpsons.run_type"] == "train"}
    assert sorted(jobs) == ["constant", "cosine"]
    assert all(r.info.status == "FINISHED" for r in jobs.values())
    assert {name: r.info.run_name for name, r in jobs.items()} == {"constant": "constant", "cosine": "cosine"}
    constant, cosine = (lr_curve(tracking_uri, jobs[name].info.run_id) for name in ("constant", "cosine"))
    assert constant == pytest.approx([LR, LR])
    assert cosine[0] == pytest.approx(LR) and cosine[1] < LR
