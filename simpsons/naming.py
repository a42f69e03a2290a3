"""Names people read in the MLflow UI and the terminal: runs, sweeps and logged models.

The UI's runs table cuts names at about 20-30 characters, so a sweep's jobs are named by what
tells them apart, the swept values, in the order they were swept; what all jobs share (the
experiment preset, the data, constant overrides) is said once, by the sweep's parent. Every
override stays in the runs' params and `hydra.overrides` tag. No TensorFlow here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import PurePath

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from simpsons.config import CONF_DIR

# Overrides that say where things are or how they are tracked, not what is trained, and the
# experiment preset (its sweep's parent names it): left out of a single run's name. A sweep's jobs
# still show them when they are what was swept.
NOT_IN_NAMES = ("data", "experiment", "tracking", "cache_dir", "reuse", "data.dir", "data.root", "data.test_root")
NOT_IN_NAMES_UNDER = ("tracking.", "hydra.", "gpu.")
# Keys often swept whose last part is long or unclear, in short: sibling runs must differ within the
# ~20 characters the runs table shows ('mobilenet dropout=0.2' and '...0.4' would not).
WORDS = {
    "dropout": "drop={}",
    "image_size": "{}px",
    "batch_size": "bs={}",
    "epochs": "ep={}",
    "augment": "aug={}",
    "finetune.layers": "ft_layers={}",
    "finetune.lr": "ft_lr={}",
    "finetune.epochs": "ft_ep={}",
}
# MLflow refuses these characters in a logged model's name.
MODEL_NAME_FORBIDDEN = re.compile(r"""[/:.%"']""")


def sweep_grid(sweeper_params: Mapping[str, str], overrides: Iterable[str]) -> dict[str, list[str]]:
    """Each key of a multirun and its values, in the order Hydra's basic sweeper takes them.

    The sweeper's params (an experiment's `hydra.sweeper.params`) come first, then the command
    line's overrides, which replace a param of the same key but keep its place. Inside a Hydra
    app (or compose), glob sweeps expand as Hydra expands them.
    """
    arguments = [f"{key}={value}" for key, value in sweeper_params.items()] + list(overrides)
    hydra = GlobalHydra.instance()
    parser = OverridesParser.create(config_loader=hydra.config_loader() if hydra.is_initialized() else None)
    grid: dict[str, list[str]] = {}
    for override in parser.parse_overrides(arguments):  # glob(...) over a group's options needs the config loader
        key = override.get_key_element()
        if override.is_sweep_override():
            grid[key] = list(override.sweep_string_iterator())
        else:
            grid[key] = [override.get_value_element_as_str()]
    return grid


def swept(grid: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The keys of a grid with more than one value: what tells its jobs apart."""
    return {_plain(key): values for key, values in grid.items() if len(values) > 1}


def constant_overrides(overrides: Iterable[str], swept_keys: list[str]) -> list[str]:
    """The overrides, as typed, that are the same in every job of a sweep."""
    return [override for override in overrides if _plain(_split(override)[0]) not in swept_keys]


def run_name(overrides: Iterable[str], swept_keys: list[str] | None = None, backbone: str | None = None) -> str:
    """A run's name, e.g. 'rmsprop drop=0.2' for a job of an optimizer x dropout sweep.

    In a sweep (`swept_keys` given, not empty): the job's values of the swept keys, in sweep order.
    Alone: the backbone, then the overrides that change what is trained, e.g.
    'vgg16 32px lr=1e-3'.
    """
    values = {_plain(key): value for key, value in (_split(o) for o in overrides)}
    if swept_keys:
        return _join([(key, values[key]) for key in swept_keys if key in values])
    parts = [(key, value) for key, value in values.items() if key != "backbone" and not _not_in_names(key)]
    return " ".join(filter(None, [backbone or values.get("backbone"), _join(parts)]))


def sweep_name(grid: Mapping[str, list[str]], started: datetime | None = None) -> str:
    """E.g. '2026-11-28 12:40 optimizer×dropout (2×2)': when, what was swept, and how many values each."""
    started = started or datetime.now()
    varying = swept(grid)
    what = "×".join(_label(key) for key in varying) or "1 job"
    sizes = f" ({'×'.join(str(len(values)) for values in varying.values())})" if varying else ""
    return f"{started:%Y-%m-%d %H:%M} {what}{sizes}"


def model_name(name: str, backbone: str) -> str:
    """A logged model's name: its run's, then the backbone where the run's does not say it (a
    sweep's jobs may not), with the characters MLflow refuses in model names replaced, e.g.
    'adam drop=0_2 resnet50v2'. The run's name comes first: the Models tab cuts names short too."""
    full = name if backbone in name.split(" ") else f"{name} {backbone}".strip()
    return MODEL_NAME_FORBIDDEN.sub("_", full)


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _plain(key: str) -> str:
    """The config key of an override's key: 'backbone.kwargs.alpha' for '++backbone.kwargs.alpha'."""
    return key.lstrip("+~")


def _not_in_names(key: str) -> bool:
    return key in NOT_IN_NAMES or key.startswith(NOT_IN_NAMES_UNDER)


def _join(parts: list[tuple[str, str]]) -> str:
    """'mobilenetv2 drop=0.2 160px': a config group's choice alone, keys of WORDS in their short
    form, any other key by its last part (its full key when two would read alike); a path by its
    last component."""
    leaves = [_label(key) for key, _ in parts if key not in WORDS and not _is_group(key)]
    words = []
    for key, value in parts:
        shown = PurePath(value).name or value if "/" in value else value
        if key in WORDS:
            words.append(WORDS[key].format(shown))
        elif _is_group(key):
            words.append(shown)
        else:
            words.append(f"{key if leaves.count(_label(key)) > 1 else _label(key)}={shown}")
    return " ".join(words)


def _label(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_group(key: str) -> bool:
    """A config group's choice (backbone=mobilenet), as opposed to a value (backbone.weights=null)."""
    return "." not in key and (CONF_DIR / key).is_dir()
