"""`python -m simpsons.reproduce RUN_ID`: train a logged run again from what it logged, and compare.

    python -m simpsons.reproduce 3f2a9c1b            # a training run (its first 8 characters do)
    python -m simpsons.reproduce <ensemble run id>   # an ensemble: the same candidates, combined again
    python -m simpsons.reproduce 3f2a9c1b --anyway   # though the code or the data differ

A training run is rebuilt from its logged config.yaml (every resolved value, the seed and where
the data lay) over its logged overrides, into the same experiment; an ensemble from its logged
settings and the same candidate runs. First the code version (the package's sources and the
tensorflow, keras and numpy versions) and the data fingerprint are checked against the run's: if
either differs, one line says which and how to get it back (the commit to check out; the
fingerprint found and the one logged), exit 2, unless --anyway. The new run is tagged
`simpsons.reproduces=<run id>`, and always trains (reuse=false). Then a table of every metric (the
last value of a curve, which is compared at every step): the original, the new one, and
equal/different at 1e-6; timings and system metrics are not compared. Exit 0 when every metric is equal, 1 when one
differs, 2 for a run that cannot be reproduced.

MLflow and TensorFlow are imported only once the arguments are parsed, so that --help answers at once.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simpsons import signals, startup
from simpsons.config import CONF_DIR, add_tracking_uri_argument
from simpsons.errors import ConfigError, SimpsonsError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from simpsons.settings import EnsembleSettings, TrainSettings

log = logging.getLogger("simpsons.reproduce")

TOLERANCE = 1e-6  # two values are equal when they differ by at most this
# Wall-clock and machine metrics: never the same twice, not compared. Timings are in timings.json
# since issue 18 (older runs logged them as metrics); system/ is MLflow's system metrics monitor's.
TIMINGS = ("seconds/", "feature_extraction_", "system/")
# What the reproduction takes from where it runs, not from the logged config: the store it was
# found in (logged with its password masked), and the feature cache (a cache, wherever it lies).
NOT_REBUILT = ("tracking.uri", "cache_dir")


@dataclass(frozen=True)
class Comparison:
    """One metric of both runs: its values by step (one for a final value, one per epoch for a curve)."""

    metric: str
    original: list[float]
    new: list[float]

    @property
    def equal(self) -> bool:
        return len(self.original) == len(self.new) and all(map(_same, self.original, self.new))

    def row(self) -> tuple[str, str, str, str]:
        steps = max(len(self.original), len(self.new))
        name = f"{self.metric} ({steps} steps, last)" if steps > 1 else self.metric
        return name, _shown(self.original), _shown(self.new), "equal" if self.equal else "different"


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


def _shown(values: list[float]) -> str:
    return f"{values[-1]:.6f}" if values else "-"


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m simpsons.reproduce",
        description=__doc__.split("\n\nMLflow and")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("run_id", metavar="RUN_ID", help="the training or ensemble run (its first 8 characters do)")
    result.add_argument(
        "--anyway", action="store_true", help="train though the code version or the data fingerprint differ"
    )
    add_tracking_uri_argument(result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    startup.prepare_process()
    signals.install(driver=True)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from mlflow.tracking import MlflowClient

    from simpsons.tracking import connection, store

    try:
        uri = store.configure(args.tracking_uri)
        with connection.lost_server():
            return reproduce(MlflowClient(uri), uri, args.run_id, args.anyway)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()


def reproduce(client: MlflowClient, uri: str, run_id: str, anyway: bool) -> int:
    """Check, train (or combine) again, print the comparison; the exit status."""
    from simpsons.tracking import reader, schema

    run = reader.find_run(client, run_id, "RUN_ID")
    kind = reader.run_type(run)
    if kind == schema.REUSED:
        original = run.data.tags.get(schema.REUSED_RUN, "")
        log.info("run %s reuses run %s: reproducing that one", run.info.run_id, original)
        run, kind = reader.find_run(client, original, "RUN_ID"), schema.TRAIN
    if kind not in (schema.TRAIN, schema.ENSEMBLE):
        raise ConfigError(
            f"run {run.info.run_id} is a {kind or 'foreign'} run; give a training or an ensemble run "
            "(a sweep's jobs are reproduced one by one)"
        )
    _check(_code_difference(run), anyway)
    new_id = _train_again(client, uri, run, anyway) if kind == schema.TRAIN else _combine_again(client, uri, run)
    comparisons = compare(client, run.info.run_id, new_id)
    print(table(comparisons))
    different = [c.metric for c in comparisons if not c.equal]
    done = f"run {new_id} reproduces run {run.info.run_id}:"
    if different:
        print(
            f"{done} {len(different)} of {len(comparisons)} metrics differ (at {TOLERANCE:g}): {', '.join(different)}"
        )
        return 1
    print(f"{done} every metric equal (at {TOLERANCE:g}); timings and system metrics not compared")
    return 0


def _check(difference: str | None, anyway: bool) -> None:
    if difference is None:
        return
    if not anyway:
        raise ConfigError(f"{difference}, or pass --anyway")
    log.warning("%s; --anyway: reproducing it all the same", difference)


def _code_difference(run: Run) -> str | None:
    """How this code differs from the run's, and the commit to check out; None when it does not.

    The code version (a hash of the package's sources and the computing libraries' versions)
    decides: unlike the git commit, it ignores edits to docs and tests. A run without one (an
    older ensemble) is judged by its commit."""
    from simpsons.tracking import provenance, schema

    tags = run.data.tags
    commit = tags.get(schema.GIT_COMMIT, "unknown")
    dirty = tags.get(schema.GIT_DIRTY) == "true"
    checkout = "its commit is unknown (trained outside git)" if commit == "unknown" else f"git checkout {commit}"
    if dirty:
        checkout += " and git apply its artifact git_diff.patch"
    short = run.info.run_id[:8]
    logged = tags.get(schema.CODE_VERSION)
    if logged is None:
        here = provenance.git_tags()[schema.GIT_COMMIT]
        if commit in ("unknown", here):
            return None
        return f"the code differs from run {short}'s: it was trained at commit {commit}, this is {here}; {checkout}"
    here = provenance.code_version()
    if logged == here:
        return None
    return (
        f"the code differs from run {short}'s: code version {logged[:12]} logged, {here[:12]} here (the package's "
        f"sources, or the tensorflow, keras or numpy version); {checkout}"
    )


def _train_again(client: MlflowClient, uri: str, run: Run, anyway: bool) -> str:
    """The run's settings rebuilt, its data checked, and a new run trained from them; its id."""
    from simpsons.data import load_dataset
    from simpsons.tracking import schema
    from simpsons.training.recipe import JobContext, train

    overrides = logged_overrides(client, run)
    settings = rebuild_settings(overrides, logged_config(client, run), uri)
    data = load_dataset(settings.data)  # a missing folder: DataError, one line
    logged = run.data.tags.get(schema.DATA_FINGERPRINT, "")
    if data.fingerprint != logged:
        where = settings.data.root
        _check(
            f"the data differs from run {run.info.run_id[:8]}'s: fingerprint {data.fingerprint[:12]} found in "
            f"{where}, {logged[:12] or 'none'} logged; restore the files it was trained on there",
            anyway,
        )
    log.info("training run %s (%s) again: %s", run.info.run_id, run.info.run_name, " ".join(overrides))
    return train(settings, JobContext(overrides, tags={schema.REPRODUCES: run.info.run_id}))


def logged_overrides(client: MlflowClient, run: Run) -> list[str]:
    """The run's command-line overrides: Hydra's overrides.yaml where the run logged it (exact, even
    for a value with spaces), else its `hydra.overrides` tag."""
    import yaml

    from simpsons.tracking import schema

    try:
        text = client.download_artifacts(run.info.run_id, f"{schema.HYDRA_FILES}/overrides.yaml")
        with open(text) as file:
            return [str(override) for override in yaml.safe_load(file) or []]
    except Exception:  # not logged (a run started in-process), or gone: MLflow's, OSError
        return run.data.tags.get(schema.HYDRA_OVERRIDES, "").split()


def logged_config(client: MlflowClient, run: Run) -> dict[str, Any]:
    """The run's resolved config.yaml, as plain data."""
    import mlflow
    from omegaconf import OmegaConf

    from simpsons.tracking import schema

    try:
        path = client.download_artifacts(run.info.run_id, schema.CONFIG_YAML)
    except (OSError, mlflow.exceptions.MlflowException) as error:
        raise ConfigError(f"run {run.info.run_id} logged no {schema.CONFIG_YAML}; it cannot be rebuilt") from error
    return OmegaConf.to_container(OmegaConf.load(path))


def rebuild_settings(overrides: list[str], logged: dict[str, Any], uri: str) -> TrainSettings:
    """conf/train.yaml composed with the run's overrides (which pick its config groups), then every
    value it logged on top, so that a default changed since in conf/ changes nothing; in store `uri`,
    and never reusing a finished run: the reproduction must train."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from simpsons import settings
    from simpsons.config import flatten
    from simpsons.settings import TrainSettings
    from simpsons.settings.rules import one_line

    settings.register()
    kept = {key: value for key, value in flatten(logged).items() if key not in NOT_REBUILT}
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        for key, value in kept.items():
            OmegaConf.update(cfg, key, value, merge=True, force_add=False)
        OmegaConf.update(cfg, "tracking.uri", uri)
        OmegaConf.update(cfg, "reuse", False)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"the run's config does not fit this code's conf/: {one_line(error)}") from error
    rebuilt = TrainSettings.from_config(cfg)
    errors = rebuilt.errors()
    if errors:
        raise ConfigError(f"the run's config is not valid here: {errors[0]}")
    return rebuilt


def _combine_again(client: MlflowClient, uri: str, run: Run) -> str:
    """The ensemble's settings and candidates as it logged them, combined again (not registered:
    a reproduction must not move the champion alias); its run id."""
    from simpsons.ensembling.command import ensemble
    from simpsons.tracking import schema

    candidates = [c for c in run.data.tags.get(schema.CANDIDATES, "").split(",") if c]
    if not candidates:
        raise ConfigError(f"ensemble run {run.info.run_id} does not list its candidates; it cannot be rebuilt")
    for candidate in candidates:
        member = client.get_run(candidate)
        if member.data.tags.get(schema.MODEL_DELETED):
            raise ConfigError(
                f"candidate run {candidate} of ensemble {run.info.run_id[:8]} has no model any more "
                f"({member.data.tags[schema.MODEL_DELETED]}); reproduce it first with reuse=false"
            )
    cfg = ensemble_settings(run.data.params, candidates, uri, client.get_experiment(run.info.experiment_id).name)
    new_id = ensemble(cfg)
    client.set_tag(new_id, schema.REPRODUCES, run.info.run_id)
    return new_id


def ensemble_settings(params: dict[str, str], candidates: list[str], uri: str, experiment: str) -> EnsembleSettings:
    """conf/ensemble.yaml with the ensemble's logged choices, drawn from exactly its candidates."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from simpsons import settings
    from simpsons.settings import EnsembleSettings

    settings.register()
    chosen = ("metric", "direction", "one_per_backbone", "method", "weights", "calibrate")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="ensemble")
    for key in chosen:
        if key in params:
            OmegaConf.update(cfg, key, _typed(params[key]))
    # The candidates by id, wherever they lie in the experiment (a sweep's reused jobs lie in
    # earlier sweeps): the reproduction is an ensemble of the experiment, not nested in the sweep.
    listed = ", ".join(f"'{run_id}'" for run_id in candidates)
    values = {
        "tracking.uri": uri,
        "tracking.experiment": experiment,
        "top_n": len(candidates),
        "sweep": None,
        "filter": f"attributes.run_id IN ({listed})",
        "register": False,
    }
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return EnsembleSettings.from_config(cfg)


def _typed(value: str) -> Any:
    """A param as MLflow keeps it (a string) as the value it was: True -> true."""
    return {"True": True, "False": False, "None": None}.get(value, value)


def compare(client: MlflowClient, original: str, new: str) -> list[Comparison]:
    """Every metric of either run but the timings, by step, sorted by name."""
    keys = set(client.get_run(original).data.metrics) | set(client.get_run(new).data.metrics)
    return [
        Comparison(key, _history(client, original, key), _history(client, new, key))
        for key in sorted(keys)
        if not key.startswith(TIMINGS)
    ]


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    """The metric's values by step (the latest at a step logged twice, as a resumed run may)."""
    by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return [by_step[step] for step in sorted(by_step)]


def table(comparisons: list[Comparison]) -> str:
    rows = [("metric", "original", "new", "")] + [c.row() for c in comparisons]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + f"  {row[3]}".rstrip()
        for row in rows
    )


def _interrupted() -> int:
    """After SIGINT or SIGTERM: the run ended KILLED (lifecycle.tracked_run); say so in one line."""
    import signal

    from mlflow.tracking import MlflowClient

    received = signals.received() or signal.SIGINT
    run_id = signals.interrupted_run_id()
    runs = {run_id: MlflowClient().get_run(run_id).info.status} if run_id else {}
    print(signals.summary(received, runs, None), file=sys.stderr)
    return signals.exit_code(received)


if __name__ == "__main__":
    sys.exit(main())
