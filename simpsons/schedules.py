"""Learning-rate schedulers: one conf/scheduler/<name>.yaml each, applied to each training phase.

A phase (the head's epochs, then fine-tuning's) has its own optimizer, starting learning rate and
epochs, and the scheduler applies to each on its own: cosine decays a phase's learning rate over
that phase's steps; plateau watches that phase's epochs. The learning rate each epoch starts with
is logged by simpsons.training.MlflowEpochMetrics (metric `lr`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from simpsons.settings import MONITORS, CosineSchedule, PlateauSchedule, ScheduleSettings


def scheduled(
    optimizer: keras.optimizers.Optimizer, scheduler: ScheduleSettings, steps: int
) -> keras.optimizers.Optimizer:
    """`optimizer`, its learning rate following `scheduler` over a phase of `steps` training steps.

    cosine hands the optimizer a CosineDecay from its learning rate over the phase's steps (Keras
    optimizers take a schedule in place of a learning rate; it is evaluated at every step); the
    other schedulers leave it as it is. The optimizer must be new: a phase's steps count from 0.
    """
    if isinstance(scheduler, CosineSchedule):
        optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate(optimizer), decay_steps=steps, alpha=float(scheduler.alpha)
        )
    return optimizer


def callbacks(scheduler: ScheduleSettings, replay: Sequence[tuple[int, float]] = ()) -> list[keras.callbacks.Callback]:
    """The Keras callbacks a phase's fit needs for `scheduler`: plateau's ReduceLROnPlateau, new
    for each phase (its count of epochs without improvement starts again), else none.

    `replay`: the phase's (epoch, monitored value) from before a resume, which the callback counts
    as if the run had never stopped. The learning rate it had lowered to comes back with the
    optimizer's backup.
    """
    if not isinstance(scheduler, PlateauSchedule):
        return []
    plateau = ResumedReduceLROnPlateau(
        replay,
        monitor=scheduler.monitor,
        mode=MONITORS[scheduler.monitor],
        factor=float(scheduler.factor),
        patience=int(scheduler.patience),
        min_delta=float(scheduler.min_delta),
        cooldown=int(scheduler.cooldown),
        min_lr=float(scheduler.min_lr),
        verbose=1,
    )
    return [plateau]


class ResumedReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras's ReduceLROnPlateau, told the phase's epochs that ran before a resume (`replay`).

    It replays them when training begins, before BackupAndRestore (the last of fit's callbacks)
    restores the optimizer: the learning rates the replay sets are then overwritten by the ones
    backed up, which the same epochs had set.
    """

    def __init__(self, replay: Sequence[tuple[int, float]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = list(replay)

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        verbose, self.verbose = self.verbose, 0  # these epochs said so when they ran
        for epoch, value in self.replay:
            self.on_epoch_end(epoch, {self.monitor: value})
        self.verbose = verbose


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's next step (a schedule's value at its current step)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
