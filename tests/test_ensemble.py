"""`python -m simpsons.ensemble` as a user types it (help, bad values, what it prints), in a private
SQLite store of tiny real runs (conftest.trained_store). predict and report: their own test files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons.tracking import reader as runs
from simpsons.tracking import schema

OWN_KEYS = (
    "top_n",
    "metric",
    "direction",
    "sweep",
    "filter",
    "one_per_backbone",
    "method",
    "weights",
    "calibrate",
    "register",
)
TRAINING_GROUPS = ("backbone", "optimizer", "augment", "experiment", "data")


def ensemble_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simpsons.ensemble", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_help_explains_the_ensembles_own_keys_and_not_the_training_groups(tmp_path):
    result = ensemble_cli(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for key in (*OWN_KEYS, "registered_model", "tracking.uri", "tracking.experiment"):
        [explained] = [line for line in result.stdout.splitlines() if line.strip().startswith(f"{key} ")]
        assert len(explained.split()) > 3, f"{key} is listed but not explained: {explained!r}"
    assert "python -m simpsons.ensemble sweep=latest" in result.stdout
    for group in TRAINING_GROUPS:
        assert not any(line.startswith(f"{group}:") for line in result.stdout.splitlines()), group
    assert "Configuration groups" not in result.stdout
    assert result.stderr == ""  # no MLflow warning, no TensorFlow banner


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["method=vote"], 2)])
def test_help_and_bad_values_answer_without_importing_tensorflow_or_mlflow(args, code, tmp_path):
    probe = (
        "import sys\n"
        f"sys.argv = ['simpsons.ensemble', *{args!r}]\n"
        "import runpy\n"
        "try:\n"  # as `python -m simpsons.ensemble` runs it
        "    runpy.run_module('simpsons.ensemble', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as done:\n"
        "    print('exit:', done.code or 0)\n"
        "print('loaded:', sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == [f"exit: {code}", "loaded: []"]


def test_the_cli_says_what_is_wrong_in_one_line(store, tmp_path):
    for bad, message in [
        ("method=vote", "method='vote' is unknown; use one of: mean, greedy"),
        ("registered_model=a/b", "registered_model='a/b' is invalid; expected a non-empty name without '/' or ':'"),
        ("calibrate=maybe", "calibrate='maybe' is invalid; expected true or false"),
    ]:
        result = ensemble_cli([f"tracking.uri={store.uri}", bad], tmp_path)
        assert result.returncode == 2
        [line] = [line for line in (result.stdout + result.stderr).splitlines() if "error: " in line]
        assert message in line


@pytest.mark.slow
def test_the_cli_prints_the_run_id_and_model_uri_and_how_to_predict_and_serve(store, tmp_path):
    result = ensemble_cli([f"tracking.uri={store.uri}", f"sweep={store.sweep}", "top_n=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(store.uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("simpsons").experiment_id],
        f"tags.`{schema.RUN_TYPE}` = '{schema.ENSEMBLE}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    printed = result.stdout
    run_id = run.info.run_id
    assert f"ensemble run  {run_id} ({run.info.run_name})" in printed
    assert f"model         {runs.model_uri(run)}" in printed
    version = run.data.tags[schema.REGISTERED_VERSION].removeprefix("simpsons/")
    assert f"registry      simpsons version {version}; {run.data.tags[schema.CHAMPION_DECISION]}" in printed
    assert f"python -m simpsons.predict --run {run_id} --tracking-uri {store.uri}" in printed
    champion = str(client.get_registered_model("simpsons").aliases[schema.CHAMPION])
    served = "models:/simpsons@champion" if champion == version else f"models:/simpsons/{version}"
    assert f"MLFLOW_TRACKING_URI={store.uri} mlflow models serve -m {served} --env-manager local" in printed
    assert "type hints" not in result.stdout + result.stderr  # MLflow's warning about predict()
    model = mlflow.pyfunc.load_model("models:/simpsons@champion")
    image = np.asarray(Image.open(next((store.images / "test").rglob("*.jpg"))), dtype=np.float32)
    assert model.predict(image[None]).shape == (1, len(runs.class_names(run)))
