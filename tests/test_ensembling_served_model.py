"""The served ensemble: loaded with mlflow.pyfunc or served by `mlflow models serve`, with no simpsons code."""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import ensemble_config, free_port, get_json, mlflow_cli, serving
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons.ensembling import maths
from simpsons.ensembling.command import ensemble
from simpsons.ensembling.writer import SERVED_MODEL
from simpsons.tracking import reader as runs
from simpsons.tracking import schema


def probabilities(run_id: str, split: str) -> np.ndarray:
    return runs.outputs(run_id, split).probabilities


def test_the_served_model_imports_nothing_from_simpsons():
    source = SERVED_MODEL.read_text()  # read, not imported: running it sets MLflow's model-from-code model
    assert "simpsons" not in "\n".join(line for line in source.splitlines() if line.startswith(("import", "from")))


def test_the_served_model_floors_probabilities_as_the_logged_outputs_were_before_scaling():
    assignments = [node for node in ast.parse(SERVED_MODEL.read_text()).body if isinstance(node, ast.Assign)]
    [floor] = [node.value for node in assignments if node.targets[0].id == "PROBABILITY_FLOOR"]
    assert ast.literal_eval(floor) == maths.PROBABILITY_FLOOR


@pytest.mark.slow
def test_a_calibrated_registered_ensemble_serves_its_logged_calibrated_outputs(store):
    overrides = ("top_n=3", "calibrate=true", "registered_model=calibrated")
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", *overrides))
    run = MlflowClient(store.uri).get_run(run_id)
    model = mlflow.pyfunc.load_model(f"models:/{run.data.tags[schema.REGISTERED_VERSION]}")
    assert model.model_config["temperature"] == run.data.metrics["temperature"]
    logged = probabilities(run_id, "val")
    members = run.data.tags[schema.MEMBERS].split(",")
    # Tiny random members output about 1/4 for every class, and scaling moves that: by more than the
    # tolerance below, so that the comparison tells scaled from unscaled outputs.
    assert np.abs(logged - np.mean([probabilities(m, "val") for m in members], axis=0)).max() > 1e-4
    names = runs.outputs(run_id, "val").names
    images = np.stack([np.asarray(Image.open(store.images / "train" / n), dtype=np.float32) for n in names])
    np.testing.assert_allclose(model.predict(images), logged, atol=1e-5)


def test_the_logged_ensemble_model_takes_images_of_any_size_and_mlflow_asks_for_no_type_hints(store):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2", "register=false"))
        client = MlflowClient(store.uri)
        run = client.get_run(run_id)
        model = mlflow.pyfunc.load_model(runs.model_uri(run))
    assert not [w for w in caught if "type hints" in str(w.message)]
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


@pytest.mark.slow  # a service: mlflow models serve
def test_mlflow_models_serve_answers_with_the_ensemble(store, tmp_path):
    run_id = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2", "register=false"))
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
    assert "type hints" not in (tmp_path / "server.log").read_text()


def test_an_ensemble_with_a_flip_tta_member_serves_the_outputs_it_averaged(flips):
    """The member's logged outputs average each image and its mirror image's, and so does its
    logged model, which the served ensemble loads (with Keras alone)."""
    run_id = ensemble(ensemble_config(flips, "top_n=2", "register=false"))
    run = MlflowClient(flips.uri).get_run(run_id)
    assert set(run.data.tags[schema.MEMBERS].split(",")) == {flips.plain, flips.flipped}
    expected = (probabilities(flips.plain, "test") + probabilities(flips.flipped, "test")) / 2
    np.testing.assert_allclose(probabilities(run_id, "test"), expected, atol=1e-6)
    names = runs.outputs(run_id, "test").names
    images = np.stack([np.asarray(Image.open(flips.images / "test" / n), dtype=np.float32) for n in names])
    np.testing.assert_allclose(mlflow.pyfunc.load_model(runs.model_uri(run)).predict(images), expected, atol=1e-5)
