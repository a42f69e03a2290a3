"""Runs on the real Simpsons images in ../shared (skipped, with the reason, where it is absent)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from conftest import (
    MOBILENET_WEIGHTS,
    SIMPSONS_MINI,
    TINY_MODEL,
    clean_environment,
    requires,
    run_module,
    train_settings,
)
from mlflow.tracking import MlflowClient

from simpsons.tracking import schema
from simpsons.tracking.predictions import from_csv
from simpsons.training.recipe import JobContext, train

pytestmark = pytest.mark.slow  # every test trains through the recipe on real images

KAGGLE_MINI = ["data=simpsons", f"data.dir={SIMPSONS_MINI}"]


@requires(SIMPSONS_MINI)
def test_kaggle_layout_with_a_filename_labelled_test_set(tracking_uri):
    run_id = train(
        train_settings([*TINY_MODEL, *KAGGLE_MINI, "epochs=1", f"tracking.uri={tracking_uri}"]), JobContext([])
    )
    run = MlflowClient(tracking_uri).get_run(run_id)
    params = run.data.params
    classes = json.loads(run.data.tags["class_names"])
    assert params["data.num_classes"] == "20"
    assert int(params["data.train_images"]) + int(params["data.val_images"]) == 800
    assert params["data.test_images"] == "200"
    assert params["data.skipped_files"] == "0"
    # The headline figure is the logged test outputs' accuracy: 200 rows, one per Kaggle test file.
    test = from_csv(mlflow.artifacts.load_text(f"runs:/{run_id}/predictions/test.csv"))
    assert len(test.names) == 200
    predicted = [classes[int(np.argmax(row))] for row in test.probabilities]
    right = np.mean([p == label for p, label in zip(predicted, test.labels, strict=True)])
    assert run.data.metrics["test_accuracy"] == pytest.approx(right, abs=1e-6)


@requires(SIMPSONS_MINI)
@requires(MOBILENET_WEIGHTS)
def test_pretrained_imagenet_weights_beat_chance_on_the_kaggle_test_set(tracking_uri):
    overrides = ["backbone=mobilenet", "backbone.kwargs.alpha=0.25", f"backbone.weights={MOBILENET_WEIGHTS}"]
    overrides += ["image_size=128", "epochs=15", "optimizer.lr=3e-3", *KAGGLE_MINI, f"tracking.uri={tracking_uri}"]
    run = MlflowClient(tracking_uri).get_run(train(train_settings(overrides), JobContext([])))
    chance = 1 / 20
    assert run.data.metrics["test_accuracy"] > 3 * chance, run.data.metrics


@requires(SIMPSONS_MINI)
def test_finetuning_with_augmentation_runs_end_to_end_on_kaggle_images(tracking_uri):
    overrides = [*TINY_MODEL, *KAGGLE_MINI, "epochs=1", "finetune.layers=3", "finetune.epochs=1", "augment=light"]
    run = MlflowClient(tracking_uri).get_run(
        train(train_settings([*overrides, f"tracking.uri={tracking_uri}"]), JobContext([]))
    )
    assert run.info.status == "FINISHED"
    assert run.data.tags["phases"].startswith("head: epochs 1-1; finetune: epochs 2-2, top 3 layers, lr 0.0001; kept")
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "epoch/loss")
    assert [m.step for m in history] == [1, 2]
    assert "test_accuracy" in run.data.metrics


@requires(SIMPSONS_MINI)
@requires(MOBILENET_WEIGHTS)
def test_the_demo_and_a_real_sweep_in_one_store_each_register_their_own_champion(tmp_path):
    """The README's demo (a small model in its place) and a real sweep on simpsons-mini, each with
    its ensemble, in one store: `models:/simpsons@champion` is the real ensemble and names Simpsons
    characters on Kaggle test images; the demo's is `models:/simpsons-demo@champion`, of its shapes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = clean_environment()
    small = ["backbone=mobilenet", "backbone.kwargs.alpha=0.25", "epochs=2", "dropout=0.2,0.4", f"tracking.uri={uri}"]
    demo = ["-m", "experiment=demo", f"data.dir={tmp_path / 'demo'}", "backbone.weights=null", "image_size=32", *small]
    demo.append("optimizer=adam")
    real = ["-m", *KAGGLE_MINI, f"backbone.weights={MOBILENET_WEIGHTS}", "image_size=128", "optimizer.lr=3e-3", *small]
    for module, args in (
        ("train", demo),
        ("ensemble", [f"tracking.uri={uri}", "tracking.experiment=simpsons-demo", "sweep=latest"]),
        ("train", real),
        ("ensemble", [f"tracking.uri={uri}", "sweep=latest"]),
    ):
        result = run_module(module, args, tmp_path, env)
        assert result.returncode == 0, (module, result.stderr[-3000:])

    client = MlflowClient(uri)
    champions = {}
    for name in ("simpsons", "simpsons-demo"):
        version = client.get_model_version_by_alias(name, schema.CHAMPION)
        champions[name] = json.loads(version.tags[schema.CLASS_NAMES])
        assert version.tags[schema.DATA_NAME] == ("simpsons" if name == "simpsons" else "demo")
        run = client.get_run(version.run_id)
        assert run.data.tags[schema.RUN_TYPE] == schema.ENSEMBLE
        assert client.get_experiment(run.info.experiment_id).name == name  # each in its own experiment
    assert len(champions["simpsons"]) == 20 and "homer_simpson" in champions["simpsons"]
    assert not set(champions["simpsons"]) & set(champions["simpsons-demo"])

    images = sorted((SIMPSONS_MINI / "kaggle_simpson_testset").glob("*.jpg"))[::40]  # 5 characters' files
    args = ["--model", "models:/simpsons@champion", "--json", "--tracking-uri", uri, *map(str, images)]
    result = run_module("predict", args, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = [entry["top"][0]["class"] for entry in json.loads(result.stdout)["predictions"]]
    assert len(predicted) == len(images) and set(predicted) <= set(champions["simpsons"])
