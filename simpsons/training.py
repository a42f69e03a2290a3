"""Seeding, determinism, precision and XLA, and the Keras fit loop with per-epoch metrics to MLflow."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.tracking import MlflowClient
from sklearn.utils.class_weight import compute_class_weight
from tensorflow.python.framework.config import disable_op_determinism  # no public twin of enable_op_determinism

from simpsons import gpus, schedules, signals
from simpsons.errors import ConfigError
from simpsons.settings import MONITORS, XLA_NEEDS_NO_DETERMINISM

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
        _log_epoch(epoch, _epoch_metrics(logs, self._learning_rate))


class BackupThenLog(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore that logs each epoch's metrics (as MlflowEpochMetrics) once the epoch is backed up.

    Logged before the backup, an epoch that a kill cut short between the two was trained and logged
    again by the resumed run: its curves had that step twice, with two values (31 points for 30
    epochs). So the metrics are first written beside the backup (EPOCHS_FILE), then the epoch is
    backed up, then logged. A kill before the backup: the rerun trains the epoch again and logs it
    once; a kill after it: the rerun logs it from the file (log_backed_up_epochs), and trains on.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._learning_rate = schedules.learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = _epoch_metrics(logs, self._learning_rate)
        _record_epoch(Path(self.backup_dir), epoch, metrics)
        super().on_epoch_end(epoch, logs)
        _log_epoch(epoch, metrics)


EPOCHS_FILE = "epoch_metrics.json"  # beside a phase's backup: each epoch's metrics, logged or not yet


def _epoch_metrics(logs: dict | None, learning_rate: float) -> dict[str, float]:
    metrics = {name: float(value) for name, value in (logs or {}).items() if name in EPOCH_METRICS}
    return metrics | {LR_METRIC: learning_rate}


def _log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    with signals.held():  # a Ctrl-C waits for the write: the run must still be ended afterwards
        mlflow.log_metrics(metrics, step=epoch)


def _record_epoch(backup_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    """Add an epoch's metrics to the phase's EPOCHS_FILE, renamed into place: a kill leaves the previous one whole."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    path = backup_dir / EPOCHS_FILE
    partial = backup_dir / f"{EPOCHS_FILE}.{os.getpid()}.partial"
    partial.write_text(json.dumps(_recorded_epochs(backup_dir) | {str(epoch): metrics}))
    os.replace(partial, path)


def _recorded_epochs(backup_dir: Path) -> dict[str, dict[str, float]]:
    try:
        return json.loads((backup_dir / EPOCHS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def log_backed_up_epochs(backup_dir: Path, before_epoch: int) -> list[int]:
    """Log to the active run the metrics of the phase's backed-up epochs (those before `before_epoch`)
    that it lacks: a kill fell between an epoch's backup and its log. Returns those epochs."""
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    recorded = {int(epoch): metrics for epoch, metrics in _recorded_epochs(backup_dir).items()}
    wanted = {epoch: metrics for epoch, metrics in recorded.items() if epoch < before_epoch}
    if not wanted:
        return []
    names = {name for metrics in wanted.values() for name in metrics}
    logged = {name: {m.step for m in client.get_metric_history(run_id, name)} for name in names}
    missing = {}
    for epoch, metrics in sorted(wanted.items()):
        absent = {name: value for name, value in metrics.items() if epoch not in logged[name]}
        if absent:
            missing[epoch] = absent
    for epoch, metrics in missing.items():
        _log_epoch(epoch, metrics)
    return sorted(missing)


class BestEpoch(keras.callbacks.Callback):
    """The epoch with the best `monitor` value over every phase of a run, and its weights.

    Keras's EarlyStopping(restore_best_weights=True) keeps the best weights of one fit; a run fits
    its head, may fine-tune after, and may be resumed after a kill. One BestEpoch follows all of
    its fits. It copies only the variables the fits train (the head's, then the unfrozen backbone
    layers'), and remembers each one's value from before its first trained epoch: that is its value
    at any best epoch before then. Ties keep the earlier epoch, as Keras's callbacks do.

    With `directory` (runs that back up every epoch and can be resumed), each new best is saved
    there too, whole, before BackupAndRestore's backup of that epoch: a resumed run, given the
    curve it logged before (`history`, as (epoch, value)), knows its best epoch and can restore it.
    """

    def __init__(
        self,
        classifier: keras.Model,
        monitor: str,
        directory: Path | None = None,
        history: Sequence[tuple[int, float]] = (),
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.monitor = monitor
        self.directory = directory
        self.epoch: int | None = None
        self.value: float | None = None
        self._first: dict[int, tuple[keras.Variable, np.ndarray]] = {}  # id -> (variable, value before training)
        self._best: dict[int, np.ndarray] | None = None  # id -> value at the best epoch, once it is in this process
        for epoch, value in history:
            self._consider(epoch, value)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # Not on_train_begin: BackupAndRestore restores a resumed phase's weights there.
        for variable in self.model.trainable_variables:
            self._first.setdefault(id(variable), (variable, keras.ops.convert_to_numpy(variable)))
        if self.directory is not None:
            self._prune()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._consider(epoch, float((logs or {})[self.monitor])):
            return
        self._best = {key: keras.ops.convert_to_numpy(variable) for key, (variable, _) in self._first.items()}
        if self.directory is not None:
            self._save(epoch)

    def restore(self) -> None:
        """Set the classifier to its weights at the best epoch (no epoch trained: nothing to do)."""
        if self._best is not None:
            for key, (variable, first) in self._first.items():
                variable.assign(self._best.get(key, first))
        elif self.epoch is not None and self.directory is not None:  # best before a resume
            self.classifier.load_weights(self.directory / self._weights_name(self.epoch))

    def _consider(self, epoch: int, value: float) -> bool:
        better = np.greater if MONITORS[self.monitor] == "max" else np.less
        if self.value is not None and not better(value, self.value):
            return False
        self.epoch, self.value = epoch, value
        return True

    def _save(self, epoch: int) -> None:
        """The whole classifier's weights, renamed into place: a kill leaves the previous best whole."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self._weights_name(epoch)
        partial = path.with_name(f"partial-{os.getpid()}.weights.h5")
        self.classifier.save_weights(partial)
        os.replace(partial, path)

    def _prune(self) -> None:
        """Delete the earlier bests' weights, once the epoch that beat them is backed up (the next
        one begins): until then a kill resumes before that epoch, and the earlier best still counts."""
        for older in self.directory.glob("best-epoch-*.weights.h5"):
            if older.name != self._weights_name(self.epoch):
                older.unlink()

    @staticmethod
    def _weights_name(epoch: int) -> str:
        return f"best-epoch-{epoch}.weights.h5"


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping, told the phase's epochs that ran before a resume (`replay`), so that
    its patience counts them as if the run had never stopped."""

    def __init__(self, replay: Sequence[tuple[int, float]] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.replay = list(replay)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        for epoch, value in self.replay:
            self.on_epoch_end(epoch, {self.monitor: value})

    def stopped_before_resume(self, model: keras.Model) -> int | None:
        """The epoch the phase ended at, if the replayed epochs alone stop it: a kill came after
        its last backup, before the phase's end was marked. Keras checks `stop_training` only after
        an epoch, so fit must be told not to train one more."""
        self.set_model(model)
        model.stop_training = False  # what fit sets before its callbacks start
        self.on_train_begin()
        stopped, model.stop_training = model.stop_training, False
        return self.replay[-1][0] + 1 if stopped else None


def early_stopping(
    patience: int | None, monitor: str, min_delta: float, replay: Sequence[tuple[int, float]] = ()
) -> list[keras.callbacks.Callback]:
    """[EarlyStopping] for a phase, or [] with patience null. Weights are not restored here: the
    run's BestEpoch does that, across phases."""
    if patience is None:
        return []
    stopping = ResumedEarlyStopping(
        replay, monitor=monitor, mode=MONITORS[monitor], patience=patience, min_delta=min_delta, verbose=1
    )
    return [stopping]


def fit(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    epochs: int,
    initial_epoch: int = 0,
    jit_compile: bool = False,
    backup_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    label_smoothing: float = 0.0,
    class_weight: dict[int, float] | None = None,
) -> int:
    """Compile (with XLA if asked) and fit; epochs count from initial_epoch, so a second phase
    continues the curves. Returns the epoch the phase ends at (the next one's first epoch): earlier
    than `epochs` when a callback (early stopping) stopped it.

    `callbacks` run before the backup. Without `backup_dir`, the epoch's metrics are logged before
    them; with it, Keras's BackupAndRestore saves the weights, optimizer and epoch there after every
    epoch, the metrics are logged after the backup (BackupThenLog), and it restores them when fit
    starts: a rerun goes on at the epoch after the last backup. The backup
    is kept after fit, with the phase's end epoch beside it (a rerun of a finished phase trains
    nothing), for the caller to delete once the whole run is logged.

    `label_smoothing` > 0 trains on smoothed one-hot targets (see loss_and_targets); `class_weight`
    (class index -> weight) weighs each training example's loss by its class.
    """
    marked = None if backup_dir is None else _phase_end(backup_dir)
    stops = [c.stopped_before_resume(model) for c in callbacks if isinstance(c, ResumedEarlyStopping)]
    done = marked or min(filter(None, stops), default=None)
    if done is not None:
        epochs = done  # BackupAndRestore restores the phase's last epoch and trains no more
    if backup_dir is None:
        all_callbacks: list[keras.callbacks.Callback] = [MlflowEpochMetrics(), *callbacks]
    else:
        # double_checkpoint: a kill -9 in the middle of writing the weights leaves the previous
        # epoch's backup, which BackupAndRestore falls back to.
        backup = BackupThenLog(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        all_callbacks = [*callbacks, backup]
    loss, train, val = loss_and_targets(label_smoothing, model.output_shape[-1], train, val)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit_compile)
    # BackupAndRestore tells fit where a restored phase resumes through this private attribute, which
    # Keras never clears: left set, the next phase (same model, nothing to restore) would start there.
    model._initial_epoch = None
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        class_weight=class_weight,
        callbacks=all_callbacks,
        verbose=2,
    )
    end = max(history.epoch, default=max(initial_epoch, epochs - 1)) + 1
    if backup_dir is not None and marked is None:
        _mark_phase_end(backup_dir, end)
    return end


PHASE_END = "phase_end.json"


def _phase_end(backup_dir: Path) -> int | None:
    try:
        return json.loads((backup_dir / PHASE_END).read_text())["end"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _mark_phase_end(backup_dir: Path, end: int) -> None:
    partial = backup_dir / f"{PHASE_END}.{os.getpid()}.partial"
    partial.write_text(json.dumps({"end": end}))
    os.replace(partial, backup_dir / PHASE_END)


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
