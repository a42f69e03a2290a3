"""Names people read in the MLflow UI and the terminal: runs, sweeps and logged models.

One scheme, names of at most about 30 characters (the runs table's default column): the keys in
one fixed order (ORDER), whatever the command line's; a config group's choice by its name alone
('rmsprop', 'mobilenet'), any other value as `key=value` with a short key ('drop=0.2', 'lr=1e-3'),
an image size in px ('150px'). A sweep's parent is named by what it sweeps, how many values each,
then when ('opt×drop (2×2) 11-28 12:40'); its jobs by their swept values ('rmsprop drop=0.2'),
which fall back to the values alone ('rmsprop 0.2') when labelled they would not fit: the parent
just above is their legend. What all jobs share (the experiment preset, the data, constant
overrides) is said once, by the parent's description. A single run: its backbone and what differs
from the defaults ('vgg16 lr=1e-3 32px ep=2'), cut at a word to fit. Every override stays in the
runs' params and `hydra.overrides` tag. Logged models, listed without their sweep, add the backbone:
'rmsprop drop=0_2 resnet50v2'. No TensorFlow here.
"""

from __future__ import annotations

import math
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
NOT_IN_NAMES_UNDER = ("tracking.", "hydra.", "gpu.", "trial.", "tags.")  # tags.*: the user's run tags, shown as tags
# Keys often swept, in short: 'drop=0.2' rather than 'dropout=0.2'; values keep their units.
WORDS = {
    "dropout": "drop",
    "batch_size": "bs",
    "epochs": "ep",
    "augment": "aug",
    "finetune.layers": "ft_layers",
    "finetune.lr": "ft_lr",
    "finetune.epochs": "ft_ep",
}
UNITS = {"image_size": "{}px"}
# In a sweep's name, config groups in short too: 'opt×drop (2×2)'.
GROUP_WORDS = {"backbone": "net", "optimizer": "opt", "scheduler": "sched", "experiment": "exp"}
# The order keys appear in, in every name: what is trained (presets, data, backbone), how (optimizer,
# schedule, augmentation), then the numbers; any other key after these, alphabetically.
ORDER = (
    "experiment",
    "variant",
    "data",
    "backbone",
    "optimizer",
    "scheduler",
    "augment",
    "optimizer.lr",
    "dropout",
    "image_size",
    "batch_size",
    "epochs",
    "finetune.layers",
    "finetune.lr",
    "finetune.epochs",
    "class_weight",
    "label_smoothing",
    "tta",
    "seed",
)
MAX_NAME = 30  # characters: the runs table's default name column
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
    """The keys of a grid with more than one value, what tells its jobs apart, in ORDER."""
    found = {_plain(key): values for key, values in grid.items() if len(values) > 1}
    return {key: found[key] for key in ordered(found)}


def ordered(keys: Iterable[str]) -> list[str]:
    """`keys` in ORDER; keys it does not list after those, alphabetically."""
    return sorted(keys, key=lambda key: (ORDER.index(key) if key in ORDER else len(ORDER), key))


def constant_overrides(overrides: Iterable[str], swept_keys: list[str]) -> list[str]:
    """The overrides, as typed, that are the same in every job of a sweep."""
    return [override for override in overrides if _plain(_split(override)[0]) not in swept_keys]


def run_name(overrides: Iterable[str], swept_keys: list[str] | None = None, backbone: str | None = None) -> str:
    """A run's name. A sweep's job (`swept_keys` given, not empty): its values of the swept keys,
    in ORDER, e.g. 'rmsprop drop=0.2' (optimizer×drop), or 'rmsprop 0.2' when labelled it would be
    longer than MAX_NAME. A run alone: the backbone, then the overrides that change what is trained,
    e.g. 'vgg16 lr=1e-3 32px', cut to MAX_NAME at a word.
    """
    values = _values(overrides)
    if swept_keys:
        parts = [(key, values[key]) for key in ordered(swept_keys) if key in values]
        labelled = _join(parts, labelled=True)
        return labelled if len(labelled) <= MAX_NAME else _join(parts, labelled=False)
    return fit(_described(values, backbone))


def fit(name: str, width: int = MAX_NAME) -> str:
    """`name`, or its first words and '…' within `width` characters."""
    if len(name) <= width:
        return name
    kept = ""
    for word in name.split(" "):
        if len(f"{kept} {word}".strip()) > width - 1:
            break
        kept = f"{kept} {word}".strip()
    return f"{kept or name[: width - 1]}…"


def model_name(overrides: Iterable[str], swept_keys: list[str] | None, backbone: str) -> str:
    """A logged model's name, which the Models tab shows without its sweep: the swept keys with their
    values, then the backbone where they do not say it, e.g. 'rmsprop drop=0_2 resnet50v2'; a run
    alone's name. The characters MLflow refuses in model names are replaced."""
    if swept_keys:
        described = run_name(overrides, swept_keys)
        name = described if "backbone" in swept_keys else f"{described} {backbone}"
    else:
        name = run_name(overrides, None, backbone)
    return MODEL_NAME_FORBIDDEN.sub("_", name)


def sweep_name(grid: Mapping[str, list[str]], started: datetime | None = None) -> str:
    """E.g. 'opt×drop (2×2) 11-28 12:40': what was swept (short, in ORDER), how many values each (with
    three keys or more, how many jobs: 'net×opt×lr… (16) ...', the keys cut to fit MAX_NAME), when
    (month-day and time: the run's start time has the year)."""
    started = started or datetime.now()
    varying = swept(grid)
    if not varying:
        return f"1 job {started:%m-%d %H:%M}"
    counts = [len(values) for values in varying.values()]
    sizes = f" ({'×'.join(map(str, counts))})" if len(counts) <= 2 else f" ({math.prod(counts)})"  # jobs
    keys = [GROUP_WORDS.get(key) or WORDS.get(key) or _label(key) for key in varying]
    width = MAX_NAME - len(" 11-28 12:40") - len(sizes)
    what = "×".join(keys)
    while len(what) > width and len(keys) > 1:  # the first keys, then '…'
        keys.pop()
        what = "×".join(keys) + "…"
    return f"{what}{sizes} {started:%m-%d %H:%M}"


def search_name(keys: Iterable[str], n_trials: object, started: datetime | None = None) -> str:
    """An Optuna search's parent, e.g. 'opt×lr×drop… (16) 12-03 06:40': what it searches (short, in
    ORDER, cut to fit MAX_NAME), how many trials, when."""
    started = started or datetime.now()
    labels = [GROUP_WORDS.get(key) or WORDS.get(key) or _label(key) for key in ordered(keys)]
    sizes = f" ({n_trials})"
    width = MAX_NAME - len(" 11-28 12:40") - len(sizes)
    what = "×".join(labels)
    while len(what) > width and len(labels) > 1:
        labels.pop()
        what = "×".join(labels) + "…"
    return f"{what}{sizes} {started:%m-%d %H:%M}"


def _values(overrides: Iterable[str]) -> dict[str, str]:
    return {_plain(key): value for key, value in (_split(o) for o in overrides)}


def _described(values: dict[str, str], backbone: str | None) -> str:
    """A run alone: its backbone, then what it changes, labelled."""
    parts = [(key, values[key]) for key in ordered(values) if key != "backbone" and not _not_in_names(key)]
    return " ".join(filter(None, [backbone or values.get("backbone"), _join(parts, labelled=True)]))


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _plain(key: str) -> str:
    """The config key of an override's key: 'backbone.kwargs.alpha' for '++backbone.kwargs.alpha'."""
    return key.lstrip("+~")


def _not_in_names(key: str) -> bool:
    return key in NOT_IN_NAMES or key.startswith(NOT_IN_NAMES_UNDER)


def _join(parts: list[tuple[str, str]], labelled: bool) -> str:
    """'mobilenetv2 drop=0.2 160px' (labelled) or 'mobilenetv2 0.2 160px': a config group's choice
    alone, a path by its last component, an image size in px; labelled, the keys of WORDS in their
    short form and any other key by its last part (its full key when two would read alike)."""
    leaves = [_label(key) for key, _ in parts if key not in WORDS and not _is_group(key)]
    words = []
    for key, value in parts:
        shown = PurePath(value).name or value if "/" in value else value
        if key in UNITS:
            words.append(UNITS[key].format(shown))
        elif not labelled or (_is_group(key) and key not in WORDS):
            words.append(shown)
        elif key in WORDS:
            words.append(f"{WORDS[key]}={shown}")
        else:
            words.append(f"{key if leaves.count(_label(key)) > 1 else _label(key)}={shown}")
    return " ".join(words)


def _label(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_group(key: str) -> bool:
    """A config group's choice (backbone=mobilenet), as opposed to a value (backbone.weights=null)."""
    return "." not in key and (CONF_DIR / key).is_dir()
