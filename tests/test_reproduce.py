"""simpsons-reproduce: a logged run trained again from what it logged gives the same metrics on the
CPU; changed code or data are refused in one line, and --anyway says which metrics differ.

Through the real CLIs, on the demo data (generated into the test's folder), a tiny MobileNet with
op determinism and no XLA (as tests/test_pinned_metrics.py), and a real SQLite store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import TINY_MODEL, ensemble_config, folder_data, help_imports, train_settings
from mlflow.tracking import MlflowClient

from simpsons import reproduce
from simpsons.config import PROJECT_ROOT
from simpsons.ensembling.command import ensemble
from simpsons.tracking import schema
from simpsons.training.recipe import JobContext, train

DETERMINISTIC = ["deterministic=true", "jit_compile=false"]
# The demo (a random ResNet50V2, whose features do tell the shapes apart) small and deterministic.
DEMO = ["experiment=demo", "image_size=32", "epochs=2", *DETERMINISTIC]


def command(module: str, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m simpsons.MODULE ARGS` on the CPU alone (a GPU computes other numbers), in a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"CUDA_VISIBLE_DEVICES": "-1"}
    return subprocess.run(
        [sys.executable, "-m", f"simpsons.{module}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def metric_rows(stdout: str) -> dict[str, str]:
    """The comparison table's rows (Keras's epoch lines come before it), by metric name: equal or different."""
    lines = stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("metric ")) + 1 : -1]
    return {row.split()[0]: row.split()[-1] for row in table}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_a_run_id_that_is_no_run_is_refused_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = command("reproduce", ["0123456789abcdef", "--tracking-uri", uri], timeout=120)
    assert one_error_line(result).startswith("error: RUN_ID '0123456789abcdef' is not a run in")
    assert result.stdout == ""


def test_help_answers_without_mlflow_or_tensorflow():
    imported, printed = help_imports("simpsons.reproduce")
    assert "--anyway" in printed and not {"mlflow", "tensorflow", "keras"} & imported


@pytest.mark.slow
def test_a_demo_run_reproduces_every_metric_and_changed_code_or_data_are_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = tmp_path / "demo"
    places = [f"data.dir={data}", f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={uri}"]
    trained = command("train", [*DEMO, *places])
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(uri)
    [experiment] = [e.experiment_id for e in client.search_experiments() if e.name == "simpsons-demo"]
    [original] = client.search_runs([experiment])
    run_id = original.info.run_id

    # The same code and data: a new run, trained (not reused), with every metric equal.
    same = command("reproduce", [run_id[:8], "--tracking-uri", uri])
    assert same.returncode == 0, same.stderr[-3000:]
    rows = metric_rows(same.stdout)
    assert {"best_val_accuracy", "test_accuracy", "epoch/val_loss", "val_macro_f1"} <= rows.keys()
    assert set(rows.values()) == {"equal"}, same.stdout
    assert "epoch/loss (2 steps, last)" in same.stdout  # a curve, compared at every epoch
    assert f"reproduces run {run_id}: every metric equal" in same.stdout
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags[schema.REPRODUCES] == run_id
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags[schema.RUN_TYPE] == schema.TRAIN
    assert not client.list_artifacts(runs[0].info.run_id, "hydra")  # rebuilt in-process: no Hydra folder

    # Another code version: one line naming the commit to check out; nothing trained.
    code_version = original.data.tags[schema.CODE_VERSION]
    client.set_tag(run_id, schema.CODE_VERSION, "0" * 64)
    changed = one_error_line(command("reproduce", [run_id, "--tracking-uri", uri], timeout=300))
    assert changed.startswith(f"error: the code differs from run {run_id[:8]}'s: code version 000000000000 logged")
    assert f"git checkout {original.data.tags[schema.GIT_COMMIT]}" in changed and changed.endswith("--anyway")
    client.set_tag(run_id, schema.CODE_VERSION, code_version)

    # Other data: one more image in a class folder; refused, naming both fingerprints.
    folder = next(path for path in sorted((data / "train").iterdir()) if path.is_dir())
    shutil.copy(next(iter(sorted(folder.glob("*.jpg")))), folder / "extra.jpg")
    logged = original.data.tags[schema.DATA_FINGERPRINT]
    moved = one_error_line(command("reproduce", [run_id, "--tracking-uri", uri], timeout=300))
    assert moved.startswith(f"error: the data differs from run {run_id[:8]}'s: fingerprint ")
    assert f"found in {data / 'train'}, {logged[:12]} logged" in moved
    assert len(client.search_runs([experiment])) == 2

    # --anyway trains on it and says which metrics differ.
    anyway = command("reproduce", [run_id, "--anyway", "--tracking-uri", uri])
    assert anyway.returncode == 1, anyway.stderr[-3000:]
    assert "the data differs" in anyway.stderr and "--anyway: reproducing it all the same" in anyway.stderr
    different = [metric for metric, result in metric_rows(anyway.stdout).items() if result == "different"]
    assert "epoch/loss" in different, anyway.stdout
    assert f"metrics differ (at 1e-06): {', '.join(different)}" in anyway.stdout


@pytest.mark.slow
def test_an_ensemble_is_combined_again_from_the_same_candidates(image_folders, tracking_uri, capsys):
    base = [*TINY_MODEL, *folder_data(image_folders), "epochs=1", f"tracking.uri={tracking_uri}"]
    members = [train(train_settings([*base, f"dropout={p}"]), JobContext([])) for p in (0.1, 0.3, 0.5)]
    original = ensemble(ensemble_config(SimpleNamespace(uri=tracking_uri), "top_n=2", "register=false"))
    capsys.readouterr()

    assert reproduce.reproduce(MlflowClient(tracking_uri), tracking_uri, original, anyway=False) == 0
    out = capsys.readouterr().out
    rows = metric_rows(out)
    assert {"val_accuracy", "test_accuracy", "val_ece"} <= rows.keys() and set(rows.values()) == {"equal"}, out
    client = MlflowClient(tracking_uri)
    experiment = client.get_run(original).info.experiment_id
    [again] = [run for run in client.search_runs([experiment]) if schema.REPRODUCES in run.data.tags]
    assert again.data.tags[schema.REPRODUCES] == original
    assert again.data.tags[schema.CANDIDATES] == client.get_run(original).data.tags[schema.CANDIDATES]
    assert set(again.data.tags[schema.CANDIDATES].split(",")) < set(members)
    assert schema.REGISTERED_VERSION not in again.data.tags  # a check does not register
