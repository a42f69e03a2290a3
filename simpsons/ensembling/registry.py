"""The Model Registry: each ensemble's model as a version of one registered model, and its `champion` alias.

A registered model holds models of one class list. Every version says what it was trained and
scored on, in its tags and description: the data's name and fingerprint, the class list and the
validation files (their digest and count). Registering a model of other classes into it is refused
in one line that names the registered model that fits (one whose versions have those classes, or
a new name): `models:/simpsons@champion` never answers with another data set's classes.

The alias moves to the new version when there is no champion yet, or when the champion was scored
on the same validation files and the new version scores better on the comparison metric (the
ensemble's `metric` when the ensemble logs it, else best_val_accuracy). Otherwise it stays: a
champion scored on other validation files (another data set, split or class list) is not
comparable; register those ensembles under another name (registered_model=...).

Two ensemble jobs at once. Registering is safe: MLflow numbers the versions and retries on a
clash, and a job uses the registered model that another job has just created. Moving the alias
is a read, a comparison and a write, and MLflow offers no compare-and-set on aliases. On a SQLite
store the three run under the store's lock file (races.shared_write), so each job compares with
the champion of that moment and the better ensemble ends as champion, whatever the order. On a
tracking server or a database nothing serialises them: two jobs that both set the first champion
clash on its row, and the second decides again against the first's (no error); but two jobs that
read the same champion within the same few milliseconds may both move it, and the later write
wins even if it scored lower. Every ensemble run records what it did to the alias and why (tag
`simpsons.champion`), so such a case shows, and
`MlflowClient().set_registered_model_alias(name, "champion", version)` undoes it.

No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from simpsons.errors import ConfigError
from simpsons.tracking import races, schema

FALLBACK_METRIC = ("best_val_accuracy", "max")  # every ensemble logs it
REGISTERED_MODEL_DESCRIPTION = (
    "Ensembles of simpsons training runs on {data}, one version per `python -m simpsons.ensemble`. "
    "Alias champion: the best version scored on the same validation files."
)
CLASSES_SHOWN = 5  # of a class list, in a one-line message


@dataclass(frozen=True)
class Provenance:
    """What a version's model was trained and scored on: the registry's tags and description say it."""

    data_name: str  # the training runs' data.name, e.g. demo, simpsons, folder
    fingerprint: str  # their data.fingerprint tag
    class_names: tuple[str, ...]
    val_files: str  # validation_files_digest
    val_count: int  # how many validation files

    def tags(self) -> dict[str, str]:
        return {
            schema.DATA_NAME: self.data_name,
            schema.DATA_FINGERPRINT: self.fingerprint,
            schema.CLASS_NAMES: json.dumps(list(self.class_names)),
            schema.VAL_FILES: self.val_files,
            schema.VAL_FILES_COUNT: str(self.val_count),
        }

    def describe(self) -> str:
        return (
            f"Trained on data '{self.data_name}' (fingerprint {self.fingerprint[:12]}), "
            f"{len(self.class_names)} classes: {', '.join(self.class_names)}. "
            f"Scored on {self.val_count} validation files (digest {self.val_files[:12]})."
        )


@dataclass(frozen=True)
class Score:
    """What the champion is judged by: a metric of the ensemble run, and the files it was scored on."""

    metric: str
    direction: str  # max | min
    value: float
    val_files: str  # validation_files_digest of the ensemble's validation set

    def beats(self, other: float) -> bool:
        return self.value > other if self.direction == "max" else self.value < other


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: str  # the champion's version after this registration
    moved: bool
    reason: str  # one line: what happened to the alias, and why

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def comparison_metric(metric: str, direction: str, logged: dict[str, float]) -> tuple[str, str]:
    """The ensemble's own ranking metric if the ensemble logs it (val_loss, best_val_accuracy, ...);
    a metric that only the training runs log (a custom score) falls back to best_val_accuracy. A
    curve named as training runs log it (epoch/val_loss) is the ensemble's val_loss."""
    metric = metric if metric in logged else metric.removeprefix(schema.CURVE_PREFIX)
    return (metric, direction) if metric in logged else FALLBACK_METRIC


def validation_files_digest(data_fingerprint: str, names: list[str], labels: list[str]) -> str:
    """Which validation files, with their labels, of which data (the fingerprint hashes the contents)."""
    lines = [data_fingerprint, *sorted(f"{label}\t{name}" for name, label in zip(names, labels, strict=True))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_fits(client: MlflowClient, name: str, provenance: Provenance) -> None:
    """Raise ConfigError, in one line naming the registered model that fits, when `name` holds models
    of another class list. A model that does not exist yet fits."""
    theirs = model_classes(client, name)
    if theirs is None or theirs == provenance.class_names:
        return
    fitting = next(
        (
            found.name
            for found in client.search_registered_models(max_results=1000)
            if found.name != name and model_classes(client, found.name) == provenance.class_names
        ),
        None,
    )
    suggested = fitting or _new_name(client, name, provenance)
    raise ConfigError(
        f"registered_model={name!r} holds models of {len(theirs)} other classes ({_shown(theirs)}); this "
        f"ensemble's {len(provenance.class_names)} classes ({_shown(provenance.class_names)}, data "
        f"'{provenance.data_name}') go to registered_model={suggested}"
        + ("" if fitting else " (a new registered model)")
    )


def model_classes(client: MlflowClient, name: str) -> tuple[str, ...] | None:
    """The class list of a registered model's versions (their tag, or their run's for versions registered
    before the tag existed); None when it does not exist or no version says."""
    try:
        versions = client.search_model_versions(_name_filter(name), max_results=100)
    except MlflowException:
        return None
    for version in sorted(versions, key=lambda v: -int(v.version)):
        found = version.tags.get(schema.CLASS_NAMES)
        if found is None and version.run_id:
            try:
                found = client.get_run(version.run_id).data.tags.get(schema.CLASS_NAMES)
            except MlflowException:
                found = None  # its run was deleted
        if found:
            return tuple(json.loads(found))
    return None


def _refuse_if_earlier_differ(client: MlflowClient, name: str, version: ModelVersion, provenance: Provenance) -> None:
    """Delete `version` and refuse it when a lower version of `name` has another class list (see register)."""
    earlier = [v for v in client.search_model_versions(_name_filter(name)) if int(v.version) < int(version.version)]
    found = [json.loads(v.tags[schema.CLASS_NAMES]) for v in earlier if schema.CLASS_NAMES in v.tags]
    if all(tuple(classes) == provenance.class_names for classes in found):
        return
    client.delete_model_version(name, version.version)
    check_fits(client, name, provenance)  # raises, naming the model that fits: these are the earlier versions'
    raise ConfigError(f"registered_model={name!r} holds models of other classes; use another registered_model")


def _name_filter(name: str) -> str:
    return f'name = "{name}"' if "'" in name else f"name = '{name}'"


def _new_name(client: MlflowClient, name: str, provenance: Provenance) -> str:
    """`<name>-<data name>`, or with the class list's digest when that is taken too."""
    candidate = f"{name}-{provenance.data_name}"
    if model_classes(client, candidate) in (None, provenance.class_names):
        return candidate
    return f"{name}-{hashlib.sha256(json.dumps(list(provenance.class_names)).encode()).hexdigest()[:8]}"


def _shown(classes: tuple[str, ...]) -> str:
    more = f", ... {len(classes) - CLASSES_SHOWN} more" if len(classes) > CLASSES_SHOWN else ""
    return ", ".join(classes[:CLASSES_SHOWN]) + more


def register(
    client: MlflowClient,
    name: str,
    model_id: str,
    run_id: str,
    score: Score,
    description: str,
    provenance: Provenance | None = None,
) -> Registration:
    """A new version of `name` for the logged model, and the champion alias moved to it or not.

    With `provenance`, the version carries it (tags, description), and a registered model of another
    class list refuses it (ConfigError). Two ensembles of different classes that register into a new
    model at the same instant both pass that check; then the class list of the lower version, which
    MLflow numbered first, wins: the other deletes its version and is refused in the same line.
    """
    tags = {schema.VAL_FILES: score.val_files, schema.SCORE: f"{score.metric}={score.value:.4f}"}
    data = "one data set"
    if provenance is not None:
        tags |= provenance.tags()
        description = f"{description}. {provenance.describe()}"
        data = f"data '{provenance.data_name}' ({len(provenance.class_names)} classes)"
        check_fits(client, name, provenance)
    _ensure_registered_model(client, name, REGISTERED_MODEL_DESCRIPTION.format(data=data))
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=tags, description=description
    )
    if provenance is not None:
        _refuse_if_earlier_differ(client, name, version, provenance)
    _link_logged_model(client, model_id, version)

    def decide_and_move() -> tuple[str, bool, str]:  # decided again after a clash: the champion may be new
        champion, moved, reason = _decide(client, name, version.version, score)
        if moved:
            client.set_registered_model_alias(name, schema.CHAMPION, version.version)
        return champion, moved, reason

    # SQLite: under the store's lock, so no other job moves the alias in between.
    champion, moved, reason = races.shared_write(client.tracking_uri, decide_and_move, f"alias {name}@champion")
    return Registration(name, str(version.version), str(champion), moved, reason)


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):  # another job may have just created it
            raise


def _link_logged_model(client: MlflowClient, model_id: str, version: ModelVersion) -> None:
    """What mlflow.register_model does (it also prints three lines): the logged model lists its
    registered versions, which the UI's model page shows."""
    linked = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = [*json.loads(linked or "[]"), {"name": version.name, "version": version.version}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = client.get_registered_model(name).aliases.get(schema.CHAMPION)
    return client.get_model_version(name, version) if version is not None else None


def _decide(client: MlflowClient, name: str, version: str, score: Score) -> tuple[str, bool, str]:
    """(the champion's version afterwards, whether the alias moves to `version`, why)."""
    champion = _champion(client, name)
    if champion is None:
        return version, True, f"champion: version {version}, the first (there was no champion)"
    stays = f"champion: stays at version {champion.version}"
    try:
        run = client.get_run(champion.run_id) if champion.run_id else None
    except MlflowException:
        run = None  # deleted
    if run is None:
        return champion.version, False, f"{stays}: its run is gone, so there is nothing to compare with"
    if run.data.tags.get(schema.VAL_FILES) != score.val_files:
        other_files = "it was scored on other validation files, so the scores do not compare"
        hint = "use registered_model=<another name> for another data set or split"
        return champion.version, False, f"{stays}: {other_files} ({hint})"
    theirs = run.data.metrics.get(score.metric)
    if theirs is None:
        return champion.version, False, f"{stays}: its run has no {score.metric} to compare with"
    better = f"{'higher' if score.direction == 'max' else 'lower'} is better, same validation files"
    if score.beats(theirs):
        moved = f"champion: moved from version {champion.version} to {version}"
        return version, True, f"{moved}: {score.metric} {score.value:.4f} beats its {theirs:.4f} ({better})"
    return (
        champion.version,
        False,
        f"{stays}: {score.metric} {score.value:.4f} does not beat its {theirs:.4f} ({better})",
    )
