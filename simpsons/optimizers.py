"""Optimizer registry: one conf/optimizer/<name>.yaml per keras.optimizers class."""

from __future__ import annotations

import keras

from simpsons.errors import ConfigError
from simpsons.settings import OptimizerSettings


def build_optimizer(settings: OptimizerSettings, lr: float | None = None) -> keras.optimizers.Optimizer:
    """keras.optimizers.<keras_class>(learning_rate=lr, **kwargs), at `settings.lr` unless `lr` is
    given (fine-tuning's). OptimizerSettings.errors() has judged the class and the rate."""
    optimizer_class = getattr(keras.optimizers, settings.keras_class)
    try:
        return optimizer_class(learning_rate=float(settings.lr if lr is None else lr), **settings.kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optimizer {settings.name!r}: {error}") from error
