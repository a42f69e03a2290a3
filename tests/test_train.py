"""End to end: the CLI trains, logs everything to a real SQLite MLflow store, and sweeps grids."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import IMAGE_SENSITIVE_MODEL, TINY, TINY_MODEL, folder_data, get_json, mlflow_ui, run_cli, train_settings
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import report
from simpsons.config import CONF_DIR, PROJECT_ROOT, flatten
from simpsons.tracking.predictions import from_csv
from simpsons.training.callbacks import EPOCH_METRICS


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} was not created"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


@pytest.mark.slow  # python -m simpsons.train: TensorFlow in a subprocess
def test_a_run_logs_params_metrics_artifacts_and_a_model_that_reproduces_its_softmax(
    image_folders, tracking_uri, tmp_path
):
    args = [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), "epochs=2", f"tracking.uri={tracking_uri}"]
    args += ["tracking.experiment=e2e", f"cache_dir={tmp_path / 'cache'}"]  # a new cache: this run extracts
    args += ["+tags.purpose=baseline", "tracking.system_metrics_seconds=0.2"]  # sampled often: a short run
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    [run] = runs_of(tracking_uri, "e2e")
    client = MlflowClient(tracking_uri)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    # the backbone, then what differs from the defaults in naming.ORDER, cut to fit 30 characters; where
    # the data lies and the store are left out
    assert run.info.run_name == "vgg16 lr=1e-3 32px bs=16 ep=2…"
    assert run.data.tags["mlflow.note.content"] == (
        "vgg16 (random weights) on `folder`: 4 classes; 38 train, 10 validation, 16 test images. "
        "adam, lr 0.001, dropout 0.4, 2 epochs at 32 px."
    )

    expected_params = {k: str(v) for k, v in flatten(train_settings(args).container()).items()}
    assert expected_params.items() <= run.data.params.items()
    assert run.data.params["data.train_images"] == "38" and run.data.params["data.val_images"] == "10"

    for name in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name  # "Epoch 1/2", "Epoch 2/2"
    val_history = [m.value for m in client.get_metric_history(run_id, "epoch/val_accuracy")]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(max(val_history), abs=1e-6)
    assert {"test_loss", "test_accuracy", "test_macro_f1", "val_macro_f1"} <= run.data.metrics.keys()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    assert run.data.tags["git.commit"] == (commit.strip() or "unknown")
    status = ["git", "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git.dirty"] == ("unknown" if not commit.strip() else str(bool(dirty)).lower())
    assert "epochs=2" in run.data.tags["hydra.overrides"]
    assert run.data.tags["purpose"] == "baseline"  # the user's tag, and not in the name (above)
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's own system metrics
    assert not [key for key in run.data.metrics if "seconds" in key]  # timings.json: out of the Metrics tab
    timings = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/timings.json")
    assert timings["feature_extraction_seconds"] > 0 and {"fit", "evaluate"} <= set(timings["seconds"])
    counts = {key: int(run.data.params[f"model/params/{key}"]) for key in ("total", "trainable", "non_trainable")}
    assert counts["total"] == counts["trainable"] + counts["non_trainable"]
    assert 0 < counts["trainable"] < counts["total"]  # the head phase's: the backbone frozen
    assert (
        client.get_experiment(run.info.experiment_id)
        .tags["mlflow.note.content"]
        .startswith("Transfer-learning image classifiers on the `folder` data set")
    )
    # The learning rate as its log10, the one chart of it that reads (a linear axis shows 1e-3 as 0)
    assert [m.value for m in client.get_metric_history(run_id, "epoch/log10_lr")] == pytest.approx([-3, -3])
    assert not {"lr", "epoch/lr", "log10_lr"} & run.data.metrics.keys()
    assert len(run.data.tags["data.fingerprint"]) == 64
    assert run.data.tags["feature_cache"] == "miss"  # the recorded softmax below is the head's on features
    classes = json.loads(run.data.tags["class_names"])
    assert classes == ["blue_square", "green_triangle", "red_circle", "yellow_diamond"]

    artifacts = artifact_paths(client, run_id)
    assert {
        "config.yaml",
        "hydra/config.yaml",
        "hydra/hydra.yaml",
        "hydra/overrides.yaml",
        "class_names.json",
        "predictions/val.csv",
        "predictions/test.csv",
        "evaluation/val_report.txt",
        "evaluation/test_report.txt",
        "evaluation/val_confusion_matrix.png",
        "evaluation/test_confusion_matrix.png",
    } <= artifacts
    matrix = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/test_confusion_matrix.png")
    assert Image.open(matrix).format == "PNG"

    test_csv = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/test.csv"))
    names, labels, recorded = astuple(from_csv(test_csv.read_text()))
    assert len(names) == 16 and recorded.shape == (16, 4)
    assert np.ptp(recorded, axis=0).max() > 1e-3, "a softmax that ignores the image makes the reload check vacuous"
    accuracy = np.mean(recorded.argmax(axis=1) == [classes.index(label) for label in labels])
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)
    rows = list(csv.DictReader(test_csv.read_text().splitlines()))
    assert list(rows[0])[:4] == ["file", "label", "predicted", "correct"] and list(rows[0])[4:] == classes
    assert [row["predicted"] for row in rows] == [classes[i] for i in recorded.argmax(axis=1)]
    assert [row["correct"] for row in rows] == [str(int(row["label"] == row["predicted"])) for row in rows]
    assert np.mean([int(row["correct"]) for row in rows]) == pytest.approx(accuracy)

    contexts = [(tag.value, i.dataset) for i in run.inputs.dataset_inputs for tag in i.tags]
    inputs = dict(contexts)  # each input's one tag: its context
    assert sorted(inputs) == ["test", "train", "validation"]
    fingerprint = run.data.tags["data.fingerprint"]
    for context, root, images in [("train", "train", 38), ("validation", "train", 10), ("test", "test", 16)]:
        dataset = inputs[context]
        assert dataset.name == f"folder/{context}"
        assert fingerprint.startswith(dataset.digest) and len(dataset.digest) >= 12
        assert json.loads(dataset.source) == {"uri": str(image_folders / root)} and dataset.source_type == "local"
        assert json.loads(dataset.profile) == {"fingerprint": fingerprint, "images": images, "classes": 4}

    [logged_model] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged_model.source_run_id == run_id
    assert logged_model.name == "vgg16 lr=1e-3 32px bs=16 ep=2…"  # as the run
    # The Models tab's metrics: the run's final ones, and the epochs' at the epoch the model is from
    linked = mlflow.get_logged_model(logged_model.model_id).metrics
    final = ["best_val_accuracy", "best_epoch", "val_macro_f1", "test_loss", "test_accuracy", "test_macro_f1"]
    final += ["best_val_loss", "best_loss", "best_accuracy"]
    kept = int(run.data.metrics["best_epoch"])  # the epochs' metrics at the kept epoch (not the first, or last)
    assert kept in (1, 2)  # counted from 1, as Keras prints it; its step on the curves
    kept_epoch = {name: client.get_metric_history(run_id, name)[kept - 1].value for name in EPOCH_METRICS}
    for name in ("val_loss", "loss", "accuracy"):  # the run's headline best_* are the kept epoch's curve values
        assert run.data.metrics[f"best_{name}"] == kept_epoch[f"epoch/{name}"], name
    shown = {m.key: m.value for m in linked if m.key in [*final, *EPOCH_METRICS]}  # kept at 0: step 0's others too
    assert shown == {key: run.data.metrics[key] for key in final} | kept_epoch
    assert {m.key: m.step for m in linked if m.key in EPOCH_METRICS} == dict.fromkeys(EPOCH_METRICS, kept)
    info = mlflow.models.get_model_info(logged_model.model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
    assert info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(logged_model.model_uri)
    raw = np.stack([np.asarray(Image.open(image_folders / "test" / n), dtype=np.float32) for n in names])
    np.testing.assert_allclose(model.predict(raw), recorded, atol=1e-5)


@pytest.mark.slow  # python -m simpsons.train, then mlflow ui
def test_a_2x2_multirun_gives_one_parent_and_four_finished_children(image_folders, tracking_uri, tmp_path, capsys):
    args = ["-m", "backbone=mobilenet,mobilenetv2", "dropout=0.2,0.4", "image_size=32", *TINY]
    args += ["++backbone.kwargs.alpha=0.35"]  # ++: the composed default backbone has no alpha
    args += [*folder_data(image_folders), "epochs=1", f"tracking.uri={tracking_uri}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = runs_of(tracking_uri, "simpsons")
    [parent] = [r for r in runs if r.data.tags["simpsons.run_type"] == "sweep"]
    children = [r for r in runs if r.data.tags["simpsons.run_type"] == "train"]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    grid = {(c.data.params["backbone.name"], c.data.params["dropout"]) for c in children}
    assert grid == {(b, d) for b in ("mobilenet", "mobilenetv2") for d in ("0.2", "0.4")}
    # Named by the swept values, in naming.ORDER: the backbone's name, then `drop=...`
    for child in children:
        assert child.info.run_name == f"{child.data.params['backbone.name']} drop={child.data.params['dropout']}"
        assert "alpha" not in child.data.tags["mlflow.runName"] and "epochs=1" in child.data.tags["hydra.overrides"]
        swept = f"`backbone={child.data.params['backbone.name']}`, `dropout={child.data.params['dropout']}`"
        assert child.data.tags["mlflow.note.content"].endswith(f" A sweep's job: {swept}.")
    assert len({c.info.run_name[:20] for c in children}) == 4
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    expected_models = [f"{b} drop={d}" for b in ("mobilenet", "mobilenetv2") for d in ("0_2", "0_4")]
    assert sorted(m.name for m in models) == expected_models  # listed without their sweep: the keys said

    assert_sweep_parent(parent, children, tmp_path, tracking_uri)
    assert_sweep_summary(result.stdout, parent, children, tracking_uri)
    assert_one_value_per_metric(result.stdout, parent, children, models, tracking_uri, capsys)

    with mlflow_ui(cwd=tmp_path) as url:  # the store sits in tmp_path, as mlflow.db does at the project root
        api = f"{url}/api/2.0/mlflow"
        [experiment] = [
            e
            for e in get_json(f"{api}/experiments/search", {"max_results": 10})["experiments"]
            if e["name"] == "simpsons"
        ]
        listed = get_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert {r["info"]["run_id"] for r in listed} == {r.info.run_id for r in runs}
        child = children[0].info.run_id
        history = get_json(f"{api}/metrics/get-history?run_id={child}&metric_key=epoch/val_accuracy")["metrics"]
        assert [m["step"] for m in history] == [1]  # epoch 1, as Keras printed it
        files = {f["path"] for f in get_json(f"{api}/artifacts/list?run_id={child}&path=predictions")["files"]}
        assert files == {"predictions/val.csv", "predictions/test.csv"}


def curves_at(client: MlflowClient, run_id: str, name: str, epoch: int) -> float:
    """The curve of Keras's `name` (logged as epoch/<name>) at `epoch`, counted from 1 (its step)."""
    [value] = [m.value for m in client.get_metric_history(run_id, f"epoch/{name}") if m.step == epoch]
    return value


def assert_one_value_per_metric(stdout: str, parent, children: list, models: list, uri: str, capsys) -> None:
    """Each run's headline metrics are its kept epoch's, the same on the run, its logged model, in
    `report` and in the sweep's summary (both printed with 4 decimals)."""
    client = MlflowClient(uri)
    summary = stdout[stdout.index(f"sweep '{parent.info.run_name}'") :]
    summary_rows = {" ".join(row.split()[:2]): row.split() for row in summary.splitlines()[2:6]}
    assert report.main(["--sweep", parent.info.run_id, "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    header, _, *rows = printed.split("Training runs\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    columns = header.split()
    report_rows = {row.split()[0]: row.split() for row in rows}
    for child in children:
        metrics, run_id = child.data.metrics, child.info.run_id
        [model] = [m for m in models if m.source_run_id == run_id]
        on_model = {m.key: m.value for m in mlflow.get_logged_model(model.model_id).metrics}
        kept = int(metrics["best_epoch"])
        assert kept == 1  # one epoch, counted from 1
        for name in ("best_val_accuracy", "best_val_loss", "best_epoch", "test_accuracy"):
            assert on_model[name] == metrics[name], name
        assert metrics["best_val_loss"] == curves_at(client, run_id, "val_loss", kept)
        assert metrics["best_val_accuracy"] == pytest.approx(curves_at(client, run_id, "val_accuracy", kept), abs=1e-6)
        shown = f"{metrics['best_val_accuracy']:.4f}"
        assert summary_rows[child.info.run_name][2] == shown  # the sweep summary's best_val_accuracy column
        row = report_rows[run_id[:8]]
        assert row[len(row) - len(columns) + columns.index("best_val_accuracy")] == shown
        assert row[len(row) - len(columns) + columns.index("best_val_loss")] == f"{metrics['best_val_loss']:.4f}"


def assert_sweep_parent(parent, children: list, cwd: Path, uri: str) -> None:
    """Named by when and what it swept; its params, the swept values; its metrics, the outcome;
    multirun.yaml and a description that names the jobs."""
    assert re.fullmatch(r"net×drop \(2×2\) \d\d-\d\d \d\d:\d\d", parent.info.run_name)
    assert parent.data.params == {"backbone": "mobilenet,mobilenetv2", "dropout": "0.2,0.4", "num_jobs": "4"}
    best = max(children, key=lambda c: c.data.metrics["best_val_accuracy"])
    assert parent.data.metrics == {
        "best_val_accuracy": best.data.metrics["best_val_accuracy"],
        "jobs_finished": 4,
        "jobs_failed": 0,
        "jobs_killed": 0,
        "jobs_reused": 0,
    }
    assert parent.data.tags["simpsons.best_run_id"] in {
        c.info.run_id for c in children if c.data.metrics["best_val_accuracy"] == best.data.metrics["best_val_accuracy"]
    }
    [sweep_dir] = (cwd / "multirun").glob("*/*")
    logged = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="multirun.yaml")
    assert Path(logged).read_text() == (sweep_dir / "multirun.yaml").read_text()  # what Hydra saved
    note = parent.data.tags["mlflow.note.content"]
    assert "| backbone | mobilenet, mobilenetv2 |" in note and "`++backbone.kwargs.alpha=0.35`" in note
    assert all(f"| {c.info.run_name} |" in note and c.info.run_id in note for c in children)


def assert_sweep_summary(stdout: str, parent, children: list, uri: str) -> None:
    """The jobs best first, rounded; the best run's id; the commands to go on with."""
    summary = stdout[stdout.index(f"sweep '{parent.info.run_name}'") :]
    assert f"(run {parent.info.run_id}): 4 jobs: 4 finished, 0 failed" in summary
    header, *rows = summary.splitlines()[1 : 5 + 1]
    assert header.split()[:3] == ["run", "best_val_accuracy", "val_macro_f1"]
    ranked = sorted(children, key=lambda c: (-c.data.metrics["best_val_accuracy"], c.info.run_name))
    assert [row.split()[-1] for row in rows] == [c.info.run_id[:8] for c in ranked]
    for row, child in zip(rows, ranked, strict=True):
        assert row.split()[:3] == [*child.info.run_name.split(), f"{child.data.metrics['best_val_accuracy']:.4f}"]
        assert re.fullmatch(r"(\d\.\d{4} +)+finished", " ".join(row.split()[2:-1])), row
    best = ranked[0]
    assert f"best: {best.info.run_name}, run {best.info.run_id} (best_val_accuracy " in summary
    assert f"{sys.executable} -m simpsons.ensemble sweep={parent.info.run_id} tracking.uri={uri}" in summary
    assert f"mlflow ui --backend-store-uri {uri}" in summary


@pytest.mark.slow  # python -m simpsons.train: TensorFlow in a subprocess
def test_a_failing_job_is_failed_with_its_error_and_the_sweep_goes_on(image_folders, tracking_uri, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(image_folders / "train", broken)
    for image in sorted((broken / "red_circle").iterdir()):  # TIFF: Pillow opens it, TensorFlow cannot decode it,
        Image.open(image).save(image.with_suffix(".tif"))  # so only the job that reads the data finds the class empty
        image.unlink()
    roots = f"data.root={image_folders / 'train'},{broken}"
    args = ["-m", roots, *TINY_MODEL, *folder_data(image_folders)[:1], f"data.test_root={image_folders / 'test'}"]
    result = run_cli([*args, "epochs=1", f"tracking.uri={tracking_uri}"], cwd=tmp_path)
    assert result.returncode != 0

    runs = runs_of(tracking_uri, "simpsons")
    kinds = {r.info.run_id: r.data.tags["simpsons.run_type"] for r in runs}
    statuses = {
        "sweep" if kinds[r.info.run_id] == "sweep" else Path(r.data.params["data.root"]).name: r.info.status
        for r in runs
    }
    assert statuses == {"sweep": "FAILED", "broken": "FAILED", "train": "FINISHED"}
    [failed] = [r for r in runs if r.data.params.get("data.root") == str(broken) and kinds[r.info.run_id] == "train"]
    assert "class 'red_circle'" in failed.data.tags["error"] and "has no usable images" in failed.data.tags["error"]
    assert "red_circle/img_0000.tif" in failed.data.tags["error"]  # the skipped files, named
    assert "error.txt" in artifact_paths(MlflowClient(tracking_uri), failed.info.run_id)
    assert failed.info.run_name == "root=broken"  # a swept path: its last component
    # Ended by the exit hook (the failed job's exception stops Hydra): the outcome is still logged and shown
    [parent] = [r for r in runs if r.data.tags["simpsons.run_type"] == "sweep"]
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (1, 1)
    assert "2 jobs: 1 finished, 1 failed" in result.stdout and "best: root=train, run " in result.stdout


def test_help_explains_the_main_keys_and_sweeps_without_importing_tensorflow(tmp_path):
    """What `python -m simpsons.train --help` prints, and that it loads no TensorFlow (it answers fast)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['simpsons.train', 'experiment=demo', '--help']\n"
        "try:\n"
        "    runpy.run_module('simpsons.train', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('tensorflow imported:', 'tensorflow' in sys.modules, 'keras imported:', 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow imported: False keras imported: False" in result.stdout
    text = result.stdout
    assert "python -m simpsons.train -m KEY=A,B" in text and "(-m, --multirun)" in text
    for key, meaning in [
        ("backbone=NAME", "pretrained network"),
        ("optimizer.lr=LR", "learning rate"),
        ("dropout=P", "dropout before the softmax layer"),
        ("tracking.uri=URI", "MLflow store"),
        ("tracking.retry_seconds=S", "a tracking server that answers nothing for S seconds is lost"),
        ("reuse=BOOL", "a config that already finished"),
        ("scheduler=NAME", "learning rate through each phase: constant, cosine or plateau"),
        ("class_weight=W", "none, or balanced"),
        ("label_smoothing=S", "share of each training target spread over all classes"),
        ("tta=MODE", "none, or flip"),
        ("variant=NAME", "with experiment=options_mini: one training option of the options study"),
    ]:
        assert re.search(rf"^  {re.escape(key)} +{meaning}", text, re.MULTILINE), key
    # the values this command line would use: experiment=demo's
    assert re.search(r"^  image_size=N +input side in pixels \(64\)$", text, re.MULTILINE)
    assert re.search(r"^  backbone.weights=W .*\(null\)$", text, re.MULTILINE)
    assert "backbone: convnext_tiny, densenet201," in text  # Hydra's list of config groups
    # every config group Hydra lists is explained among the main keys
    groups = [line.split(":")[0].strip() for line in text.split("Config groups")[1].split("\n\n")[0].splitlines()[1:]]
    assert "variant" in groups
    for group in groups:
        assert re.search(rf"^  {re.escape(group)}[=.]", text, re.MULTILINE), f"the {group} group is not explained"
    variants = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))
    assert ", ".join(variants) in " ".join(text.split())  # the variant line names every option


@pytest.mark.slow
def test_every_run_keeps_its_best_epoch_with_the_cache_without_it_and_with_fine_tuning(
    image_folders, tracking_uri, tmp_path
):
    """What ranks a run (best_val_accuracy) is what it keeps: the accuracy of its logged validation
    outputs, which its logged model reproduces, from its best epoch, not its last one."""
    args = ["-m", *IMAGE_SENSITIVE_MODEL, "optimizer.lr=1e-2", *folder_data(image_folders), "epochs=5"]
    args += ["finetune.epochs=4", "cache=true,false", "finetune.layers=0,2", f"tracking.uri={tracking_uri}"]
    result = run_cli([*args, "tracking.experiment=best"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    runs = [run for run in runs_of(tracking_uri, "best") if "best_epoch" in run.data.metrics]
    cases = {(run.data.params["cache"], run.data.params["finetune.layers"]) for run in runs}
    assert cases == {("True", "0"), ("False", "0"), ("True", "2"), ("False", "2")}
    for run in runs:
        run_id, metrics = run.info.run_id, run.data.metrics
        curve = [m.value for m in sorted(client.get_metric_history(run_id, "epoch/val_accuracy"), key=lambda m: m.step)]
        assert len(curve) == (9 if run.data.params["finetune.layers"] == "2" else 5), "the curves stay complete"
        best_epoch = int(metrics["best_epoch"])  # counted from 1
        assert best_epoch - 1 == int(np.argmax(curve)) < len(curve) - 1, "kept the first best epoch, not the last"
        assert metrics["best_val_loss"] == curves_at(client, run_id, "val_loss", best_epoch)
        assert metrics["best_val_accuracy"] == pytest.approx(max(curve), abs=1e-6)

        val_csv = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions/val.csv")
        names, labels, recorded = astuple(from_csv(Path(val_csv).read_text()))
        classes = json.loads(run.data.tags["class_names"])
        accuracy = np.mean(recorded.argmax(axis=1) == [classes.index(label) for label in labels])
        assert accuracy == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
        query = f"source_run_id = '{run_id}'"
        [logged] = mlflow.search_logged_models([run.info.experiment_id], filter_string=query, output_format="list")
        raw = np.stack([np.asarray(Image.open(image_folders / "train" / n), dtype=np.float32) for n in names])
        np.testing.assert_allclose(mlflow.pyfunc.load_model(logged.model_uri).predict(raw), recorded, atol=1e-5)


@pytest.mark.slow
def test_a_sweep_over_the_monitor_with_early_stopping_keeps_and_logs_what_each_run_was_told(
    image_folders, tracking_uri, tmp_path
):
    args = ["-m", *IMAGE_SENSITIVE_MODEL, "optimizer.lr=1e-2", *folder_data(image_folders), "epochs=8"]
    args += ["monitor=val_accuracy,val_loss", "early_stopping.patience=1", f"tracking.uri={tracking_uri}"]
    result = run_cli([*args, "tracking.experiment=stopping"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    jobs = [run for run in runs_of(tracking_uri, "stopping") if "best_epoch" in run.data.metrics]  # not the parent
    runs = {run.data.params["monitor"]: run for run in jobs}
    assert sorted(runs) == ["val_accuracy", "val_loss"]
    for monitor, run in runs.items():
        assert run.data.params["early_stopping.patience"] == "1"
        assert run.data.params["early_stopping.monitor"] == "None"  # null: the run's monitor
        curves = {
            name: [
                m.value
                for m in sorted(client.get_metric_history(run.info.run_id, f"epoch/{name}"), key=lambda m: m.step)
            ]
            for name in ("val_accuracy", "val_loss")
        }
        curve = curves[monitor]
        pick = np.argmax if monitor == "val_accuracy" else np.argmin
        kept = int(run.data.metrics["best_epoch"]) - 1  # best_epoch counts from 1, the list from 0
        assert kept == int(pick(curve))
        assert len(curve) == kept + 2 < 8, "stopped one epoch (patience 1) after its best, before epoch 8"
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(curves["val_accuracy"][kept], abs=1e-6)
        assert run.data.metrics["best_val_loss"] == curves["val_loss"][kept]
