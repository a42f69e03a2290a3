"""MLflow helpers on a real SQLite store, and the metrics that end up in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from simpsons.errors import ConfigError
from simpsons.evaluation import Evaluation, report_text
from simpsons.job import run_name
from simpsons.tracking.store import configure, ensure_experiment, redact_uri


def test_relative_sqlite_store_is_made_absolute_and_artifacts_sit_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = configure("sqlite:///runs.db")
    assert uri == f"sqlite:///{tmp_path / 'runs.db'}"
    experiment_id = ensure_experiment(uri, "my experiment")
    location = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "mlruns" / "my_experiment").as_uri()
    assert ensure_experiment(uri, "my experiment") == experiment_id


def test_a_deleted_experiment_is_a_clear_error(tracking_uri):
    experiment_id = ensure_experiment(tracking_uri, "gone")
    MlflowClient(tracking_uri).delete_experiment(experiment_id)
    with pytest.raises(ConfigError, match=rf"tracking.experiment='gone' is deleted .* --experiment-id {experiment_id}"):
        ensure_experiment(tracking_uri, "gone")


def test_run_names_show_choices_then_overrides_but_not_paths():
    overrides = ["backbone=resnet50v2", "optimizer=rmsprop", "optimizer.lr=3e-4", "data.root=/x/y", "epochs=20"]
    assert run_name("resnet50v2", "rmsprop", overrides) == "resnet50v2-rmsprop lr=3e-4 epochs=20"


def test_passwords_never_reach_the_logged_uri():
    assert redact_uri("postgresql://me:s3cret@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    assert redact_uri(f"sqlite:///{Path('/a/mlflow.db')}") == "sqlite:////a/mlflow.db"


def test_macro_f1_and_the_report_average_over_the_same_classes():
    labels = np.array([0, 0, 1, 1])  # a test set without class 2, which training had
    probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]], dtype=np.float32)
    evaluation = Evaluation("test", ["a", "b", "c", "d"], labels, probabilities)
    macro_f1 = evaluation.metrics()["test_macro_f1"]
    report = report_text(evaluation, ["bart", "lisa", "maggie"])
    assert "maggie" not in report
    [macro_line] = [line for line in report.splitlines() if "macro avg" in line]
    assert float(macro_line.split()[4]) == pytest.approx(macro_f1, abs=1e-4)
    assert evaluation.metrics()["test_accuracy"] == 0.75
