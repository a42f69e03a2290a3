"""A search's study (Optuna, `hydra/sweeper=optuna`): its search space, name, storage and pruner,
and one job's trial, which reports each epoch's `monitor` and tells the study how it ended.

The driver's side (asking, launching, recovering killed trials) is simpsons/search.py; this module
is what a job needs too, so the training package uses it. Optuna is imported where it is used:
`--help` and the checks before a sweep never load it. No TensorFlow here.

The study lives beside the MLflow store: `optuna.db` next to `mlflow.db` (`X-optuna.db` next to
`X.db`), or for a PostgreSQL store the same database, in a schema of its own (`optuna`: Optuna and
MLflow both keep an `alembic_version` table). A tracking server has no database to share: the
sweeper's `storage` names one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException

from simpsons import credentials, locks
from simpsons.settings import MONITORS
from simpsons.tracking import schema
from simpsons.tracking.sqlite import SQLITE_PREFIX, absolute_sqlite_uri, sqlite_path, store_lock

SWEEPER = "hydra_plugins.simpsons_sweepers.optuna.OptunaSweeper"  # conf/hydra/sweeper/optuna.yaml's _target_
POSTGRES_SCHEMA = "optuna"
SCHEMA_LOCK = "simpsons: the Optuna schema"  # the name of its PostgreSQL advisory lock
CONNECT_SECONDS = 10  # a PostgreSQL study database that does not answer fails the opening after this
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "random")
SPACE_FORMS = "interval(a, b), tag(log, interval(a, b)), int(interval(a, b)), choice(a, b, ...) or a,b,..."
SQLITE_TIMEOUT = 60  # seconds a job waits for another's write to the study's SQLite file
RUN_ATTR = "mlflow_run_id"  # a trial's user attribute: the MLflow run that trains it
OVERRIDES_ATTR = "overrides"  # a trial's user attribute: the values its job trained with, as overrides
PRUNER_ATTR = "pruner"  # the study's user attribute: how its jobs decide to stop (the driver sets it)


# The search space: hydra.sweeper.params, and the command line's sweeps, as Optuna distributions.


@dataclass(frozen=True)
class Dimension:
    """One searched key: a float or integer range (log scale or not), or categories."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def corners(self) -> list[Any]:
        """The values the checks before a search try: every category, each end of a range."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def describe(self) -> str:
        if self.choices:
            return ", ".join(map(str, self.choices))
        return f"{self.low:g} to {self.high:g}{' (log)' if self.log else ''}{' (integers)' if self.integer else ''}"


def override_value(value: Any) -> str:
    """A sampled value as a job's override: floats to 3 significant digits (a run's name and its
    config hash read them; the trial keeps the value it was given in its `overrides` attribute)."""
    if isinstance(value, float):
        text = f"{value:.3g}"
        return text if any(c in text for c in ".en") else f"{text}.0"  # 10.0 stays a float, not 10
    return str(value)


def search_space(params: Mapping[str, Any], arguments: list[str]) -> tuple[list[Dimension], list[str], list[str]]:
    """(the searched keys, the fixed overrides, one message per bad dimension).

    `params` is hydra.sweeper.params (key -> a range or categories, in Hydra's override grammar);
    a command-line override that sweeps (`dropout=interval(0.1,0.5)`, `optimizer=adam,sgd`)
    searches its key too, in place of the preset's. Other overrides are the same in every trial.
    """
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as error:
        return [], [], [f"hydra.sweeper.params: {str(error).splitlines()[0]}"]
    dimensions: dict[str, Dimension] = {}
    fixed: dict[str, str] = {}
    errors: list[str] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            dimension, error = _dimension(override)
            errors += [error] if error else []
            if dimension is not None:
                dimensions[key] = dimension
                fixed.pop(key, None)
        elif override.input_line in arguments:
            fixed[key] = override.input_line
            dimensions.pop(key, None)
        else:  # a preset's param that is one value: not searched, the same in every trial
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return list(dimensions.values()), list(fixed.values()), errors


def _dimension(override: Override) -> tuple[Dimension | None, str | None]:
    key, value = override.get_key_element(), override.value()
    where = override.input_line.lstrip("+~")
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        integer = isinstance(low, int) and isinstance(high, int)
        if not (low < high):
            return None, f"{where}: an interval's low end must be below its high end"
        if log and low <= 0:
            return None, f"{where}: a log-scale interval must start above 0"
        return Dimension(key, low, high, log, integer), None
    if isinstance(value, ChoiceSweep | RangeSweep):
        choices = tuple(override.sweep_iterator())
        if not choices:
            return None, f"{where}: no values to choose from"
        return Dimension(key, choices=choices), None
    return None, f"{where} is not a search; use {SPACE_FORMS}"


# The study: its name, direction, storage and pruner.


def study_name(experiment: str, dimensions: list[Dimension], fixed: list[str], monitor: str) -> str:
    """Stable for a search: the experiment, then a digest of what is searched (keys and ranges), the
    fixed overrides and the monitor. n_trials, the launcher and the storage are not in it, so the
    same command, or one with more trials, continues the study."""
    space = [[d.key, d.low, d.high, d.log, d.integer, [str(c) for c in d.choices]] for d in dimensions]
    text = json.dumps([sorted(space), sorted(fixed), monitor], sort_keys=True)
    return f"{experiment}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def direction(monitor: str) -> str:
    """maximize for val_accuracy, minimize for val_loss: as the run keeps its best epoch."""
    return "maximize" if MONITORS.get(monitor, "max") == "max" else "minimize"


def storage_uri(tracking_uri: str, explicit: str | None) -> str | None:
    """The study's database: `explicit` (hydra.sweeper.storage) if given; else beside a SQLite store
    (optuna.db next to mlflow.db, X-optuna.db next to X.db), or a PostgreSQL store's own database;
    None for a tracking server, which has no database to share."""
    if explicit:
        return absolute_sqlite_uri(explicit) if explicit.startswith(SQLITE_PREFIX) else explicit
    uri = absolute_sqlite_uri(tracking_uri)
    if uri.startswith(SQLITE_PREFIX):
        path = sqlite_path(uri)
        name = "optuna.db" if path.name == "mlflow.db" else f"{path.stem}-optuna.db"
        return f"{SQLITE_PREFIX}{path.with_name(name)}"
    if _scheme(uri) == "postgresql":
        return uri
    return None


def storage_errors(storage: str | None, tracking_uri: str) -> list[str]:
    """Why the study cannot be stored there: none at all (a tracking server), a password in the URI."""
    if storage is None:
        return [
            f"tracking.uri={credentials.redact_uri(tracking_uri)} is a server: the study needs a database; "
            "set hydra.sweeper.storage=postgresql://user@host/db (password from PGPASSWORD) or sqlite:///path/optuna.db"
        ]
    if credentials.has_password(storage):
        where, instead = credentials.redact_uri(storage), credentials.password_source(storage)
        return [f"hydra.sweeper.storage={where} has a password in it; leave it out and {instead}"]
    if not (storage.startswith(SQLITE_PREFIX) or _scheme(storage) in ("postgresql", "mysql")):
        return [f"hydra.sweeper.storage={storage!r} is not a database; use sqlite:///path or postgresql://user@host/db"]
    return []


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.split("+")[0]


@functools.cache
def open_storage(uri: str, create: bool = False) -> Any:
    """Optuna's RDBStorage on `uri`; `create`: its tables too (the driver, before any job starts).

    SQLite: a job waits up to SQLITE_TIMEOUT s for another's write. PostgreSQL: Optuna's tables in
    their own schema. Either way the opening holds the store's schema lock (below)."""
    from optuna.storages import RDBStorage

    engine_kwargs: dict[str, Any] = {}
    if uri.startswith(SQLITE_PREFIX):
        Path(sqlite_path(uri)).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    elif _scheme(uri) == "postgresql":
        engine_kwargs["connect_args"] = {"options": f"-csearch_path={POSTGRES_SCHEMA}"}
    # Under the lock even for a reader: Optuna stamps its schema version into a store that has none
    # yet whether or not it creates tables, so a reader opening the store while the driver created
    # it made the driver fail on alembic_version's UNIQUE key (soak pass 3). On PostgreSQL two
    # drivers creating the schema at once failed the same way.
    with _schema_lock(uri):
        if create and _scheme(uri) == "postgresql":
            _create_postgres_schema(uri)
        return RDBStorage(uri, engine_kwargs=engine_kwargs, skip_table_creation=not create)


def _schema_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """The lock under which a study store is opened: PostgreSQL's advisory lock, held by the
    database for processes on any machine; else the store's lock file (a no-op for other databases)."""
    if _scheme(uri) == "postgresql":
        return locks.postgres_advisory(uri, SCHEMA_LOCK, {"connect_timeout": CONNECT_SECONDS})
    return store_lock(uri)


def _create_postgres_schema(uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}"))
    finally:
        engine.dispose()


def make_pruner(spec: Mapping[str, Any]) -> Any:
    """Optuna's pruner from the study's `pruner` attribute: median (a trial whose epoch is worse than
    the median of the finished trials' at that epoch stops), halving (successive halving), none."""
    import optuna

    kind = spec.get("kind", "none")
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec["n_startup_trials"]), n_warmup_steps=int(spec["n_warmup_steps"])
        )
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, int(spec["n_warmup_steps"]) + 1))
    return optuna.pruners.NopPruner()


def sweeper_errors(sweeper: Mapping[str, Any]) -> list[str]:
    """One message per bad value of hydra.sweeper (conf/hydra/sweeper/optuna.yaml) but its params."""
    errors = []

    def whole(key: str, least: int, words: str, optional: bool = False) -> None:
        value = sweeper.get(key)
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            errors.append(f"hydra.sweeper.{key}={value!r} is invalid; expected {words}")

    whole("n_trials", 1, "an integer >= 1")
    whole("n_jobs", 1, "null (the launcher's parallelism) or an integer >= 1", optional=True)
    whole("n_startup_trials", 0, "an integer >= 0")
    whole("n_warmup_steps", 0, "an integer >= 0 (epochs before a trial may be pruned)")
    whole("seed", 0, "null or an integer >= 0", optional=True)
    for key, accepted in (("pruner", PRUNERS), ("sampler", SAMPLERS)):
        if sweeper.get(key) not in accepted:
            errors.append(f"hydra.sweeper.{key}={sweeper.get(key)!r} is unknown; use one of: {', '.join(accepted)}")
    name = sweeper.get("study_name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        errors.append(f"hydra.sweeper.study_name={name!r} is invalid; expected null (derived) or a non-empty name")
    return errors


@dataclass(frozen=True)
class SearchPlan:
    """A search as its command line sets it up: what it searches, what stays fixed, its study and
    where that lives, and what is wrong with it (one message each)."""

    dimensions: list[Dimension]
    fixed: list[str]  # the overrides every trial shares, as typed
    study: str
    storage: str | None
    direction: str
    monitor: str
    n_trials: int
    errors: list[str]

    @classmethod
    def of(cls, hydra_config: Any) -> SearchPlan:
        """From a multirun's config (hydra.sweeper, hydra.overrides.task, tracking, monitor)."""
        sweeper = hydra_config.hydra.sweeper
        arguments = list(hydra_config.hydra.overrides.task)
        dimensions, fixed, errors = search_space(sweeper.get("params") or {}, arguments)
        errors = sweeper_errors(sweeper) + errors
        if not dimensions and not errors:
            errors.append(f"hydra.sweeper.params: nothing to search; give keys with {SPACE_FORMS}")
        monitor = str(hydra_config.get("monitor", "val_accuracy"))
        tracking_uri = str(hydra_config.tracking.uri)
        storage = storage_uri(tracking_uri, sweeper.get("storage"))
        errors += storage_errors(storage, tracking_uri)
        name = sweeper.get("study_name") or study_name(
            str(hydra_config.tracking.experiment), dimensions, fixed, monitor
        )
        n_trials = sweeper.get("n_trials")
        return cls(dimensions, fixed, str(name), storage, direction(monitor), monitor, n_trials, errors)

    @property
    def keys(self) -> list[str]:
        return [dimension.key.lstrip("+~") for dimension in self.dimensions]

    def corner_jobs(self) -> list[list[str]]:
        """Jobs that the checks before a search judge: each category and each end of a range once,
        the other keys at their first value; every trial's values lie within these."""
        first = {d.key: override_value(d.corners()[0]) for d in self.dimensions}
        jobs = []
        for dimension in self.dimensions:
            for value in dimension.corners():
                values = first | {dimension.key: override_value(value)}
                jobs.append([*self.fixed, *(f"{key}={v}" for key, v in values.items())])
        return list({tuple(job): job for job in jobs}.values())

    def trial_overrides(self, number: int, params: Mapping[str, Any]) -> list[str]:
        """A trial's job: the fixed overrides, its sampled values, and which trial it is."""
        values = [f"{d.key}={override_value(params[d.key])}" for d in self.dimensions]
        where = [f"trial.number={number}", f"trial.study={self.study}", f"trial.storage='{self.storage}'"]
        return [*self.fixed, *values, *where]

    def describe(self) -> str:
        """The parent run's description (Markdown) before the search starts."""
        rows = [f"| {d.key} | {d.describe()} |" for d in self.dimensions]
        return "\n".join(
            [
                f"Optuna search: {self.n_trials} trials, {self.direction} {self.monitor}; study `{self.study}` "
                f"in `{credentials.redact_uri(self.storage or '')}`.",
                "",
                "| searched | range |",
                "|---|---|",
                *rows,
                "",
                "Same in every trial: " + (", ".join(f"`{o}`" for o in self.fixed) or "nothing but the defaults"),
            ]
        )


# A job's trial (the training run's side).


class JobTrial:
    """The trial a job trains (trial.number of study trial.study): it reports each epoch's monitor
    value, says whether the study's pruner stops it, and tells the study the run's outcome."""

    def __init__(self, study: str, number: int, storage: str) -> None:
        import optuna

        self.number = number
        self.storage = open_storage(storage)
        study_id = self.storage.get_study_id_from_name(study)
        pruner = make_pruner(self.storage.get_study_user_attrs(study_id).get(PRUNER_ATTR, {}))
        self.study = optuna.Study(study_name=study, storage=self.storage, pruner=pruner)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.trial = optuna.Trial(self.study, self.trial_id)
        self.pruned_at: int | None = None

    def attach(self, run_id: str) -> None:
        """Record the MLflow run that trains it: a later command reads its status from there."""
        self.storage.set_trial_user_attr(self.trial_id, RUN_ATTR, run_id)

    def report(self, epoch: int, value: float) -> bool:
        """Report the epoch's monitor value; True when the pruner stops the trial here."""
        if not math.isfinite(value):
            value = float("inf") if self.study.direction.name == "MINIMIZE" else float("-inf")
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1  # counted from 1, as Keras prints epochs and the curves' steps are
            return True
        return False

    def tell(self, value: float | None, pruned: bool) -> None:
        """The run ended FINISHED: its best monitor value, or pruned (the last reported value counts)."""
        tell(self.study, self.number, value, pruned)


def tell(study: Any, number: int, value: float | None, pruned: bool) -> None:
    """Finish trial `number` as COMPLETE with `value`, PRUNED, or FAIL when there is no value; once."""
    from optuna.trial import TrialState

    if pruned:
        study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
    elif value is None or not math.isfinite(value):
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(number, value, skip_if_finished=True)


def run_outcome(client: Any, run_id: str, monitor: str) -> tuple[float | None, bool]:
    """A FINISHED run's trial outcome: its best monitor value, and whether it was pruned."""
    pruned = schema.PRUNED in client.get_run(run_id).data.tags
    return best_value([m.value for m in client.get_metric_history(run_id, schema.curve(monitor))], monitor), pruned


def best_value(history: list[float], monitor: str) -> float | None:
    """The run's best epoch's monitor value: what it keeps, hence its trial's value."""
    values = [value for value in history if math.isfinite(value)]
    if not values:
        return None
    return max(values) if MONITORS.get(monitor, "max") == "max" else min(values)
