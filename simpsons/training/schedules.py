"""Learning-rate schedulers: one conf/scheduler/<name>.yaml each, applied to each training phase.

A phase (the head's epochs, then fine-tuning's) has its own optimizer, starting learning rate and
epochs, and the scheduler applies to each on its own: cosine decays a phase's learning rate over
that phase's steps; plateau watches that phase's epochs. The learning rate each epoch starts with
is logged by the callbacks (callbacks.py), as its log10: the `epoch/log10_lr` curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from simpsons.settings import MONITORS, CosineSchedule, PlateauSchedule, ScheduleSettings
from simpsons.training.callbacks import ResumedReduceLROnPlateau, learning_rate


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
