"""Optimizer registry: one conf/optimizer/<name>.yaml per keras.optimizers class."""

from __future__ import annotations

import keras
from omegaconf import DictConfig, OmegaConf

from simpsons import checks
from simpsons.config import check_choice
from simpsons.errors import ConfigError


def build_optimizer(cfg: DictConfig) -> keras.optimizers.Optimizer:
    """keras.optimizers.<keras_class>(learning_rate=lr, **kwargs)."""
    check_choice("optimizer", cfg.name)
    optimizer_class = getattr(keras.optimizers, cfg.keras_class, None)
    if not isinstance(optimizer_class, type) or not issubclass(optimizer_class, keras.optimizers.Optimizer):
        raise ConfigError(checks.keras_class_error(cfg.keras_class) or f"{cfg.keras_class!r} is not an optimizer")
    lr = cfg.lr
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"optimizer.lr={lr!r} is invalid; expected a positive number")
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if cfg.kwargs else {}
    try:
        return optimizer_class(learning_rate=float(lr), **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optimizer {cfg.name!r}: {error}") from error
