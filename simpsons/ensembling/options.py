"""The ensemble's own config keys (conf/ensemble.yaml), checked before anything heavy is imported."""

from __future__ import annotations

from omegaconf import DictConfig

from simpsons.config import RETRY_SECONDS
from simpsons.errors import ConfigError

CHOICES = {"method": ("mean", "greedy"), "weights": ("equal", "val_accuracy"), "direction": ("max", "min")}
BAD_NAME_CHARACTERS = ("/", ":")  # MLflow refuses them in a registered model's name


def check_options(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad value and what would be accepted."""
    for key, accepted in CHOICES.items():
        if cfg[key] not in accepted:
            raise ConfigError(f"{key}={cfg[key]!r} is unknown; use one of: {', '.join(accepted)}")
    if not isinstance(cfg.top_n, int) or isinstance(cfg.top_n, bool) or cfg.top_n < 1:
        raise ConfigError(f"top_n={cfg.top_n!r} is invalid; expected an integer >= 1")
    for key in ("register", "calibrate"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} is invalid; expected true or false")
    retry = cfg.tracking.get("retry_seconds")
    if not isinstance(retry, int) or isinstance(retry, bool) or not RETRY_SECONDS[0] <= retry <= RETRY_SECONDS[1]:
        raise ConfigError(f"tracking.retry_seconds={retry!r} is invalid; expected an integer from 5 to 900")
    name = cfg.registered_model
    if not isinstance(name, str) or not name.strip() or any(c in name for c in BAD_NAME_CHARACTERS):
        raise ConfigError(f"registered_model={name!r} is invalid; expected a non-empty name without '/' or ':'")
