"""The jobs a Hydra command line would start, composed and judged before the first one starts.

The one module that leans on hydra-core's private APIs (pinned to 1.3.8; tests/test_hydra_jobs.py
holds them to it): its BasicSweeper's expansion of a sweep into jobs, and the function that applies
a job's overrides to a composed config. With them, this module:

- says what stops Hydra from composing, in one line per bad override, exit 2, where Hydra would say
  it in several lines, exit 1, and name only the first: unknown group choices (backbone=foo), keys
  no config defines (`+typo=1`, which Hydra would add silently), and values of the wrong type for
  their setting (`epochs=2.5`), worded as the settings' rules word them (simpsons/settings/);
- composes every job of a run or sweep (the Hydra callback's part, simpsons/sweep_callback.py) and judges
  each as the job itself will (simpsons/preflight.py), before anything is created.
"""

from __future__ import annotations

import copy
import difflib
import logging
import sys
import typing
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from simpsons import config, settings, trials
from simpsons.errors import ConfigError

log = logging.getLogger(__name__)

CHECKED_GROUPS = ("backbone", "optimizer", "data", "augment", "scheduler", "experiment", "variant")
# Constructor arguments, passed on as given, and the user's run tags: any key is accepted under them.
OPEN_KEYS = ("backbone.kwargs", "optimizer.kwargs", "tags")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_ABSENT = object()
# What a value of each type a setting may have is, when its key has no rule to say it.
TYPE_WORDS = {int: "an integer", bool: "true or false", str: "a string", float: "a number"}


# The command line, before Hydra composes (simpsons/train.py's and simpsons/ensemble.py's part).


def exit_on_bad_command_line(args: list[str], config_name: str = "train") -> None:
    """What would stop Hydra from composing `config_name`, in one line per bad override, exit 2."""
    _exit_on(command_line_errors(args, config_name))


def command_line_errors(args: list[str], config_name: str = "train") -> list[str]:
    """One message per override that would stop Hydra from composing `config_name` (conf/*.yaml).

    A multirun's driver config is composed without the swept values, as Hydra composes it: each
    job's values, and keys added with + or ++, are judged by exit_on_bad_jobs, in one pass.
    """
    flags = {a for a in args if a.startswith("-")}
    errors = group_choice_errors(args) if config_name == "train" else []
    if not errors and not flags - {"-m", "--multirun"}:  # else --help, --cfg ...: Hydra's
        lines = [a for a in args if not a.startswith("-")]
        errors = _composition_errors(lines, multirun=bool(flags), config_name=config_name)
    return errors


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
        errors += [settings.choice_error(group, choice) for choice in choices if isinstance(choice, str)]
    return list(dict.fromkeys(error for error in errors if error))


def _composition_errors(lines: list[str], multirun: bool, config_name: str) -> list[str]:
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as error:
        return [settings.one_line(error)]
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        driver = [o for o in overrides if not (multirun and (o.is_sweep_override() or _adds_a_plain_key(o, loader)))]
        _, errors = composed_job(
            lambda kept: compose(config_name=config_name, overrides=kept), [o.input_line for o in driver], loader
        )
    return errors


# Every job of a run or sweep, before the first one (the Hydra callback's part).


def exit_on_bad_jobs(hydra_config: DictConfig) -> None:
    """Judge every job of this run or multirun; on any bad value, one line each and exit 2.

    Runs in the driver before anything is created (store, experiment, runs, sweep folder).
    SystemExit passes through Hydra, which catches Exception only.
    """
    _exit_on(job_errors(hydra_config))


def job_errors(hydra_config: DictConfig) -> list[str]:
    """The messages of every job that `hydra_config` (a run's config, or a multirun's) would start."""
    from simpsons import preflight  # data folders and the store: judged for jobs, not for --help

    loader = GlobalHydra.instance().config_loader()
    if hydra_config.hydra.mode != RunMode.MULTIRUN:
        jobs = [list(hydra_config.hydra.overrides.task)]
    elif hydra_config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
        try:
            jobs = basic_sweeper_jobs(hydra_config, loader)
        except (HydraException, OmegaConfBaseException) as error:
            return [settings.one_line(error)]
    elif hydra_config.hydra.sweeper.get("_target_") == trials.SWEEPER:
        search = trials.SearchPlan.of(hydra_config)
        if search.errors:
            return search.errors
        if errors := preflight.study_storage_errors(str(search.storage), str(hydra_config.tracking.uri)):
            return errors  # its jobs would all fail on it
        jobs = search.corner_jobs()  # each category and range end: every trial's values lie within them
    else:
        log.info("sweeper %s: each job is checked when it starts", hydra_config.hydra.sweeper.get("_target_"))
        return []
    compose_job, probed = _job_composer(loader, hydra_config), {}
    errors = []
    for overrides in jobs:
        cfg, found = composed_job(compose_job, overrides, loader)
        errors += found
        if cfg is None:
            continue
        try:
            errors += preflight.errors(settings.TrainSettings.from_config(_without_hydra(cfg)), probed)
        except ConfigError as error:
            errors.append(str(error))
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


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The job's own config (what the task function gets): its schema and its closed keys kept."""
    if "hydra" not in cfg:
        return cfg
    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


# One job's config: keys no config defines, and values of the wrong type.


def composed_job(
    compose_with: Callable[[list[str]], DictConfig], overrides: list[str], loader: ConfigLoader
) -> tuple[DictConfig | None, list[str]]:
    """A job's config, and one message per override of a key that no config defines, or of a
    value its setting cannot take.

    Hydra refuses `key=value` of such a key, naming only the first, but adds `+key=value` and
    `++key=value` silently, and the key would only be logged as a param. A key is known when the
    config composed without these additions has it; group additions (+experiment=demo) and keys
    under OPEN_KEYS are fine. A value of the wrong type (`epochs=2.5`, `cache=maybe`) stops Hydra
    too; a boolean given as 1, yes or on, which OmegaConf would read as true, is refused as before
    the settings had types. Other composition errors are one message, and no config.
    """
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    additions = [o for o in parsed if _adds_a_plain_key(o, loader)]
    kept = [o for o in parsed if o not in additions]
    refused, mistyped = [], []
    while True:  # each pass drops the override Hydra refused, to find the next one
        try:
            base = compose_with([o.input_line for o in kept])
            break
        except (HydraException, OmegaConfBaseException) as error:
            bad = _refused_override(error, kept)
            if bad is None:
                return None, [*mistyped, settings.one_line(error)]
            kept.remove(bad)
            if isinstance(_cause(error), ValidationError):
                mistyped.append(_type_error(_cause(error), bad))
            else:
                refused.append(bad)
    unknown = refused + [o for o in additions if OmegaConf.select(base, o.key_or_group, default=_ABSENT) is _ABSENT]
    known = [o for o in additions if o not in unknown]
    errors = [_unknown_key(base, override) for override in unknown] + mistyped
    errors += _booleans_not_as_written(base, [o for o in kept + known if not _chooses_a_group(o, loader)])
    if not known:
        return base, errors
    try:
        return compose_with([o.input_line for o in kept + known]), errors
    except (HydraException, OmegaConfBaseException) as error:
        return None, [*errors, settings.one_line(error)]


def _adds_a_plain_key(override: Override, loader: ConfigLoader) -> bool:
    key = override.key_or_group
    if not (override.is_add() or override.is_force_add()) or key.startswith("hydra.") or _open(key):
        return False
    return not _chooses_a_group(override, loader)  # +experiment=demo adds a group, not a key


def _chooses_a_group(override: Override, loader: ConfigLoader) -> bool:
    return override.package is not None or _is_group(loader, override.key_or_group)


def _is_group(loader: ConfigLoader, key: str) -> bool:
    """10 ms a key: it scans the config folders. Remembered by the loader's search path, not the
    loader: a process's loaders (one per compose, one per test) all search the same folders."""
    where = tuple(str(element) for element in loader.get_search_path().get_path())
    if (where, key) not in _groups:
        _groups[where, key] = bool(loader.get_group_options(key))
    return _groups[where, key]


_groups: dict[tuple[tuple[str, ...], str], bool] = {}  # _is_group's answers


def _cause(error: Exception) -> BaseException:
    return error.__cause__ if error.__cause__ is not None else error


def _refused_override(error: Exception, overrides: list[Override]) -> Override | None:
    """The `key=value` whose key Hydra did not find, or whose value its setting's type refused,
    when that is what `error` says."""
    cause = _cause(error)
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError | ValidationError) or not cause.full_key:
        return None
    return next((o for o in overrides if o.key_or_group == cause.full_key and not o.is_delete()), None)


def _type_error(cause: ValidationError, override: Override) -> str:
    """E.g. "epochs=2.5 is invalid; expected an integer >= 1": what the key's rule accepts."""
    kind, key = cause.object_type, str(cause.key)
    accepted = settings.accepted(kind, key) or _type_words(kind, key)
    return f"{override.key_or_group}={override.value()!r} is invalid; expected {accepted}"


def _type_words(kind: type | None, key: str) -> str:
    hints = typing.get_type_hints(kind) if kind is not None else {}
    optional, kind_of_key = _optional(hints.get(key))
    words = TYPE_WORDS.get(kind_of_key, "a value of its type")
    return f"null or {words}" if optional else words


def _optional(annotation: object) -> tuple[bool, object]:
    args = typing.get_args(annotation)
    if type(None) in args:
        return True, next(a for a in args if a is not type(None))
    return False, annotation


def _booleans_not_as_written(cfg: DictConfig, overrides: list[Override]) -> list[str]:
    """A boolean setting given anything but true or false (OmegaConf reads 1, yes and on as true)."""
    errors = []
    for override in overrides:
        if override.is_sweep_override() or override.is_delete():
            continue  # a sweep's jobs are judged one by one
        value = override.value()
        if isinstance(value, bool) or value is None or (isinstance(value, str) and "${" in value):
            continue  # an interpolation is judged once resolved
        parent, _, key = override.key_or_group.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if kind is not None and _optional(typing.get_type_hints(kind).get(key))[1] is bool:
            accepted = settings.accepted(kind, key) or TYPE_WORDS[bool]
            errors.append(f"{override.key_or_group}={value!r} is invalid; expected {accepted}")
    return errors


def _unknown_key(base: DictConfig, override: Override) -> str:
    """E.g. "unknown key 'optimizer.lrr' (+optimizer.lrr=1); did you mean optimizer.lr? optimizer takes: ..."."""
    key, line = override.key_or_group, override.input_line
    if key.startswith("tags."):  # only a plain `tags.key=value` gets here: a new tag needs its `+`
        return f"unknown key {key!r} ({line}); add a run tag with +{line.lstrip('+')}"
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
    open_keys = [k for k in OPEN_KEYS if OmegaConf.select(base, k, default=_ABSENT) is not _ABSENT]
    listed = " and ".join(filter(None, [", ".join(open_keys[:-1]), open_keys[-1]])) if open_keys else ""
    anywhere = f" (any key under {listed})" if open_keys else ""
    return f"unknown key {key!r} ({line}); {guess}{parent or 'the top level'} takes: {', '.join(keys)}{anywhere}"


def _open(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in OPEN_KEYS)


def _exit_on(errors: list[str]) -> None:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        sys.exit(2)
