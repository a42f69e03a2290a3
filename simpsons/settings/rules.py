"""The rules on settings' values: tests of a value, and the one-line messages that say what is accepted.

Shared by the training and ensemble settings (simpsons/settings/train.py, ensemble.py). The
backbone's, optimizer's and model's rules are here rather than in backbones.py, optimizers.py and
model.py: those import Keras at load time, and the check before a sweep and `--help` must not load
TensorFlow. Nothing here imports TensorFlow, Keras or MLflow. (The data's messages, which the
check of data folders shares with the job, are in data.py, which loads TensorFlow only to decode.)
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from simpsons import config

# Keras's backends a job can run on (simpsons/training/backend.py sets KERAS_BACKEND before Keras loads).
BACKENDS = ("tensorflow", "jax")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies
CLASS_WEIGHTS = ("none", "balanced")  # how each class's loss is weighed (simpsons/training/phases.py)
# The per-epoch metrics a run may keep its best epoch by, or stop early on, and which way is better.
MONITORS = {"val_accuracy": "max", "val_loss": "min"}
TTA_MODES = ("none", "flip")  # test-time augmentation of validation and test outputs
TEST_LAYOUTS = ("folders", "flat")
# keras.optimizers classes that take learning_rate alone (tests/test_settings.py holds this to Keras).
KERAS_OPTIMIZERS = (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lamb",
    "Lion",
    "Muon",
    "Nadam",
    "RMSprop",
    "SGD",
    "ScheduleFreeAdamW",
)
XLA_NEEDS_NO_DETERMINISM = "jit_compile=true needs deterministic=false (Keras turns XLA off under op determinism)"

# Value rules: a key, a test of its value, and what is accepted.


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive(value: object) -> bool:
    return is_number(value) and value > 0


def is_boolean(value: object) -> bool:
    return isinstance(value, bool)


def is_auto_or_boolean(value: object) -> bool:
    return value == "auto" or isinstance(value, bool)


def is_seed(value: object) -> bool:
    return is_whole(value) and 0 <= value < 2**32


def is_fraction_below_one(value: object) -> bool:
    return is_number(value) and 0 <= value < 1


def is_name(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


@dataclass(frozen=True)
class Rule:
    key: str
    holds: Callable[[Any], bool]
    accepted: str


TRUE_OR_FALSE = "true or false"
A_SEED = "an integer in [0, 2**32)"


def judged(settings: object, prefix: str, rules: tuple[Rule, ...]) -> list[str]:
    """One message per key whose value breaks its rule; a MISSING value is said as required instead."""
    errors = []
    for rule in rules:
        value = getattr(settings, rule.key)
        if not is_missing(value) and not rule.holds(value):
            errors.append(f"{prefix}{rule.key}={value!r} is invalid; expected {rule.accepted}")
    return errors


def is_missing(value: object) -> bool:
    return isinstance(value, str) and value == MISSING


def listed(options: tuple[str, ...] | list[str]) -> str:
    return ", ".join(options)


def choice_error(group: str, choice: object) -> str | None:
    """E.g. "unknown backbone 'resnet9000'; choose one of: convnext_tiny, ..." (conf/<group>/*.yaml)."""
    options = config.group_options(group)
    if choice in options:
        return None
    return f"unknown {group} {choice!r}; choose one of: {listed(options)}"


def image_size_error(backbone: str, min_image_size: int, image_size: int) -> str | None:
    if image_size >= min_image_size:
        return None
    return f"image_size={image_size} is below the minimum of backbone {backbone!r}; use image_size >= {min_image_size}"


def weights_error(weights: str | None) -> str | None:
    """`imagenet`, null (random init) or an existing weights file."""
    if weights is None or weights == "imagenet" or Path(weights).expanduser().is_file():
        return None
    return f"backbone.weights={weights!r} is not a file; use imagenet, null, or a path to a weights file"


def gpu_may_be_visible() -> bool:
    """False when TensorFlow surely sees no GPU, asked without loading it: CUDA hides every device,
    or the machine has no NVIDIA device node. The job asks TensorFlow itself (simpsons/training/runtime.py)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def missing_errors(settings: Any) -> list[str]:
    """One message per value the YAML left to the command line (???) and the command line did not set."""
    missing = sorted(missing_keys(settings, ""))
    return [f"{key} is required (it is ???); set it on the command line, e.g. {key}=..." for key in missing]


def missing_keys(settings: Any, prefix: str) -> list[str]:
    keys = []
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value):
            keys += missing_keys(value, f"{prefix}{item.name}.")
        elif is_missing(value):
            keys.append(f"{prefix}{item.name}")
    return keys


def accepted(kind: type, key: str) -> str | None:
    """What `kind`'s rule for `key` accepts (None without a rule): said when a value of the wrong
    type stops Hydra before any rule could judge it (simpsons/hydra_jobs.py)."""
    rules = getattr(kind, "RULES", ())
    return next((rule.accepted for rule in rules if rule.key == key), None)


def one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


# What each backend needs installed, and how to install it (pyproject.toml's extras).
BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", 'pip install -e . (or ".[gpu]" on a GPU)'),
    "jax": ("jax", 'pip install -e ".[jax]" (or jax[cuda12] on a GPU)'),
}


def backend_errors(backend: str) -> list[str]:
    """The backend's package, found without importing it; an unknown backend is its rule's to say."""
    if backend not in BACKEND_PACKAGES:
        return []
    package, install = BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(package) is not None:
        return []
    others = [name for name, (other, _) in BACKEND_PACKAGES.items() if importlib.util.find_spec(other) is not None]
    instead = f", or use backend={others[0]}" if others else ""
    return [f"backend={backend} needs {package}, which is not installed: {install}{instead}"]
