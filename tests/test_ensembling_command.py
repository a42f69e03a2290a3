"""One ensemble end to end, on tiny real runs in a private SQLite store (conftest.trained_store)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import Store, ensemble_config
from mlflow.tracking import MlflowClient

from simpsons.ensembling.command import ensemble, ensemble_name
from simpsons.ensembling.maths import expected_calibration_error, negative_log_likelihood, temperature_scaled
from simpsons.tracking import lifecycle, reader, schema


def probabilities(run_id: str, split: str) -> np.ndarray:
    return reader.outputs(run_id, split).probabilities


def candidate_table(run_id: str) -> list[dict]:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=schema.CANDIDATES_JSON)
    return json.loads(Path(path).read_text())


def ranked(store: Store, metric: str = "best_val_accuracy") -> list[str]:
    client = MlflowClient(store.uri)
    children = [client.get_run(r) for r in store.children]
    return [r.info.run_id for r in sorted(children, key=lambda r: -r.data.metrics[metric])]


def test_the_ensemble_averages_the_recorded_outputs_of_the_top_n(store, capsys):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=3", "register=false"))
    run = MlflowClient(store.uri).get_run(run_id)
    members = run.data.tags[schema.MEMBERS].split(",")
    assert members == ranked(store)[:3] == run.data.tags[schema.CANDIDATES].split(",")
    assert run.data.tags[schema.RUN_TYPE] == "ensemble"
    for split in ("val", "test"):
        expected = np.mean([probabilities(m, split) for m in members], axis=0)
        np.testing.assert_allclose(probabilities(run_id, split), expected, atol=1e-6)
    labels = reader.outputs(run_id, "test").labels
    classes = reader.class_names(run)
    accuracy = np.mean(probabilities(run_id, "test").argmax(1) == [classes.index(label) for label in labels])
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(accuracy)
    assert metrics["test_accuracy_gain"] == pytest.approx(
        accuracy - max(c["test_accuracy"] for c in candidate_table(run_id))
    )
    assert metrics["best_val_accuracy"] == metrics["val_accuracy"]  # ensembles rank with training runs
    assert metrics["best_val_loss"] == metrics["val_loss"]  # and fill the runs table's best_* columns
    assert {"val_macro_f1", "test_macro_f1", "val_loss"} <= metrics.keys()
    assert (run.data.params["num_candidates"], run.data.params["num_members"]) == ("3", "3")
    member_lines = [run.data.params[f"member_{i}"] for i in range(3)]
    assert [re.search(r"\(run (\w+)\)", line)[1] for line in member_lines] == members
    artifacts = {a.path for a in MlflowClient(store.uri).list_artifacts(run_id, "evaluation")}
    assert {schema.MEMBERS_CHART, "evaluation/test_confusion_matrix.png"} <= artifacts
    assert run.data.tags["mlflow.note.content"].startswith("Ensemble of 3 member(s), by the mean")

    printed = capsys.readouterr().out
    assert f"ensemble run  {run_id} ({run.info.run_name})" in printed
    for line in printed.splitlines()[2:6]:  # the table's rows: every value to 4 decimals
        assert all(len(number.split(".")[1]) == 4 for number in re.findall(r"\s(\d+\.\d+)", line))


def test_the_logged_model_is_named_like_its_run_and_carries_the_final_metrics(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2", "register=false"))
    run = MlflowClient(store.uri).get_run(run_id)
    model = mlflow.get_logged_model(reader.model_uri(run).removeprefix("models:/"))
    stamp = f"{datetime.fromtimestamp(MlflowClient(store.uri).get_run(store.sweep).info.start_time / 1000):%m-%d %H:%M}"
    assert run.info.run_name == f"ens mean top2 {stamp}" and model.name == run.info.run_name.replace(":", "_")
    linked = {metric.key: metric.value for metric in model.metrics}
    for key in ("val_accuracy", "best_val_accuracy", "test_accuracy", "test_macro_f1", "val_loss"):
        assert linked[key] == pytest.approx(run.data.metrics[key]), key


def test_ensembles_of_different_sweeps_are_named_apart(store):
    """A second sweep, started two minutes earlier, that reuses two of the first's runs: the same runs,
    another name (its sweep's start), nested under its own sweep."""
    client = MlflowClient(store.uri)
    experiment = reader.experiment_id(client, "simpsons")
    earlier = client.get_run(store.sweep).info.start_time - 120_000  # sweep=latest stays the fixture's sweep
    tags = {schema.RUN_TYPE: schema.SWEEP}
    other = client.create_run(experiment, start_time=earlier, tags=tags, run_name="sweep b").info.run_id
    for child in store.children[:2]:
        lifecycle.record_reuse(client, experiment, "reused", other, client.get_run(child), {})
    client.set_terminated(other)
    runs = {
        sweep: client.get_run(ensemble(ensemble_config(store, f"sweep={sweep}", "top_n=2", "register=false")))
        for sweep in (store.sweep, other)
    }
    assert len({run.info.run_name for run in runs.values()}) == 2
    for sweep, run in runs.items():
        stamp = f"{datetime.fromtimestamp(client.get_run(sweep).info.start_time / 1000):%m-%d %H:%M}"
        assert run.info.run_name == f"ens mean top2 {stamp}" and run.data.tags[schema.PARENT_RUN] == sweep


def test_names_say_the_method_and_fit_the_runs_table(store):
    started = int(datetime(2026, 11, 28, 12, 44).timestamp() * 1000)
    weighted = ensemble_config(store, "method=mean", "weights=val_accuracy")
    assert ensemble_name(weighted, 5, started) == "ens wmean top5 11-28 12:44"
    assert ensemble_name(ensemble_config(store, "method=greedy"), 3) == "ens greedy top3"  # the whole experiment
    calibrated = ensemble_config(store, "method=greedy", "calibrate=true")
    assert ensemble_name(calibrated, 12, started) == "ens greedy top12 cal"  # the stamp would not fit
    for cfg in (weighted, calibrated):
        assert len(ensemble_name(cfg, 99, started)) <= 30


def test_weights_by_validation_accuracy(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "weights=val_accuracy", "register=false"))
    client = MlflowClient(store.uri)
    members = client.get_run(run_id).data.tags[schema.MEMBERS].split(",")
    accuracies = np.array([client.get_run(m).data.metrics["best_val_accuracy"] for m in members])  # the kept epoch's
    expected = np.average([probabilities(m, "val") for m in members], axis=0, weights=accuracies)
    np.testing.assert_allclose(probabilities(run_id, "val"), expected, atol=1e-6)


def test_greedy_members_are_the_candidates_it_picked_and_never_below_the_best_on_validation(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "method=greedy", "register=false"))
    run = MlflowClient(store.uri).get_run(run_id)
    table = candidate_table(run_id)
    assert [c["run_id"] for c in table] == run.data.tags[schema.CANDIDATES].split(",")
    assert [c["run_id"] for c in table if c["weight"] > 0] == run.data.tags[schema.MEMBERS].split(",")
    assert all(c["member"] == (c["weight"] > 0) for c in table)
    assert run.data.params["num_members"] == str(sum(c["member"] for c in table))
    assert run.data.metrics["val_accuracy"] >= max(c["val_accuracy"] for c in table)
    assert run.data.metrics["val_accuracy_gain"] >= 0
    assert sum(c["weight"] for c in table) == pytest.approx(1)


def label_indices(run_id: str, split: str) -> np.ndarray:
    classes = reader.class_names(mlflow.get_run(run_id))
    return np.array([classes.index(label) for label in reader.outputs(run_id, split).labels])


def test_without_calibrate_the_calibration_error_is_logged_and_nothing_is_scaled(store, capsys):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2", "register=false"))
    run = MlflowClient(store.uri).get_run(run_id)
    members = run.data.tags[schema.MEMBERS].split(",")
    for split in ("val", "test"):
        mean = np.mean([probabilities(m, split) for m in members], axis=0)
        expected = expected_calibration_error(mean, label_indices(run_id, split))
        assert run.data.metrics[f"{split}_ece"] == pytest.approx(expected)
    assert not {"temperature", "val_ece_calibrated", "test_ece_calibrated"} & run.data.metrics.keys()
    assert all("temperature" not in c and "val_ece" in c for c in candidate_table(run_id))
    assert "not calibrated (calibrate=false); ECE val 0." in capsys.readouterr().out


def test_calibrate_scales_the_average_by_a_temperature_fitted_on_validation(store, capsys):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=3", "calibrate=true", "register=false"))
    run = MlflowClient(store.uri).get_run(run_id)
    assert run.info.run_name.startswith("ens mean top3 cal ")
    metrics = run.data.metrics
    temperature = metrics["temperature"]
    members = run.data.tags[schema.MEMBERS].split(",")
    for split in ("val", "test"):
        labels = label_indices(run_id, split)
        mean = np.mean([probabilities(m, split) for m in members], axis=0)
        logged = probabilities(run_id, split)  # the calibrated outputs, with the plain average's argmax
        np.testing.assert_allclose(logged, temperature_scaled(mean, temperature), atol=1e-6)
        assert (logged.argmax(1) == mean.argmax(1)).all()
        assert metrics[f"{split}_ece"] == pytest.approx(expected_calibration_error(mean, labels))
        assert metrics[f"{split}_ece_calibrated"] == pytest.approx(expected_calibration_error(logged, labels))
        assert metrics[f"{split}_loss"] == pytest.approx(negative_log_likelihood(logged, labels), abs=1e-5)
    val_labels = label_indices(run_id, "val")
    val_mean = np.mean([probabilities(m, "val") for m in members], axis=0)
    assert negative_log_likelihood(probabilities(run_id, "val"), val_labels) <= negative_log_likelihood(
        val_mean, val_labels
    )
    for candidate in candidate_table(run_id):  # each with its own temperature, fitted on its validation outputs
        own = {split: probabilities(candidate["run_id"], split) for split in ("val", "test")}
        assert candidate["temperature"] > 0
        for split, found in own.items():
            labels = label_indices(run_id, split)
            assert candidate[f"{split}_ece"] == pytest.approx(expected_calibration_error(found, labels))
            scaled = temperature_scaled(found, candidate["temperature"])
            assert candidate[f"{split}_ece_calibrated"] == pytest.approx(expected_calibration_error(scaled, labels))
        assert negative_log_likelihood(temperature_scaled(own["val"], candidate["temperature"]), val_labels) <= (
            negative_log_likelihood(own["val"], val_labels)
        )
    assert f"Calibrated by the temperature {temperature:.4f}" in run.data.tags["mlflow.note.content"]
    assert f"calibration   temperature {temperature:.4f}, fitted on validation; ECE val " in capsys.readouterr().out


def test_an_ensemble_of_a_sweep_is_nested_under_it_with_a_members_table_that_links_existing_runs(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=3", "register=false"))
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    assert run.data.tags[schema.PARENT_RUN] == store.sweep
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=schema.MEMBERS_JSON)
    members = json.loads(Path(path).read_text())
    assert [row["run_id"] for row in members] == run.data.tags[schema.MEMBERS].split(",")
    for row in members:
        member = client.get_run(row["run_id"])  # a run that exists
        assert row["run_name"] == member.info.run_name and row["link"] == f"runs:/{member.info.run_id}"
        assert row["ui"] == f"#/experiments/{member.info.experiment_id}/runs/{member.info.run_id}"
        assert row["best_val_accuracy"] == member.data.metrics["best_val_accuracy"]
        assert (
            f"| [{member.info.run_name}]({row['ui']}) | {member.info.run_id} | {row['weight']:.4f} |"
            in (run.data.tags[schema.NOTE])
        )
    assert sum(row["weight"] for row in members) == pytest.approx(1)
    table = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=schema.MEMBERS_CSV)).read_text()
    assert table.splitlines()[0].startswith("run_name,run_id,link,ui,backbone,weight,best_val_accuracy")
    assert len(table.splitlines()) == 1 + len(members)
    # the sweep's outcome still counts its jobs alone
    from simpsons.tracking import sweep_outcome

    jobs = sweep_outcome.outcome(client, client.get_run(store.sweep)).jobs
    assert {job.run_id for job in jobs} == set(store.children)


def test_an_ensemble_logs_its_members_datasets_and_its_model_carries_its_metrics_scored_on_them(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2", "register=false"))
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    member = client.get_run(run.data.tags[schema.MEMBERS].split(",")[0])

    def datasets(found):
        return {(i.dataset.name, i.dataset.digest, tuple((t.key, t.value) for t in i.tags)) for i in found}

    assert datasets(run.inputs.dataset_inputs) == datasets(member.inputs.dataset_inputs)
    contexts = {
        i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in run.inputs.dataset_inputs
    }
    by_context = {contexts[i.dataset.name]: i.dataset for i in run.inputs.dataset_inputs}
    model = mlflow.get_logged_model(reader.model_uri(run).removeprefix("models:/"))
    linked = {metric.key: metric for metric in model.metrics}
    assert linked.keys() == run.data.metrics.keys()
    for key, metric in linked.items():
        assert metric.value == pytest.approx(run.data.metrics[key]), key
        scored_on = by_context["test" if key.startswith("test_") else "validation"]
        assert (metric.dataset_name, metric.dataset_digest) == (scored_on.name, scored_on.digest), key
    assert len(client.get_metric_history(run_id, "val_accuracy")) == 1  # logged once


def test_the_chart_labels_members_by_run_name_and_a_shared_name_gets_the_run_id():
    from types import SimpleNamespace

    from simpsons.ensembling.writer import chart_labels

    def candidate(name: str, run_id: str):
        return SimpleNamespace(run=SimpleNamespace(info=SimpleNamespace(run_name=name)), run_id=run_id)

    named = [candidate("opt=adam drop=0.2", "a" * 32), *(candidate("seed=1", c * 32) for c in "bc")]
    found = SimpleNamespace(candidates=named)
    assert chart_labels(found) == ["opt=adam drop=0.2", f"seed=1 ({'b' * 8})", f"seed=1 ({'c' * 8})"]


@pytest.mark.parametrize(("given", "level"), [(False, "DEBUG"), (True, "WARNING")])
def test_fewer_eligible_runs_than_top_n_warn_only_when_the_user_set_top_n(store, caplog, given, level):
    caplog.set_level("DEBUG", logger="simpsons.ensemble")
    ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=5", "register=false"), top_n_given=given)
    [record] = [r for r in caplog.records if "eligible run(s) for top_n=5" in r.getMessage()]
    assert record.levelname == level
