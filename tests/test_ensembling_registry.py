"""The Model Registry: every ensemble a version; the champion alias only to a better one on the same files."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import mlflow
import numpy as np
import pytest
from conftest import Store, ensemble_config, poll
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons.ensembling import registry
from simpsons.ensembling.command import ensemble
from simpsons.errors import ConfigError
from simpsons.tracking import reader, schema, sqlite, store

NAME = "champions"  # this module's registered model: other tests register theirs under `simpsons`


def validation_loss(run_id: str) -> float:
    """What an ensemble of this run alone logs as val_loss: the cross-entropy of its validation outputs."""
    outputs = reader.outputs(run_id, "val")
    classes = reader.class_names(mlflow.get_run(run_id))
    truth = outputs.probabilities[np.arange(len(outputs.labels)), [classes.index(label) for label in outputs.labels]]
    return float(-np.mean(np.log(np.clip(truth, 1e-7, 1))))


def alone(store: Store, run_id: str, *overrides: str) -> str:
    """An ensemble of one run, judged by val_loss (lower is better), registered under NAME."""
    selection = ["metric=val_loss", "direction=min", "top_n=1", f"filter=attributes.run_id = '{run_id}'"]
    return ensemble(ensemble_config(store, *selection, f"registered_model={NAME}", *overrides))


@dataclass(frozen=True)
class History:
    runs: dict[str, str]  # role -> ensemble run id, in the order they ran: mid, worst, outsider, best
    decisions: dict[str, str]  # role -> the run's champion tag
    versions: dict[str, str]  # role -> its registered version


@pytest.fixture(scope="module")
def history(trained_store: Store) -> History:
    """Four ensembles, one after the other: a middling one, a worse one, one on other validation
    files, and a better one (by val_loss, among the sweep's runs, which share their validation files)."""
    mlflow.set_tracking_uri(trained_store.uri)
    # Tiny random models score close (val_loss about ln 4) but apart, by far more than float32 rounding.
    by_loss = {round(validation_loss(run_id), 5): run_id for run_id in trained_store.children}
    assert len(by_loss) >= 3, f"the runs must score apart: {by_loss}"
    best, mid, worst = (by_loss[loss] for loss in (min(by_loss), sorted(by_loss)[1], max(by_loss)))
    roles = {"mid": mid, "worst": worst, "outsider": trained_store.outsider, "best": best}
    runs = {role: alone(trained_store, run_id) for role, run_id in roles.items()}
    client = MlflowClient(trained_store.uri)
    tags = {role: client.get_run(run_id).data.tags for role, run_id in runs.items()}
    return History(
        runs,
        {role: found[schema.CHAMPION_DECISION] for role, found in tags.items()},
        {role: found[schema.REGISTERED_VERSION].removeprefix(f"{NAME}/") for role, found in tags.items()},
    )


@pytest.mark.slow
def test_every_ensemble_is_a_version_and_the_alias_moves_only_to_a_better_one_on_the_same_files(history):
    assert [history.versions[role] for role in ("mid", "worst", "outsider", "best")] == ["1", "2", "3", "4"]
    assert history.decisions["mid"] == "champion: version 1, the first (there was no champion)"
    assert re.fullmatch(
        r"champion: stays at version 1: val_loss \d\.\d{4} does not beat its \d\.\d{4} "
        r"\(lower is better, same validation files\)",
        history.decisions["worst"],
    )
    assert history.decisions["outsider"].startswith(
        "champion: stays at version 1: it was scored on other validation files, so the scores do not compare"
    )
    assert re.fullmatch(
        r"champion: moved from version 1 to 4: val_loss \d\.\d{4} beats its \d\.\d{4} "
        r"\(lower is better, same validation files\)",
        history.decisions["best"],
    )
    client = MlflowClient(mlflow.get_tracking_uri())
    assert champion_of(client, NAME) == "4"
    version = client.get_model_version(NAME, "4")
    assert version.run_id == history.runs["best"]
    assert version.tags[schema.VAL_FILES] == client.get_run(history.runs["best"]).data.tags[schema.VAL_FILES]


@pytest.mark.slow
def test_the_champion_loads_and_predicts_what_the_ensemble_runs_model_predicts(history, store):
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@{schema.CHAMPION}")
    run = MlflowClient(store.uri).get_run(history.runs["best"])
    logged = mlflow.pyfunc.load_model(reader.model_uri(run))
    names = reader.outputs(run.info.run_id, "test").names
    images = np.stack([np.asarray(Image.open(store.images / "test" / n), dtype=np.float32) for n in names])
    np.testing.assert_allclose(champion.predict(images), logged.predict(images), atol=1e-5)
    np.testing.assert_allclose(
        champion.predict(images), reader.outputs(run.info.run_id, "test").probabilities, atol=1e-5
    )
    assert champion.metadata.model_id == logged.metadata.model_id


@pytest.mark.slow
def test_the_alias_is_compared_with_the_champion_of_the_moment_it_moves(history, store):
    """A job that registers while another holds the store's lock (as a concurrent ensemble job does while
    it moves the alias) waits, then compares with the champion that the other job left: it does not take
    the alias back from a better version that arrived in between."""
    client = MlflowClient(store.uri)
    name = "raced"
    mid, worst, best = (client.get_run(history.runs[role]) for role in ("mid", "worst", "best"))

    def register(run, **kwargs) -> registry.Registration:
        score = registry.Score("val_loss", "min", run.data.metrics["val_loss"], run.data.tags[schema.VAL_FILES])
        model_id = reader.model_uri(run).removeprefix("models:/")
        return registry.register(client, name, model_id, run.info.run_id, score, "test")

    assert register(mid).moved  # version 1, the first champion
    results: list[registry.Registration] = []
    with store_lock(store.uri):
        job = threading.Thread(target=lambda: results.append(register(worst)))  # beats nothing but version 1
        job.start()
        poll(lambda: len(client.search_model_versions(f"name = '{name}'")) == 2, "the waiting job's version", 60)
        assert champion_of(client, name) == "1"  # it waits for the lock
        better = client.create_model_version(
            name,
            "models:/" + reader.model_uri(best).removeprefix("models:/"),
            run_id=best.info.run_id,
            tags={schema.VAL_FILES: best.data.tags[schema.VAL_FILES]},
        )
        client.set_registered_model_alias(name, schema.CHAMPION, better.version)  # the other job moves it
    job.join(timeout=120)
    [waited] = results
    assert not waited.moved and waited.champion == str(better.version) == "3"
    assert champion_of(client, name) == "3"


def champion_of(client: MlflowClient, name: str) -> str:
    return str(client.get_registered_model(name).aliases[schema.CHAMPION])


def store_lock(uri: str):
    return sqlite.store_lock(sqlite.absolute_sqlite_uri(uri))


def test_the_comparison_metric_is_the_ensembles_own_when_it_logs_it():
    logged = {"val_loss": 1.0, "best_val_accuracy": 0.5}
    assert registry.comparison_metric("val_loss", "min", logged) == ("val_loss", "min")
    assert registry.comparison_metric("epoch/val_loss", "min", logged) == ("val_loss", "min")  # as runs log it
    assert registry.comparison_metric("rank_score", "max", logged) == ("best_val_accuracy", "max")


def test_the_validation_files_digest_names_the_files_their_labels_and_the_data():
    digest = registry.validation_files_digest("data", ["a.jpg", "b.jpg"], ["cat", "dog"])
    assert digest == registry.validation_files_digest("data", ["b.jpg", "a.jpg"], ["dog", "cat"])  # any order
    assert digest != registry.validation_files_digest("data", ["a.jpg", "b.jpg"], ["dog", "cat"])
    assert digest != registry.validation_files_digest("other data", ["a.jpg", "b.jpg"], ["cat", "dog"])
    assert digest != registry.validation_files_digest("data", ["a.jpg"], ["cat"])


@pytest.mark.slow
def test_every_version_says_its_data_classes_and_validation_files(history, store):
    client = MlflowClient(store.uri)
    version = client.get_model_version(NAME, history.versions["best"])
    run = client.get_run(history.runs["best"])
    classes = reader.class_names(run)
    assert version.tags[schema.DATA_NAME] == "folder"
    assert version.tags[schema.DATA_FINGERPRINT] == run.data.tags[schema.DATA_FINGERPRINT]
    assert json.loads(version.tags[schema.CLASS_NAMES]) == classes
    assert version.tags[schema.VAL_FILES] == run.data.tags[schema.VAL_FILES]
    assert int(version.tags[schema.VAL_FILES_COUNT]) == len(reader.outputs(run.info.run_id, "val").names)
    assert f"Trained on data 'folder' (fingerprint {run.data.tags[schema.DATA_FINGERPRINT][:12]})" in (
        version.description
    )
    assert ", ".join(classes) in version.description and "validation files" in version.description


@pytest.mark.slow
def test_an_ensemble_of_other_classes_is_refused_in_one_line_naming_the_model_that_fits(history, store):
    """A registered model whose versions hold other classes (here: made by hand) refuses the ensemble
    before it logs anything, and the line names the model whose versions have its classes."""
    client = MlflowClient(store.uri)
    best = client.get_run(history.runs["best"])
    client.create_registered_model("letters")
    client.create_model_version(
        "letters",
        reader.model_uri(best),
        run_id=best.info.run_id,
        tags={schema.CLASS_NAMES: json.dumps(["a", "b", "c"])},
    )
    before = len(client.search_runs([best.info.experiment_id]))
    with pytest.raises(ConfigError) as refused:
        alone(store, store.children[0], "registered_model=letters")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("registered_model='letters' holds models of 3 other classes (a, b, c);")
    fitting = re.search(r"data 'folder'\) go to registered_model=(\S+)$", message)[1]  # one that exists
    assert registry.model_classes(client, fitting) == tuple(reader.class_names(best)) != ("a", "b", "c")
    assert len(client.search_runs([best.info.experiment_id])) == before  # nothing logged
    assert len(client.search_model_versions("name = 'letters'")) == 1


def test_a_model_of_new_classes_is_pointed_to_a_new_name_of_its_data(tracking_uri):
    client = MlflowClient(store.configure(tracking_uri))
    client.create_registered_model("simpsons")
    experiment = client.create_experiment("x")
    run = client.create_run(experiment).info.run_id
    client.create_model_version(
        "simpsons", f"runs:/{run}/m", run_id=run, tags={schema.CLASS_NAMES: json.dumps(["bart", "homer"])}
    )
    shapes = registry.Provenance("demo", "f" * 64, ("red_circle", "blue_square"), "v" * 64, 8)
    with pytest.raises(ConfigError, match=r"go to registered_model=simpsons-demo \(a new registered model\)$"):
        registry.check_fits(client, "simpsons", shapes)
    registry.check_fits(client, "simpsons-demo", shapes)  # a model that does not exist yet fits
    registry.check_fits(client, "simpsons", registry.Provenance("simpsons", "f", ("bart", "homer"), "v", 2))
