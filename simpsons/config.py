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
CLASS_WEIGHTS = ("none", "balanced")  # how each class's loss is weighed (simpsons/training.py)
SWEEP_ID_VARIABLE = "SIMPSONS_SWEEP_ID"  # conf/train.yaml sets it for every job of a multirun
# tracking.retry_seconds: MLflow's backoff factor is a whole number of seconds (>= 5 s with 2 retries), and
# it takes at most 10 retries of at most 120 s each (simpsons/tracking/connection.py).
RETRY_SECONDS = (5, 900)
# The per-epoch metrics a run may keep its best epoch by, or stop early on, and which way is better.
MONITORS = {"val_accuracy": "max", "val_loss": "min"}


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
    # A value as it is typed on the command line (true, null), for the --help text.
    OmegaConf.register_new_resolver("typed", as_typed, replace=True)


def as_typed(value: object) -> str:
    """How a config value is written in an override: true/false/null, not Python's True/None."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


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


def _positive(value: object) -> bool:
    return _number(value) and value > 0


TRAINING_KEY_CHECKS = [  # key, test, what is accepted
    ("dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("image_size", lambda v: _whole(v) and v > 0, "a positive integer"),
    ("epochs", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("seed", lambda v: _whole(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("deterministic", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("jit_compile", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    ("class_weight", lambda v: v in CLASS_WEIGHTS, " or ".join(CLASS_WEIGHTS)),
    ("label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("backbone.min_image_size", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("optimizer.lr", _positive, "a positive number"),
    ("data.val_split", lambda v: _number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    ("data.split_seed", lambda v: _whole(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("data.min_images_per_class", lambda v: _whole(v) and v >= 2, "an integer >= 2"),
    ("cache", lambda v: isinstance(v, bool), "true or false"),
    ("finetune.layers", lambda v: _whole(v) and v >= 0, "an integer >= 0"),
    ("finetune.epochs", lambda v: _whole(v) and v >= 1, "an integer >= 1"),
    ("finetune.lr", lambda v: v is None or _positive(v), "null or a positive number"),
    ("monitor", lambda v: v in MONITORS, f"one of {', '.join(MONITORS)}"),
    ("early_stopping.patience", lambda v: v is None or (_whole(v) and v >= 0), "null (off) or an integer >= 0"),
    ("early_stopping.monitor", lambda v: v is None or v in MONITORS, f"null (monitor's), {', '.join(MONITORS)}"),
    ("early_stopping.min_delta", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("reuse", lambda v: isinstance(v, bool), "true or false"),
    ("tracking.experiment", lambda v: isinstance(v, str) and v.strip() != "", "a non-empty name"),
    ("tracking.heartbeat_seconds", _positive, "a positive number"),
    ("tracking.stale_after", _positive, "a positive number"),
    (
        "tracking.retry_seconds",
        lambda v: _whole(v) and RETRY_SECONDS[0] <= v <= RETRY_SECONDS[1],
        "an integer from 5 to 900",
    ),
    ("gpu.memory_growth", lambda v: isinstance(v, bool), "true or false"),
    ("gpu.one_per_job", lambda v: isinstance(v, bool), "true or false"),
]


def training_key_errors(cfg: DictConfig) -> list[str]:
    """One message per required value left unset (???) and per plain key out of range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    errors = [f"{key} is required (it is ???); set it on the command line, e.g. {key}=..." for key in missing]
    for key, is_valid, accepted in TRAINING_KEY_CHECKS:
        if key in missing:
            continue
        value = OmegaConf.select(cfg, key)
        if not is_valid(value):
            errors.append(f"{key}={value!r} is invalid; expected {accepted}")
    return errors


def check_training_keys(cfg: DictConfig) -> None:
    """Required values are set, and the plain keys of conf/train.yaml are in range (else the first error)."""
    errors = training_key_errors(cfg)
    if errors:
        raise ConfigError(errors[0])
