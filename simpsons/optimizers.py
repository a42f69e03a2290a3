"""Optimizer registry: one conf/optimizer/<name>.yaml per keras.optimizers class."""

from __future__ import annotations

import inspect

import keras

from simpsons.errors import ConfigError
from simpsons.settings import OptimizerSettings


def build_optimizer(settings: OptimizerSettings, lr: float | None = None) -> keras.optimizers.Optimizer:
    """keras.optimizers.<keras_class>(learning_rate=lr, weight_decay=..., **kwargs), at `settings.lr`
    unless `lr` is given (fine-tuning's). OptimizerSettings.errors() has judged the class, the rate
    and the weight decay."""
    optimizer_class = getattr(keras.optimizers, settings.keras_class)
    try:
        return optimizer_class(
            learning_rate=float(settings.lr if lr is None else lr),
            weight_decay=_weight_decay(settings.weight_decay, optimizer_class),
            **settings.kwargs,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optimizer {settings.name!r}: {error}") from error


def _weight_decay(weight_decay: float, optimizer_class: type) -> float | None:
    """What Keras takes for `weight_decay`: after each step it shrinks every trainable weight by
    learning rate x weight_decay of itself (decoupled from the gradients, as in AdamW).

    0 is off. For most classes that is None, Keras's own off, which skips the step altogether: the
    same results as before the key existed. A class whose own default is a number (AdamW's 0.004)
    refuses None; 0.0 there shrinks nothing.
    """
    if weight_decay > 0:
        return float(weight_decay)
    own = inspect.signature(optimizer_class).parameters.get("weight_decay")
    return None if own is None or own.default is None else 0.0
