"""`python -m simpsons.ensemble` as a user types it (help, bad values, what it prints), in a private
SQLite store of tiny real runs (conftest.trained_store). predict and report: their own test files."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons.settings import EnsembleSettings
from simpsons.settings.train import TrackingSettings
from simpsons.tracking import reader as runs
from simpsons.tracking import schema
from simpsons.tracking import store as tracking_store

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


def test_help_is_resolved_and_lists_every_key_with_the_value_it_would_use(tmp_path):
    result = ensemble_cli(["--help", "tracking.experiment=simpsons-demo", "top_n=3"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "${" not in result.stdout and "oc.env" not in result.stdout
    own = [field.name for field in dataclasses.fields(EnsembleSettings) if field.name != "tracking"]
    keys = own + [f"tracking.{field.name}" for field in dataclasses.fields(TrackingSettings)]
    lines = result.stdout.splitlines()
    for key in keys:
        assert any(line.strip().startswith(f"{key} ") for line in lines), f"{key} is not explained"
    assert "[3]" in next(line for line in lines if line.strip().startswith("top_n "))
    assert "best_val_accuracy) [simpsons-demo]; serve it with:" in result.stdout  # registered_model's value
    assert "models:/simpsons-demo@champion" in result.stdout  # the registered model follows the experiment


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


def next_lines(printed: str) -> list[str]:
    """The commands a sweep or an ensemble prints after `next:`."""
    return [line.strip() for line in printed.split("\nnext:\n", 1)[1].splitlines() if line.startswith("  ")]


@pytest.mark.slow
def test_the_demo_runs_and_registers_in_its_own_experiment_and_model_through_its_next_lines(tmp_path):
    """The README's demo, tiny, on a store that already has a `simpsons` model: its sweep is in
    simpsons-demo, the ensemble command it prints (with this interpreter) nests the ensemble under
    it and registers simpsons-demo; `simpsons` keeps its one version and alias."""
    uri = tracking_store.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    client.create_registered_model("simpsons")
    real = client.create_run(client.create_experiment("simpsons")).info.run_id
    tags = {schema.CLASS_NAMES: json.dumps(["bart_simpson", "homer_simpson"])}
    client.create_model_version("simpsons", f"runs:/{real}/model", run_id=real, tags=tags)
    client.set_registered_model_alias("simpsons", schema.CHAMPION, "1")
    demo = ["-m", "experiment=demo", f"data.dir={tmp_path / 'demo'}", *TINY_MODEL, "epochs=1"]
    demo += [f"tracking.uri={uri}", f"cache_dir={tmp_path / 'cache'}", "data.generate.train_per_class=10"]
    swept = run_cli(demo, tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    ensemble_line, report_line, _ = next_lines(swept.stdout)
    assert ensemble_line.startswith(f"{sys.executable} -m simpsons.ensemble sweep=")  # absolute: not below tmp_path
    assert ensemble_line.endswith(f"tracking.uri={uri} tracking.experiment=simpsons-demo")
    assert report_line.endswith(f"--experiment simpsons-demo --tracking-uri {uri}")

    done = subprocess.run(shlex.split(ensemble_line), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eligible" not in done.stderr  # 4 runs for the default top_n=5: no warning
    experiment = client.get_experiment_by_name("simpsons-demo").experiment_id
    [sweep] = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.SWEEP}'")
    [run] = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.ENSEMBLE}'")
    assert run.data.tags[schema.PARENT_RUN] == sweep.info.run_id
    [version] = client.search_model_versions("name = 'simpsons-demo'")
    assert client.get_registered_model("simpsons-demo").aliases == {schema.CHAMPION: version.version}
    assert version.run_id == run.info.run_id and version.tags[schema.DATA_NAME] == "demo"
    assert json.loads(version.tags[schema.CLASS_NAMES]) == runs.class_names(run)
    assert "Trained on data 'demo'" in version.description
    [untouched] = client.search_model_versions("name = 'simpsons'")
    assert untouched.run_id == real and str(client.get_registered_model("simpsons").aliases[schema.CHAMPION]) == "1"
    assert "report" in done.stdout and "--experiment simpsons-demo --sweep" in done.stdout

    for line in next_lines(swept.stdout)[1:2] + [next(x for x in done.stdout.splitlines() if x.startswith("report"))]:
        command = line.removeprefix("report").strip()
        reported = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert reported.returncode == 0, reported.stderr[-3000:]
        assert run.info.run_id[:8] in reported.stdout  # the sweep's report lists its ensemble
