"""Seeding, determinism, precision and XLA, and the Keras fit loop with per-epoch metrics to MLflow."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight
from tensorflow.python.framework.config import disable_op_determinism  # no public twin of enable_op_determinism

from simpsons import gpus, schedules, signals
from simpsons.checks import XLA_NEEDS_NO_DETERMINISM
from simpsons.errors import ConfigError

LR_METRIC = "lr"  # the learning rate an epoch starts with
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", LR_METRIC)

log = logging.getLogger(__name__)


def gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


_gpu_setting: str | None = None  # what configure_gpus did in this process, said again to later jobs


def configure_gpus(memory_growth: bool, one_per_job: bool, cache_dir: Path) -> str | None:
    """Before TensorFlow's runtime starts: which GPU this process uses, and whether its memory grows.

    By default TensorFlow maps nearly all memory of every GPU it sees in every process, so a second
    job on the same GPU fails for memory; with growth on, each process takes what it uses. With
    several GPUs visible and `one_per_job`, the process claims one (simpsons/gpus.py) and shows
    TensorFlow that one only. Both are settings of the process: its first job decides them, and the
    later jobs of a sweep the default launcher runs in the same process keep them.

    Returns what was done, for the run's tags; None without a GPU.
    """
    global _gpu_setting
    if _gpu_setting is not None:
        return _gpu_setting
    physical = tf.config.list_physical_devices("GPU")
    if not physical:
        return None
    used = physical
    claim = None
    if one_per_job and len(physical) > 1:
        claim = gpus.claim(gpus.lock_dir(cache_dir), gpus.visible_names(len(physical)))
        used = [physical[claim.index]]
    try:
        if claim is not None:
            tf.config.set_visible_devices(used, "GPU")
        for gpu in used:
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
    except RuntimeError:  # raised once the runtime has started: e.g. a caller that already ran TensorFlow ops
        log.warning("GPU settings left as they were: TensorFlow had already started in this process")
        _gpu_setting = f"{len(physical)} GPU(s), as TensorFlow had already set them up"
        return _gpu_setting
    _gpu_setting = _describe_gpus(len(physical), claim, memory_growth)
    log.info("GPU: %s", _gpu_setting)
    return _gpu_setting


def gpu_setting() -> str | None:
    """What configure_gpus did in this process; None before it ran, or without a GPU."""
    return _gpu_setting


def _describe_gpus(count: int, claim: gpus.Claim | None, memory_growth: bool) -> str:
    """E.g. 'GPU 1 of 4 (claimed, alone on it); memory growth on'."""
    growth = f"memory growth {'on' if memory_growth else 'off'}"
    if claim is None:
        return f"{'all ' if count > 1 else ''}{count} GPU(s); {growth}"
    sharing = "alone on it" if claim.others == 0 else f"shared with {claim.others} other process(es): all were taken"
    return f"GPU {claim.name} of {count} (claimed, {sharing}); {growth}"


def seed_everything(seed: int, deterministic: bool | str) -> bool:
    """Seed Python, NumPy and TF; turn op determinism on (`auto`: when no GPU is visible).

    Returns whether determinism is on.
    """
    keras.utils.set_random_seed(seed)
    deterministic = resolve_deterministic(deterministic)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # process-wide: an earlier job of the sweep, in this process, may have turned it on
        disable_op_determinism()
    return bool(deterministic)


def resolve_deterministic(deterministic: bool | str) -> bool:
    """Whether op determinism will be on: `auto` turns it on when no GPU is visible."""
    return not gpu_visible() if deterministic == "auto" else bool(deterministic)


def set_precision(precision: str) -> None:
    """Keras's dtype policy for every layer built after this call (one per job, also in a sweep).

    mixed_*: layers compute in 16 bits and keep float32 weights; the softmax layer stays float32,
    and Keras wraps the optimizer in loss scaling for float16. Fast on GPUs (tensor cores), slow on CPUs.
    """
    keras.mixed_precision.set_global_policy(precision)
    # float32 stays float32 on GPUs too: TensorFloat-32, on by default from Ampere on, rounds
    # matmul and convolution inputs to 10-bit mantissas, so the logged model's softmax would no
    # longer match the one computed from cached features to 1e-5.
    tf.config.experimental.enable_tensor_float_32_execution(precision != "float32")
    if precision != "float32" and not gpu_visible():
        log.warning("precision=%s without a GPU: it runs, but slower than float32", precision)


def use_xla(jit_compile: bool | str, deterministic: bool) -> bool:
    """Whether to compile with XLA. `auto` follows Keras's rule: with a GPU and without op determinism,
    under which Keras does not compile with XLA."""
    if jit_compile == "auto":
        return gpu_visible() and not deterministic
    if jit_compile and deterministic:
        raise ConfigError(XLA_NEEDS_NO_DETERMINISM)
    return bool(jit_compile)


class MlflowEpochMetrics(keras.callbacks.Callback):
    """Logs loss, accuracy, val_loss, val_accuracy and lr to the active MLflow run, one step per epoch.

    lr is the learning rate of the epoch's first step, read when the epoch begins: a plateau
    scheduler lowers it at an epoch's end, for the next epoch, and a cosine one at every step.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._learning_rate = schedules.learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {name: float(value) for name, value in (logs or {}).items() if name in EPOCH_METRICS}
        metrics[LR_METRIC] = self._learning_rate
        with signals.held():  # a Ctrl-C waits for the write: the run must still be ended afterwards
            mlflow.log_metrics(metrics, step=epoch)


def fit(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    epochs: int,
    initial_epoch: int = 0,
    jit_compile: bool = False,
    backup_dir: Path | None = None,
    label_smoothing: float = 0.0,
    class_weight: dict[int, float] | None = None,
    lr_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.callbacks.History:
    """Compile (with XLA if asked) and fit; epochs count from initial_epoch, so a second phase
    continues the curves.

    `label_smoothing` > 0 trains on smoothed one-hot targets (see loss_and_targets); `class_weight`
    (class index -> weight) weighs each training example's loss by its class; `lr_callbacks`
    change the learning rate between epochs (simpsons.schedules.callbacks).

    With `backup_dir`, Keras's BackupAndRestore saves the weights, optimizer and epoch there after
    every epoch, after the epoch's metrics are logged, and restores them when fit starts: a rerun
    goes on at the epoch after the last backup. The backup is kept after fit, for the caller to
    delete once the whole run is logged.
    """
    callbacks: list[keras.callbacks.Callback] = [MlflowEpochMetrics(), *lr_callbacks]
    if backup_dir is not None:
        # double_checkpoint: a kill -9 in the middle of writing the weights leaves the previous
        # epoch's backup, which BackupAndRestore falls back to.
        callbacks.append(
            keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        )
    loss, train, val = loss_and_targets(label_smoothing, model.output_shape[-1], train, val)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit_compile)
    return model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=2,
    )


def loss_and_targets(
    label_smoothing: float, num_classes: int, train: tf.data.Dataset, val: tf.data.Dataset
) -> tuple[str | keras.losses.Loss, tf.data.Dataset, tf.data.Dataset]:
    """The loss to compile with, and the (inputs, targets) batches to fit on, for `label_smoothing`.

    Keras's SparseCategoricalCrossentropy has no label smoothing; CategoricalCrossentropy has,
    and takes one-hot targets. So with smoothing, the integer labels become one-hot here, as the
    batches are read: the pipelines and the feature cache keep their integer labels. It is a Keras
    loss, not a custom one, so that the compile config a saved model holds loads in a process
    that never imports simpsons. Without smoothing: the sparse loss on integer labels, as before.
    """
    if not label_smoothing:
        return "sparse_categorical_crossentropy", train, val

    def one_hot(inputs: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return inputs, tf.one_hot(labels, num_classes)

    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return loss, train.map(one_hot), val.map(one_hot)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """Class index -> examples / (classes * examples of the class), from the training labels
    (scikit-learn's "balanced"): each class weighs the same in the loss, in total.

    Over the classes the labels hold: a class without training examples adds nothing to the loss.
    """
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=np.asarray(labels))
    return {int(index): float(weight) for index, weight in zip(classes, weights, strict=True)}
