"""The ensemble job, and report on its runs, on tiny real runs in a private SQLite store (predict: test_predict.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import TINY, TINY_MODEL, compose_train, folder_data, free_port, get_json, mlflow_cli, serving
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from simpsons import report
from simpsons.config import CONF_DIR
from simpsons.ensemble import ensemble
from simpsons.ensembling import greedy_weights, weighted_mean
from simpsons.errors import ConfigError
from simpsons.job import JobContext, train
from simpsons.tracking import reader as runs
from simpsons.tracking import schema


@dataclass(frozen=True)
class Store:
    uri: str
    sweep: str  # the parent run id of a sweep of four runs
    children: list[str]
    outsider: str  # a run outside the sweep, with another validation split
    images: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory, image_folders) -> Store:
    """Four tiny runs nested under one sweep, and one run with another split outside it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("simpsons", artifact_location=(Path(uri[10:]).parent / "mlruns").as_uri())
    sweep_dir = tmp_path_factory.mktemp("multirun")
    parent = client.create_run(
        experiment, run_name="sweep", tags={schema.RUN_TYPE: schema.SWEEP, schema.SWEEP_ID: "fixture"}
    ).info.run_id
    base = [*folder_data(image_folders), "epochs=2", f"tracking.uri={uri}"]
    settings = [
        TINY_MODEL,
        [*TINY_MODEL, "dropout=0.1", "optimizer=rmsprop"],
        ["backbone=mobilenetv2", "backbone.kwargs.alpha=0.35", "image_size=32", *TINY],
        [*TINY_MODEL, "optimizer.lr=1e-2", "seed=7"],
    ]
    children = [
        train(compose_train([*s, *base]), JobContext([], sweep_dir=sweep_dir, sweep_id="fixture")) for s in settings
    ]
    client.set_terminated(parent)
    outsider = train(compose_train([*TINY_MODEL, *base, "data.split_seed=7"]), JobContext([]))
    return Store(uri, parent, children, outsider, image_folders)


def ensemble_config(store: Store, *overrides: str):
    cfg = OmegaConf.load(CONF_DIR / "ensemble.yaml")
    cfg.pop("defaults")
    cfg.pop("hydra")
    cfg.tracking = OmegaConf.load(CONF_DIR / "tracking" / "default.yaml")
    cfg.tracking.uri = store.uri
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def probabilities(run_id: str, split: str) -> np.ndarray:
    return runs.outputs(run_id, split).probabilities


def members_of(store: Store, run_id: str) -> list[str]:
    return MlflowClient(store.uri).get_run(run_id).data.tags[schema.MEMBERS].split(",")


def member_table(run_id: str) -> list[dict]:
    return json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="members.json")).read_text()
    )


def ranked(store: Store, metric: str = "best_val_accuracy") -> list[str]:
    client = MlflowClient(store.uri)
    children = [client.get_run(r) for r in store.children]
    return [r.info.run_id for r in sorted(children, key=lambda r: -r.data.metrics[metric])]


def test_the_ensemble_takes_the_top_n_by_the_metric_and_averages_their_recorded_outputs(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=3"))
    run = MlflowClient(store.uri).get_run(run_id)
    members = run.data.tags[schema.MEMBERS].split(",")
    assert members == ranked(store)[:3]
    assert run.data.tags[schema.RUN_TYPE] == "ensemble"
    for split in ("val", "test"):
        expected = np.mean([probabilities(m, split) for m in members], axis=0)
        np.testing.assert_allclose(probabilities(run_id, split), expected, atol=1e-6)
    labels = runs.outputs(run_id, "test").labels
    classes = runs.class_names(run)
    accuracy = np.mean(probabilities(run_id, "test").argmax(1) == [classes.index(label) for label in labels])
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    member_best = max(
        json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="members.json")).read_text()),
        key=lambda m: m["test_accuracy"],
    )["test_accuracy"]  # noqa: E501
    assert run.data.metrics["test_accuracy_gain"] == pytest.approx(accuracy - member_best)
    artifacts = {a.path for a in MlflowClient(store.uri).list_artifacts(run_id, "evaluation")}
    assert {"evaluation/members_vs_ensemble.png", "evaluation/test_confusion_matrix.png"} <= artifacts


def test_parent_ensemble_mismatched_and_unscored_runs_are_left_out_with_the_reason(store, caplog):
    ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2"))
    client = MlflowClient(store.uri)
    scores = dict(zip(store.children, [0.9, 0.8, 0.7, float("nan")], strict=True)) | {store.outsider: 0.95}
    for run_id, score in scores.items():  # a made-up metric, so that the ranking is known
        client.log_metric(run_id, "rank_score", score)
    with caplog.at_level(logging.INFO, logger="simpsons.ensemble"):
        run_id = ensemble(ensemble_config(store, "top_n=10", "metric=rank_score"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]
    assert any(store.children[3][:8] in line and "no finite rank_score" in line for line in lines)
    assert any(store.children[0][:8] in line and "its data.split_seed differs" in line for line in lines)
    assert "only 1 eligible run(s) for top_n=10" in caplog.text
    assert client.get_run(run_id).data.tags[schema.MEMBERS] == store.outsider

    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "metric=rank_score"))
    assert client.get_run(run_id).data.tags[schema.MEMBERS].split(",") == store.children[:3]


def test_one_run_per_backbone_direction_sweep_and_filter(store, caplog):
    client = MlflowClient(store.uri)
    with caplog.at_level(logging.INFO, logger="simpsons.ensemble"):
        run_id = ensemble(ensemble_config(store, "sweep=latest", "one_per_backbone=true"))
    members = [client.get_run(m) for m in client.get_run(run_id).data.tags[schema.MEMBERS].split(",")]
    assert sorted(m.data.params["backbone.name"] for m in members) == ["mobilenet", "mobilenetv2"]
    assert "a better mobilenet run is already in" in caplog.text

    run_id = ensemble(ensemble_config(store, "sweep=latest", "metric=val_loss", "direction=min", "top_n=4"))
    losses = [
        client.get_run(m).data.metrics["val_loss"] for m in client.get_run(run_id).data.tags[schema.MEMBERS].split(",")
    ]
    assert losses == sorted(losses)

    run_id = ensemble(ensemble_config(store, "filter=params.`optimizer.name` = 'rmsprop'"))
    assert client.get_run(run_id).data.tags[schema.MEMBERS] == store.children[1]
    with pytest.raises(ConfigError, match=r"filter='params.dropout ===' is not a valid MLflow search filter"):
        ensemble(ensemble_config(store, "filter=params.dropout ==="))


def test_weights_by_validation_accuracy(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "weights=val_accuracy"))
    client = MlflowClient(store.uri)
    members = client.get_run(run_id).data.tags[schema.MEMBERS].split(",")
    accuracies = np.array([client.get_run(m).data.metrics["val_accuracy"] for m in members])
    expected = np.average([probabilities(m, "val") for m in members], axis=0, weights=accuracies)
    np.testing.assert_allclose(probabilities(run_id, "val"), expected, atol=1e-6)


def test_greedy_is_never_below_its_best_member_on_validation(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "method=greedy"))
    run = MlflowClient(store.uri).get_run(run_id)
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="members.json")).read_text()
    )
    assert run.data.metrics["val_accuracy"] >= max(m["val_accuracy"] for m in table)
    assert run.data.metrics["val_accuracy_gain"] >= 0
    assert sum(m["weight"] for m in table) == pytest.approx(1)


def test_greedy_selection_combines_complementary_members():
    labels = np.array([0, 1, 2, 0])
    good_at_0_and_1 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1]])
    good_at_2 = np.array([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.3, 0.4, 0.3]])
    useless = np.full((4, 3), 1 / 3)
    weights = greedy_weights([useless, good_at_0_and_1, good_at_2], labels)
    assert weights[0] == 0 and weights[1] > 0 and weights[2] > 0
    combined = weighted_mean([useless, good_at_0_and_1, good_at_2], weights)
    assert (combined.argmax(1) == labels).all()


def test_the_cli_says_what_is_wrong_in_one_line(store, tmp_path):
    command = [sys.executable, "-m", "simpsons.ensemble", f"tracking.uri={store.uri}", "method=vote"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "error: " in line]
    assert "method='vote' is unknown; use one of: mean, greedy" in line


def test_no_eligible_run_is_a_clear_error(store):
    with pytest.raises(ConfigError, match="no finished training run with best_val_accuracy to ensemble"):
        ensemble(ensemble_config(store, "filter=params.dropout = '0.99'"))
    with pytest.raises(ConfigError, match=r"method='vote' is unknown; use one of: mean, greedy"):
        ensemble(ensemble_config(store, "method=vote"))


def test_the_logged_ensemble_model_takes_images_of_any_size(store):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2"))
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    model = mlflow.pyfunc.load_model(runs.model_uri(run))
    names = runs.outputs(run_id, "test").names
    originals = [Image.open(store.images / "test" / n) for n in names]
    as_recorded = np.stack([np.asarray(image, dtype=np.float32) for image in originals])
    np.testing.assert_allclose(model.predict(as_recorded), probabilities(run_id, "test"), atol=1e-5)

    larger = np.stack([np.asarray(image.resize((80, 64)), dtype=np.float32) for image in originals])
    members = [
        mlflow.pyfunc.load_model(runs.model_uri(client.get_run(m))) for m in run.data.tags[schema.MEMBERS].split(",")
    ]
    expected = np.mean([member.predict(larger) for member in members], axis=0)
    np.testing.assert_allclose(model.predict(larger), expected, atol=1e-5)


def test_mlflow_models_serve_answers_with_the_ensemble(store, tmp_path):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2"))
    uri = runs.model_uri(MlflowClient(store.uri).get_run(run_id))
    names = runs.outputs(run_id, "test").names[:3]
    images = np.stack([np.asarray(Image.open(store.images / "test" / n), dtype=np.float32) for n in names])
    port = free_port()
    venv_bin = str(Path(mlflow_cli()).parent)  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    command = [mlflow_cli(), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with serving(command, f"http://127.0.0.1:{port}/ping", tmp_path, env) as url:
        answer = get_json(url.replace("/ping", "/invocations"), {"inputs": images.tolist()})
    np.testing.assert_allclose(np.array(answer["predictions"]), probabilities(run_id, "test")[:3], atol=1e-5)


def test_report_lists_the_sweep_sorted_by_the_metric_with_its_ensembles(store, tmp_path, capsys):
    ensemble(ensemble_config(store, f"sweep={store.sweep}", "method=greedy"))
    capsys.readouterr()
    status = report.main(
        ["--sweep", store.sweep, "--format", "markdown", "--output", str(tmp_path), "--tracking-uri", store.uri]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (tmp_path / "results.md").read_text().strip()
    training, ensembles = printed.split("## Ensembles")
    rows = [line for line in training.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert len(rows) == 4
    best = [float(row.split("|")[11]) for row in rows]
    assert best == sorted(best, reverse=True)
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(run_id[:8] for run_id in store.children)
    assert "greedy" in ensembles
    assert Image.open(tmp_path / "results.png").format == "PNG"
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("id,run,backbone,image_size,dropout,batch_size,epochs,optimizer,lr,val_accuracy")
