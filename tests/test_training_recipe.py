"""The run recipe (simpsons/training/recipe.py), called in this process as a job's task function
calls it: the same config gives the same results, twice, and after another config in the same process.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import IMAGE_SENSITIVE_MODEL, TINY_MODEL, folder_data, train_settings
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import model
from simpsons.tracking.predictions import from_csv
from simpsons.training.callbacks import EPOCH_METRICS
from simpsons.training.recipe import JobContext, train

pytestmark = pytest.mark.slow  # every test trains through the recipe, some twice


def test_the_same_config_twice_gives_identical_metrics(image_folders, tracking_uri):
    overrides = [
        *TINY_MODEL,
        *folder_data(image_folders),
        "epochs=2",
        "deterministic=true",
        "reuse=false",
    ]  # auto: off on GPUs
    cfg = train_settings([*overrides, f"tracking.uri={tracking_uri}"])
    first, second = train(cfg, JobContext(overrides=[])), train(cfg, JobContext(overrides=[]))
    client = MlflowClient(tracking_uri)
    for name in [*EPOCH_METRICS, "test_accuracy", "test_loss"]:
        history = [[m.value for m in client.get_metric_history(run, name)] for run in (first, second)]
        assert history[0] == history[1], name
    csvs = [
        Path(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="predictions/val.csv"))
        for r in (first, second)
    ]
    assert csvs[0].read_text() == csvs[1].read_text()


def test_a_config_gives_the_same_results_after_another_in_the_same_process_as_alone(image_folders, tracking_uri):
    """The jobs of a cached sweep share one backbone (simpsons.model.shared_backbone): no job may
    change it, each logged model must still reproduce its softmax, and the head must not start from
    what the first job's backbone build left of the random state."""
    overrides = [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), "epochs=2", "reuse=false"]
    overrides.append(f"tracking.uri={tracking_uri}")
    second = train_settings([*overrides, "dropout=0.5", "optimizer=rmsprop"])
    model._SHARED.clear()  # what earlier tests in this process left
    train(train_settings([*overrides, "dropout=0.1"]), JobContext(overrides=[]))
    [shared] = model._SHARED.values()
    weights = shared.get_weights()
    after_another = train(second, JobContext(overrides=[]))
    assert list(model._SHARED.values()) == [shared], "the second job shares the first one's backbone"
    assert all(np.array_equal(a, b) for a, b in zip(weights, shared.get_weights(), strict=True))
    model._SHARED.clear()  # as in a new process
    alone = train(second, JobContext(overrides=[]))

    client, runs = MlflowClient(tracking_uri), (after_another, alone)
    for name in [*EPOCH_METRICS, "test_accuracy", "test_loss"]:
        histories = [[m.value for m in client.get_metric_history(run, name)] for run in runs]
        assert histories[0] == histories[1], name
    csvs = [mlflow.artifacts.download_artifacts(run_id=r, artifact_path="predictions/test.csv") for r in runs]
    assert Path(csvs[0]).read_text() == Path(csvs[1]).read_text()
    names, _, recorded = astuple(from_csv(Path(csvs[0]).read_text()))
    experiment = client.get_run(after_another).info.experiment_id
    query = f"source_run_id = '{after_another}'"
    [logged] = mlflow.search_logged_models([experiment], filter_string=query, output_format="list")
    raw = np.stack([np.asarray(Image.open(image_folders / "test" / n), dtype=np.float32) for n in names])
    np.testing.assert_allclose(mlflow.pyfunc.load_model(logged.model_uri).predict(raw), recorded, atol=1e-5)
    timings = mlflow.artifacts.load_dict(f"{client.get_run(alone).info.artifact_uri}/timings.json")
    expected = ("log_config", "build_model", "features", "fit", "evaluate", "log_model", "figures")
    assert set(timings["seconds"]) == set(expected)
    assert not [k for k in client.get_run(alone).data.metrics if "seconds" in k]  # out of the Metrics tab
