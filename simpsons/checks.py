"""Every check of a training config that needs neither data nor TensorFlow, in one place.

Before anything starts, the Hydra callback (simpsons/sweep.py) runs them on every job of a
multirun, or on the one job of a run, and exits 2 with one line per bad value; nothing is created
in MLflow. A job runs them again before it touches MLflow (simpsons/job.py), for launchers and
sweepers whose jobs this driver cannot list, and for callers of simpsons.job.train.

Nothing here creates a file or imports TensorFlow or Keras: the modules that do (backbones.py,
optimizers.py, model.py, data.py, training.py) take their messages from here, so a value is
judged, and worded, the same before a sweep and inside a job.
"""

from __future__ import annotations

import copy
import difflib
import functools
import glob
import logging
import os
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from simpsons import config
from simpsons.errors import ConfigError

log = logging.getLogger(__name__)

CHECKED_GROUPS = ("backbone", "optimizer", "data", "augment", "scheduler", "experiment", "variant")
# Constructor arguments, passed on as given: any key is accepted under them.
OPEN_KEYS = ("backbone.kwargs", "optimizer.kwargs")
# keras.optimizers classes that take learning_rate alone (tests/test_checks.py holds this to Keras).
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
TEST_LAYOUTS = ("folders", "flat")
# What a plateau scheduler may watch: the validation curves a resumed run reads back, to count its patience on.
PLATEAU_MONITORS = tuple(config.MONITORS)
TTA_MODES = ("none", "flip")  # test-time augmentation of validation and test outputs
XLA_NEEDS_NO_DETERMINISM = "jit_compile=true needs deterministic=false (Keras turns XLA off under op determinism)"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_ABSENT = object()

Probe = Callable[[Any], list[str]]  # a check of the world (files, servers); its argument is hashable


# Messages shared with the modules that build things (they raise ConfigError with them).


def image_size_error(backbone: str, min_image_size: int, image_size: int) -> str | None:
    if image_size >= min_image_size:
        return None
    return f"image_size={image_size} is below the minimum of backbone {backbone!r}; use image_size >= {min_image_size}"


def weights_error(weights: str | None) -> str | None:
    """`imagenet`, null (random init) or an existing weights file."""
    if weights is None or weights == "imagenet" or Path(weights).expanduser().is_file():
        return None
    return f"backbone.weights={weights!r} is not a file; use imagenet, null, or a path to a weights file"


def keras_class_error(keras_class: str) -> str | None:
    if keras_class in KERAS_OPTIMIZERS:
        return None
    accepted = _listed(KERAS_OPTIMIZERS)
    return f"optimizer.keras_class={keras_class!r} is not a keras.optimizers class; use one of: {accepted}"


def augment_error(name: str) -> str | None:
    options = config.group_options("augment")
    return None if name in options else f"augment={name!r} is unknown; use one of: {_listed(options)}"


def layout_error(layout: str) -> str | None:
    if layout in TEST_LAYOUTS:
        return None
    return f"data.test_layout={layout!r} is unknown; use one of: {_listed(TEST_LAYOUTS)}"


def tta_error(tta: Any) -> str | None:
    if tta in TTA_MODES:
        return None
    return f"tta={tta!r} is unknown; use one of: {_listed(TTA_MODES)}"


def missing_root_hint(name: str, data_dir: str | None) -> str:
    """What to do about a missing data.root: for the Kaggle data, how to get it or run the demo."""
    if name == "simpsons":
        return (
            "download the Kaggle data set alexattia/the-simpsons-characters-dataset and unzip it "
            f"into {data_dir} (see README), or run the offline demo: python -m simpsons.train experiment=demo"
        )
    return "point data.root at a folder of <class>/<image> files"


TEST_ROOT_HINT = "set data.test_root=null to train without a test set"
IMAGE_FORMATS = "JPEG, PNG, GIF, BMP or WebP"  # what tf.io.decode_image reads (simpsons/pipeline.py)
LISTED_FILES = 10  # unusable files named in the error of a class without images


# One job's config.


def config_errors(cfg: DictConfig, probed: dict[tuple[Probe, Hashable], list[str]] | None = None) -> list[str]:
    """One message per bad value of one job's config; its `hydra` node, if there, is left alone.

    `probed` remembers the checks of files and servers across the jobs of a sweep, which mostly
    share a store, a cache and data: each is checked once.
    """
    try:
        job = _resolved(cfg)
    except OmegaConfBaseException as error:
        return [f"the config does not resolve: {_one_line(error)}"]
    errors = config.training_key_errors(job)
    errors += _backbone_errors(job) + _optimizer_errors(job) + _scheduler_errors(job) + _run_errors(job)
    probed = {} if probed is None else probed
    for probe, argument in _probes(job):
        if (probe, argument) not in probed:
            probed[(probe, argument)] = probe(argument)
        errors += probed[(probe, argument)]
    return list(dict.fromkeys(errors))


def raise_config_errors(cfg: DictConfig) -> None:
    """config_errors as one ConfigError (one line), for a job about to start."""
    errors = config_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))


def _resolved(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's node, interpolations resolved; a ??? value stays missing."""
    return OmegaConf.create(OmegaConf.to_container(_without_hydra(cfg), resolve=True))


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's own config (what the task function gets), still closed to new keys."""
    if "hydra" not in cfg:
        return cfg
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.set_struct(job, True)
    return job


def _value(job: DictConfig, key: str) -> Any:
    return OmegaConf.select(job, key, throw_on_missing=False)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice_error(group: str, key: str, job: DictConfig) -> list[str]:
    try:
        config.check_choice(group, str(_value(job, key)))
    except ConfigError as error:
        return [str(error)]
    return []


def _backbone_errors(job: DictConfig) -> list[str]:
    errors = _choice_error("backbone", "backbone.name", job)
    image_size, min_image_size = _value(job, "image_size"), _value(job, "backbone.min_image_size")
    if _whole(image_size) and _whole(min_image_size):  # else the key table said so already
        errors.append(image_size_error(str(_value(job, "backbone.name")), min_image_size, image_size))
    weights = _value(job, "backbone.weights")
    errors.append(weights_error(None if weights is None else str(weights)))
    return [error for error in errors if error]


def _optimizer_errors(job: DictConfig) -> list[str]:
    errors = _choice_error("optimizer", "optimizer.name", job)
    return errors + [error for error in [keras_class_error(str(_value(job, "optimizer.keras_class")))] if error]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Each scheduler's keys: key, test, what is accepted.
SCHEDULER_KEY_CHECKS: dict[str, list[tuple[str, Callable[[Any], bool], str]]] = {
    "cosine": [("alpha", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")],
    "plateau": [
        ("monitor", lambda v: v in PLATEAU_MONITORS, f"one of {', '.join(PLATEAU_MONITORS)}"),
        ("factor", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
        ("patience", lambda v: _whole(v) and v >= 0, "an integer >= 0"),
        ("min_delta", lambda v: _number(v) and v >= 0, "a number >= 0"),
        ("cooldown", lambda v: _whole(v) and v >= 0, "an integer >= 0"),
        ("min_lr", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ],
}


def _scheduler_errors(job: DictConfig) -> list[str]:
    errors = _choice_error("scheduler", "scheduler.name", job)
    for key, is_valid, accepted in SCHEDULER_KEY_CHECKS.get(str(_value(job, "scheduler.name")), []):
        value = _value(job, f"scheduler.{key}")
        if not is_valid(value):
            errors.append(f"scheduler.{key}={value!r} is invalid; expected {accepted}")
    return errors


def _run_errors(job: DictConfig) -> list[str]:
    errors = [augment_error(str(_value(job, "augment.name"))), layout_error(str(_value(job, "data.test_layout")))]
    errors.append(tta_error(_value(job, "tta")))
    if _value(job, "jit_compile") is True:
        deterministic = _value(job, "deterministic")
        if deterministic is True:
            errors.append(XLA_NEEDS_NO_DETERMINISM)
        elif deterministic == "auto" and not _gpu_may_be_visible():
            errors.append(f"{XLA_NEEDS_NO_DETERMINISM}; deterministic=auto turns it on here: no GPU is visible")
    errors.append(_liveness_error(_value(job, "tracking.heartbeat_seconds"), _value(job, "tracking.stale_after")))
    return [error for error in errors if error]


def _liveness_error(heartbeat: Any, stale_after: Any) -> str | None:
    """A run on another host is ended KILLED after stale_after seconds without a heartbeat: a
    limit within two beats would end live runs."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (heartbeat, stale_after))
    if not numbers or stale_after > 2 * heartbeat:
        return None  # each key's own range is checked with the plain keys
    return (
        f"tracking.stale_after={stale_after} is within two heartbeats (tracking.heartbeat_seconds={heartbeat}); "
        "use a stale_after above twice the heartbeat"
    )


def _gpu_may_be_visible() -> bool:
    """False when TensorFlow surely sees no GPU, asked without loading it: CUDA hides every device,
    or the machine has no NVIDIA device node. The job asks TensorFlow itself (simpsons/job.py)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


# Checks of the world: files and servers. Each takes one hashable argument and returns messages.


def _probes(job: DictConfig) -> list[tuple[Probe, Hashable]]:
    data = job.data
    root = "???" if OmegaConf.is_missing(data, "root") else data.get("root")
    data_key = (data.get("name"), data.get("dir"), root, data.get("test_root"), bool(data.get("generate")))
    return [
        (_data_root_errors, data_key),
        (_cache_dir_errors, _value(job, "cache_dir")),
        (_store_errors, _value(job, "tracking.uri")),
    ]


def _data_root_errors(data: tuple[str | None, str | None, str | None, str | None, bool]) -> list[str]:
    name, data_dir, root, test_root, generated = data
    if generated:
        return []  # the job generates the demo data on first use
    if root is None:
        return [f"data.root is not set; {missing_root_hint(name, data_dir)}"]
    if root == "???":
        return []  # said as a required value
    if not Path(root).expanduser().is_dir():
        return [f"data.root={root!r} is not a folder; {missing_root_hint(name, data_dir)}"]
    # Checked only with a training folder: without one (the Kaggle data not unzipped) the test
    # folder is missing too, and the hint above covers both.
    if test_root is not None and not Path(test_root).expanduser().is_dir():
        return [f"data.test_root={test_root!r} is not a folder; {TEST_ROOT_HINT}"]
    return _classes_without_images(unnested_root(Path(root).expanduser().resolve()))


def unnested_root(root: Path) -> Path:
    """The training folder, looking through Kaggle's archive, which nests simpsons_dataset/simpsons_dataset/."""
    nested = root / root.name
    if nested.is_dir() and [p.name for p in root.iterdir() if not p.name.startswith(".")] == [root.name]:
        return nested
    return root


def _classes_without_images(root: Path) -> list[str]:
    """Class folders in which Pillow opens no file at all, found here in a moment, before
    TensorFlow loads: a class is fine as soon as one file opens (the job then checks every file
    with TensorFlow's decoder), so this reads about one file per class."""
    from PIL import Image, UnidentifiedImageError  # only this check needs it

    def opens(path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.verify()
            return True
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            return False

    errors = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if files and not any(opens(path) for path in files):
            names = [path.relative_to(root).as_posix() for path in files]
            errors.append(no_usable_images_error(folder.name, root, names))
    return errors


def no_usable_images_error(label: str, root: Path, skipped_names: list[str]) -> str:
    """One line: the class, and its unusable files (the first LISTED_FILES, then how many more)."""
    listed = ", ".join(skipped_names[:LISTED_FILES])
    more = f" and {len(skipped_names) - LISTED_FILES} more" if len(skipped_names) > LISTED_FILES else ""
    return (
        f"class {label!r} in {str(root)!r} has no usable images: its {len(skipped_names)} file(s) are not "
        f"decodable images ({IMAGE_FORMATS}): {listed}{more}"
    )


def _cache_dir_errors(cache_dir: str | None) -> list[str]:
    from simpsons.tracking.store import folder_problem  # MLflow: loaded only when a config is checked

    problem = folder_problem(Path(str(cache_dir)).expanduser().absolute())
    if problem is None:
        return []
    return [f"cache_dir={cache_dir!r} cannot be written ({problem}); use a writable folder (or SIMPSONS_CACHE_DIR)"]


def _store_errors(uri: str | None) -> list[str]:
    from simpsons.tracking import store  # MLflow: loaded only when a config is checked

    try:
        store.check(str(uri))
    except ConfigError as error:
        return [str(error)]
    return []


# Every job of a run or sweep, before the first one (the Hydra callback's part).


def exit_on_bad_jobs(hydra_config: DictConfig) -> None:
    """Check every job of this run or multirun; on any bad value, one line each and exit 2.

    Runs in the driver before anything is created (store, experiment, runs, sweep folder).
    SystemExit passes through Hydra, which catches Exception only.
    """
    _exit_on(job_errors(hydra_config))


def job_errors(hydra_config: DictConfig) -> list[str]:
    """The messages of every job that `hydra_config` (a run's config, or a multirun's) would start."""
    loader = GlobalHydra.instance().config_loader()
    if hydra_config.hydra.mode != RunMode.MULTIRUN:
        jobs = [list(hydra_config.hydra.overrides.task)]
    elif hydra_config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
        try:
            jobs = basic_sweeper_jobs(hydra_config, loader)
        except (HydraException, OmegaConfBaseException) as error:
            return [_one_line(error)]
    else:
        log.info("sweeper %s: each job is checked when it starts", hydra_config.hydra.sweeper.get("_target_"))
        return []
    compose_job, probed = _job_composer(loader, hydra_config), {}
    errors = []
    for overrides in jobs:
        cfg, unknown = composed_job(compose_job, overrides, loader)
        errors += unknown + (config_errors(cfg, probed) if cfg is not None else [])
    return list(dict.fromkeys(errors))


def _job_composer(loader: ConfigLoader, hydra_config: DictConfig) -> Callable[[list[str]], DictConfig]:
    """Composes a job's config as Hydra will, in a few ms instead of a hundred.

    Hydra composes the config groups a job chooses, then applies its other overrides to the
    result. Here each distinct set of group choices is composed once, and every job's other
    overrides are applied to a copy, by the very function Hydra applies them with (hydra-core is
    pinned), so that checking a grid of hundreds of jobs takes seconds.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_job(overrides: list[str]) -> DictConfig:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        groups = tuple(o.input_line for o in parsed if _chooses_a_group(o, loader))
        if groups not in composed:
            composed[groups] = _without_hydra(loader.load_sweep_config(hydra_config, list(groups)))
        cfg = copy.deepcopy(composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not _chooses_a_group(o, loader)], cfg)
        return cfg

    return compose_job


def basic_sweeper_jobs(hydra_config: DictConfig, loader: ConfigLoader) -> list[list[str]]:
    """Each job's overrides, as hydra's BasicSweeper.sweep builds them: the preset's
    hydra.sweeper.params, then the command line's overrides (which win), as a cartesian product."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = hydra_config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(hydra_config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return jobs


# The command line, before Hydra composes (simpsons/train.py's part).


def exit_on_bad_command_line(args: list[str]) -> None:
    """What would stop Hydra from composing the config, in one line per bad override, exit 2.

    Hydra would say it in several lines (exit 1), and name only the first of several. A
    multirun's driver config is composed without the swept values, as Hydra composes it: each
    job's values, and keys added with + or ++, are checked by exit_on_bad_jobs, in one pass.
    """
    flags = {a for a in args if a.startswith("-")}
    errors = group_choice_errors(args)
    if not errors and not flags - {"-m", "--multirun"}:  # else --help, --cfg ...: Hydra's
        errors = _composition_errors([a for a in args if not a.startswith("-")], multirun=bool(flags))
    _exit_on(errors)


def group_choice_errors(args: list[str]) -> list[str]:
    """Unknown config-group choices (backbone=foo), one message each; Hydra itself would answer
    with a multi-line listing."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:
        return []  # Hydra reports malformed overrides itself
    errors = []
    for override in overrides:
        group = override.key_or_group
        if group not in CHECKED_GROUPS or override.is_delete() or isinstance(override.value(), Glob):
            continue  # glob(...) matches existing options only
        choices = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for choice in choices:
            if isinstance(choice, str):
                try:
                    config.check_choice(group, choice)
                except ConfigError as error:
                    errors.append(str(error))
    return list(dict.fromkeys(errors))


def _composition_errors(lines: list[str], multirun: bool) -> list[str]:
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as error:
        return [_one_line(error)]
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        driver = [o for o in overrides if not (multirun and (o.is_sweep_override() or _adds_a_plain_key(o, loader)))]
        _, errors = composed_job(
            lambda kept: compose(config_name="train", overrides=kept), [o.input_line for o in driver], loader
        )
    return errors


# Keys that no config defines.


def composed_job(
    compose_with: Callable[[list[str]], DictConfig], overrides: list[str], loader: ConfigLoader
) -> tuple[DictConfig | None, list[str]]:
    """A job's config, and one message per override of a key that no config defines.

    Hydra refuses `key=value` of such a key, naming only the first, but adds `+key=value` and
    `++key=value` silently, and the key would only be logged as a param. A key is known when the
    config composed without these additions has it; group additions (+experiment=demo) and keys
    under OPEN_KEYS are fine. Other composition errors are one message, and no config.
    """
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    additions = [o for o in parsed if _adds_a_plain_key(o, loader)]
    kept = [o for o in parsed if o not in additions]
    refused = []
    while True:  # each pass drops the override Hydra refused, to find the next one
        try:
            base = compose_with([o.input_line for o in kept])
            break
        except (HydraException, OmegaConfBaseException) as error:
            bad = _refused_override(error, kept)
            if bad is None:
                return None, [_one_line(error)]
            kept.remove(bad)
            refused.append(bad)
    unknown = refused + [o for o in additions if OmegaConf.select(base, o.key_or_group, default=_ABSENT) is _ABSENT]
    known = [o for o in additions if o not in unknown]
    errors = [_unknown_key(base, override) for override in unknown]
    if not known:
        return base, errors
    try:
        return compose_with([o.input_line for o in kept + known]), errors
    except (HydraException, OmegaConfBaseException) as error:
        return None, [*errors, _one_line(error)]


def _adds_a_plain_key(override: Override, loader: ConfigLoader) -> bool:
    key = override.key_or_group
    if not (override.is_add() or override.is_force_add()) or key.startswith("hydra.") or _open(key):
        return False
    return not _chooses_a_group(override, loader)  # +experiment=demo adds a group, not a key


def _chooses_a_group(override: Override, loader: ConfigLoader) -> bool:
    return override.package is not None or _is_group(loader, override.key_or_group)


@functools.cache
def _is_group(loader: ConfigLoader, key: str) -> bool:
    return bool(loader.get_group_options(key))  # 10 ms: it scans the config folders


def _refused_override(error: Exception, overrides: list[Override]) -> Override | None:
    """The `key=value` whose key Hydra did not find, when that is what `error` says."""
    cause = error.__cause__ if error.__cause__ is not None else error
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or not cause.full_key:
        return None
    return next((o for o in overrides if o.key_or_group == cause.full_key and not o.is_delete()), None)


def _unknown_key(base: DictConfig, override: Override) -> str:
    """E.g. "unknown key 'optimizer.lrr' (+optimizer.lrr=1); did you mean optimizer.lr? optimizer takes: ..."."""
    key, line = override.key_or_group, override.input_line
    if _open(key):  # only a plain `key=value` gets here: this backbone (or optimizer) has no such argument
        return f"unknown key {key!r} ({line}); add a constructor argument with ++{line.lstrip('+')}"
    parts = key.split(".")
    depth = 0  # how many leading parts name an existing node
    while depth < len(parts) - 1 and isinstance(OmegaConf.select(base, ".".join(parts[: depth + 1])), DictConfig):
        depth += 1
    parent = ".".join(parts[:depth])
    node = OmegaConf.select(base, parent) if parent else base
    keys = sorted(str(k) for k in node if not (parent == "" and k == "hydra"))
    close = difflib.get_close_matches(parts[depth], keys, n=1)
    guess = f"did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
    accepted = f"{parent or 'the top level'} takes: {_listed(keys)} (any key under {' and '.join(OPEN_KEYS)})"
    return f"unknown key {key!r} ({line}); {guess}{accepted}"


def _open(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in OPEN_KEYS)


def _exit_on(errors: list[str]) -> None:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        sys.exit(2)


def _listed(options: tuple[str, ...] | list[str]) -> str:
    return ", ".join(options)


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
