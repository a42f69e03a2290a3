"""`python -m simpsons.ensemble` as a user types it (help, bad values, what it prints), and predict and
report on its runs, in a private SQLite store of tiny real runs (conftest.trained_store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import ensemble_config
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import predict, report
from simpsons.ensembling.command import ensemble
from simpsons.tracking import reader as runs
from simpsons.tracking import schema

OWN_KEYS = ("top_n", "metric", "direction", "sweep", "filter", "one_per_backbone", "method", "weights", "register")
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


def test_predict_classifies_files_and_folders_and_reports_bad_paths(store, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    one_image = store.images / "test" / "red_circle" / "img_0000.jpg"
    paths = [str(one_image), str(store.images / "test" / "blue_square"), str(tmp_path / "notes.txt"), "missing.jpg"]
    status = predict.main(["--run", store.children[0], "--top-k", "2", "--tracking-uri", store.uri, *paths])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert len(lines) == 1 + 4 + 2
    assert lines[0].startswith(str(one_image)) and len(lines[0].split()) == 1 + 2 * 2
    assert any("notes.txt" in line and "error: not a decodable image" in line for line in lines)
    assert any(line.startswith("missing.jpg") and "error: no such file" in line for line in lines)

    ensemble_run = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2"))
    capsys.readouterr()
    assert predict.main(["--run", ensemble_run, "--json", "--tracking-uri", store.uri, str(one_image)]) == 0
    [result] = json.loads(capsys.readouterr().out)
    recorded = runs.outputs(ensemble_run, "test")
    row = recorded.probabilities[recorded.names.index("red_circle/img_0000.jpg")]
    classes = runs.class_names(MlflowClient(store.uri).get_run(ensemble_run))
    assert result["top"][0]["class"] == classes[int(row.argmax())]
    assert result["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)


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
