"""Seeding, determinism and the Keras fit loop, with per-epoch metrics sent to MLflow."""

from __future__ import annotations

import keras
import mlflow
import tensorflow as tf

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def seed_everything(seed: int, deterministic: bool | str) -> bool:
    """Seed Python, NumPy and TF; turn op determinism on (`auto`: when no GPU is visible).

    Returns whether determinism is on.
    """
    keras.utils.set_random_seed(seed)
    if deterministic == "auto":
        deterministic = not tf.config.list_physical_devices("GPU")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return bool(deterministic)


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs loss, accuracy, val_loss and val_accuracy to the active MLflow run, one step per epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        mlflow.log_metrics({name: float(logs[name]) for name in EPOCH_METRICS if name in logs}, step=epoch)


def fit(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    epochs: int,
    initial_epoch: int = 0,
) -> keras.callbacks.History:
    """Compile and fit; epochs count from initial_epoch, so a second phase continues the curves."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=[MlflowEpochMetrics()],
        verbose=2,
    )
