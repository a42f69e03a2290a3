"""Where the project lives, the OmegaConf resolvers its configs use, and checks on plain keys."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simpsons.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
SWEEP_ID_VARIABLE = "SIMPSONS_SWEEP_ID"  # conf/train.yaml sets it for every job of a multirun


def default_tracking_uri() -> str:
    """SQLite store at the project root: the one a plain `mlflow ui` there opens."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri_from_environment() -> str:
    """What conf/tracking/default.yaml resolves to: MLFLOW_TRACKING_URI, else the default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def new_invocation_id() -> str:
    return uuid.uuid4().hex[:8]


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("default_tracking_uri", default_tracking_uri, replace=True)
    # One id per command: cached in the config, and Hydra copies a multirun's cache into every
    # job's config (as it does for ${now:}), so the driver and all jobs, under any launcher, see
    # the same id. It names the sweep and keeps output folders of commands started together apart.
    OmegaConf.register_new_resolver("invocation_id", new_invocation_id, use_cache=True, replace=True)


def group_options(group: str) -> list[str]:
    """The choices of a config group, e.g. group_options("backbone") -> ["convnext_tiny", ...]."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def check_choice(group: str, choice: str) -> None:
    options = group_options(group)
    if choice not in options:
        raise ConfigError(f"unknown {group} {choice!r}; choose one of: {', '.join(options)}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TRAINING_KEY_CHECKS = [  # key, test, what is accepted
    ("dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("image_size", lambda v: _whole(v) and v > 0, "a positive integer"),
    ("epochs", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("seed", lambda v: _whole(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("deterministic", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("jit_compile", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("data.val_split", lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    ("data.split_seed", lambda v: _whole(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("data.min_images_per_class", lambda v: _whole(v) and v >= 2, "an integer >= 2"),
    ("cache", lambda v: isinstance(v, bool), "true or false"),
    ("finetune.layers", lambda v: _whole(v) and v >= 0, "an integer >= 0"),
    ("finetune.epochs", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("finetune.lr", lambda v: v is None or (_number(v) and v > 0), "null or a positive number"),
]


def check_training_keys(cfg: DictConfig) -> None:
    """Required values are set, and the plain keys of conf/train.yaml are in range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required (it is ???); set it on the command line, e.g. {missing[0]}=...")
    for key, is_valid, accepted in TRAINING_KEY_CHECKS:
        value = OmegaConf.select(cfg, key)
        if not is_valid(value):
            raise ConfigError(f"{key}={value!r} is invalid; expected {accepted}")
