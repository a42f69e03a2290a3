"""keep_models and simpsons-gc: a sweep's best N runs keep their model files, the others keep the rest.

Through the real CLI (a 2x2 sweep of tiny models on real JPEG files, a real SQLite store), then
`simpsons.gc` in this process: its arguments, --dry-run, and what it deletes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL, ensemble_config, folder_data, help_imports, run_cli, train_settings
from mlflow.tracking import MlflowClient

from simpsons import gc
from simpsons.ensembling.selection import select_candidates
from simpsons.errors import ConfigError
from simpsons.tracking import reader, schema

SWEEP = ["-m", "optimizer=adam,rmsprop", "dropout=0.2,0.5"]
KEPT_ARTIFACTS = ("config.yaml", "predictions/val.csv", "predictions/test.csv", "evaluation/val_confusion_matrix.png")


def model_folders(store: Path) -> list[Path]:
    """The logged models whose files are on disk: <artifact root>/<experiment>/models/<id>/artifacts/MLmodel."""
    return sorted(path.parent for path in (store / "mlruns").glob("*/models/*/artifacts/MLmodel"))


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_keep_models_takes_all_or_an_integer_of_at_least_one():
    assert train_settings(["keep_models=all"]).errors() == []
    assert train_settings(["keep_models=2"]).models_kept == 2
    for bad in ("0", "-1", "some"):
        assert train_settings([f"keep_models={bad}"]).errors() == [
            f"keep_models={int(bad) if bad.lstrip('-').isdigit() else bad!r} is invalid; "
            "expected all or an integer >= 1"
        ]


@pytest.mark.parametrize(
    "args,error",
    [
        (["--keep", "0"], "error: --keep 0 is invalid; expected an integer >= 1"),
        (["--keep", "2", "--experiment", "nowhere"], "error: tracking.experiment='nowhere' does not exist in"),
    ],
)
def test_gc_refuses_bad_arguments_in_one_line(args, error, tmp_path, capsys):
    assert gc.main([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(error)  # (MLflow's own INFO lines create the new store)


def test_gc_help_does_not_load_mlflow_or_tensorflow():
    imported, printed = help_imports("simpsons.gc")
    assert "--dry-run" in printed and not {"mlflow", "tensorflow", "keras"} & imported


@pytest.mark.slow
def test_keep_models_2_keeps_the_two_best_models_and_everything_else_then_gc_lists_and_frees(
    image_folders, tracking_uri, tmp_path, capsys
):
    uri = tracking_uri  # this process's too: reading runs' models and outputs back goes through it
    args = [*SWEEP, *TINY_MODEL, *folder_data(image_folders), "epochs=2", "keep_models=2", f"tracking.uri={uri}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(uri)
    experiment = reader.experiment_id(client, "simpsons")
    sweep = reader.resolve_sweep(client, experiment, "latest")
    assert client.get_run(sweep).data.tags[schema.KEEP_MODELS] == "2"
    jobs = reader.search(client, experiment, sweep)
    assert len(jobs) == 4 and all(job.info.status == "FINISHED" for job in jobs)
    deleted = [job for job in jobs if schema.MODEL_DELETED in job.data.tags]
    kept = [job for job in jobs if schema.MODEL_DELETED not in job.data.tags]
    assert len(deleted) == 2 and len(model_folders(tmp_path)) == 2
    # The kept ones are the best by best_val_accuracy (the monitor), and theirs are the folders left.
    assert min(r.data.metrics["best_val_accuracy"] for r in kept) >= max(
        r.data.metrics["best_val_accuracy"] for r in deleted
    )
    assert {reader.model_uri(run) for run in kept} == {
        f"models:/{folder.parent.name}" for folder in model_folders(tmp_path)
    }
    for run in deleted:
        assert "keep_models=2: rank" in run.data.tags[schema.MODEL_DELETED]
        with pytest.raises(ConfigError, match="model files were deleted"):  # predict --run says so, in one line
            reader.model_uri(run)
        assert set(KEPT_ARTIFACTS) <= artifacts(client, run.info.run_id)  # outputs, figures, config stay
        assert {"best_val_accuracy", "test_accuracy", "epoch/val_loss"} <= run.data.metrics.keys()
        assert len(client.get_metric_history(run.info.run_id, "epoch/val_loss")) == 2  # the curves stay

    # An ensemble chooses among the runs that still have a model, saying why the others are out.
    runs, _ = reader.training_runs(client, jobs)
    candidates = select_candidates(runs, ensemble_config(_Uri(uri), f"sweep={sweep}", "top_n=4"))
    assert {c.run_id for c in candidates} == {run.info.run_id for run in kept}

    # --dry-run lists what it would free and frees nothing.
    assert gc.main(["--keep", "1", "--sweep", "latest", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.count("model already deleted") == 2 and len(re.findall(r"\sdelete\s", out)) == 1, out
    assert "would free" in out and "nothing deleted" in out
    assert len(model_folders(tmp_path)) == 2
    assert sum(schema.MODEL_DELETED in r.data.tags for r in reader.search(client, experiment, sweep)) == 2

    # Without it, it frees them: the best run alone keeps its model, with 4 processes doing it at once.
    command = [sys.executable, "-m", "simpsons.gc", "--keep", "1", "--sweep", sweep, "--tracking-uri", uri]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        assert "freed" in out
    [left] = model_folders(tmp_path)
    assert sum(schema.MODEL_DELETED in r.data.tags for r in reader.search(client, experiment, sweep)) == 3
    best = max(kept, key=lambda r: r.data.metrics["best_val_accuracy"])
    assert reader.model_uri(client.get_run(best.info.run_id)) == f"models:/{left.parent.name}"


class _Uri:
    """What ensemble_config needs of a store: its URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
