"""Learning-rate schedulers: one conf/scheduler/<name>.yaml each, applied to each training phase.

A phase (the head's epochs, then fine-tuning's) has its own optimizer, starting learning rate and
epochs, and the scheduler applies to each on its own: cosine decays a phase's learning rate over
that phase's steps; plateau watches that phase's epochs. The learning rate each epoch starts with
is logged by simpsons.training.MlflowEpochMetrics (metric `lr`).
"""

from __future__ import annotations

import keras
from omegaconf import DictConfig

from simpsons.config import check_choice


def scheduled(optimizer: keras.optimizers.Optimizer, scheduler: DictConfig, steps: int) -> keras.optimizers.Optimizer:
    """`optimizer`, its learning rate following `scheduler` over a phase of `steps` training steps.

    cosine hands the optimizer a CosineDecay from its learning rate over the phase's steps (Keras
    optimizers take a schedule in place of a learning rate; it is evaluated at every step); the
    other schedulers leave it as it is. The optimizer must be new: a phase's steps count from 0.
    """
    check_choice("scheduler", scheduler.name)
    if scheduler.name == "cosine":
        optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate(optimizer), decay_steps=steps, alpha=float(scheduler.alpha)
        )
    return optimizer


def callbacks(scheduler: DictConfig) -> list[keras.callbacks.Callback]:
    """The Keras callbacks a phase's fit needs for `scheduler`: a new ReduceLROnPlateau for plateau
    (its count of epochs without improvement starts again with each phase), else none."""
    check_choice("scheduler", scheduler.name)
    if scheduler.name != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=scheduler.monitor,
            factor=float(scheduler.factor),
            patience=int(scheduler.patience),
            min_delta=float(scheduler.min_delta),
            cooldown=int(scheduler.cooldown),
            min_lr=float(scheduler.min_lr),
            verbose=1,
        )
    ]


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's next step (a schedule's value at its current step)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
