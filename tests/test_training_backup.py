"""What a killed run resumes from (simpsons/training/backup.py): each epoch logged once, whether the
kill fell before an epoch's backup or between its backup and its log; a backup cut short mid-write.

The fits run on tiny real Keras models inside a real MLflow run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from tiny_fits import batches, two_layer_model

from simpsons.training.backup import Backup, log_backed_up_epochs
from simpsons.training.callbacks import EPOCH_METRICS
from simpsons.training.phases import fit


class CutShort(Exception):
    """Raised where a kill -9 would land: the epoch's end stops there, and nothing after it runs."""


def histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Each epoch metric's (step, value) points, in the order they were logged."""
    client = MlflowClient()
    return {
        name: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)]
        for name in EPOCH_METRICS
    }


def steps(run_id: str) -> dict[str, list[int]]:
    return {name: [step for step, _ in points] for name, points in histories(run_id).items()}


def fit_phase(backup_dir: Path, epochs: int, *callbacks: keras.callbacks.Callback) -> int:
    return fit(
        two_layer_model(), keras.optimizers.Adam(), batches(), batches(), epochs, 0, False, backup_dir, callbacks
    )


def test_an_epoch_cut_short_before_its_backup_is_logged_once_by_the_resumed_run(tracking_uri, tmp_path):
    """The run dies at epoch 2's end, among the callbacks that run before its backup: the resumed fit
    trains epoch 2 again from the backup of epoch 1, and every curve has each of the 4 epochs once.
    (Logged before the backup, epoch 2 was logged twice: 31 points for 30 epochs.)"""

    def die_at_2(epoch: int, logs: dict) -> None:
        if epoch == 2:
            raise CutShort

    with mlflow.start_run() as run, pytest.raises(CutShort):
        fit_phase(tmp_path, 4, keras.callbacks.LambdaCallback(on_epoch_end=die_at_2))
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 2  # epochs 0-1 backed up

    trained = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    with mlflow.start_run(run_id=run.info.run_id):
        assert log_backed_up_epochs(tmp_path, 2) == []  # all that was backed up was logged
        assert fit_phase(tmp_path, 4, record) == 4
    assert trained == [2, 3]
    assert steps(run.info.run_id) == dict.fromkeys(EPOCH_METRICS, [1, 2, 3, 4])  # steps: epochs from 1


def test_an_epoch_backed_up_but_not_logged_is_logged_from_beside_its_backup_when_resumed(tracking_uri, tmp_path):
    """The run dies after epoch 2's backup, before its metrics reach MLflow: the resumed run logs
    epoch 2's metrics, as they were, from beside the backup, and trains epoch 3 only."""
    with mlflow.start_run() as whole:
        fit_phase(tmp_path / "whole", 3)
    # The same run cut short after epoch 2's backup: its backup, and epochs 0-1 logged
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    (tmp_path / "cut" / "phase_end.json").unlink()
    logged = histories(whole.info.run_id)
    with mlflow.start_run() as cut:
        for epoch in (0, 1):
            mlflow.log_metrics({name: points[epoch][1] for name, points in logged.items()}, step=epoch + 1)

    trained = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: trained.append(epoch))
    with mlflow.start_run(run_id=cut.info.run_id):
        assert log_backed_up_epochs(tmp_path / "cut", 3) == [2]
        assert log_backed_up_epochs(tmp_path / "cut", 3) == []  # once
        assert fit_phase(tmp_path / "cut", 4, record) == 4
    assert trained == [3]
    assert steps(cut.info.run_id) == dict.fromkeys(EPOCH_METRICS, [1, 2, 3, 4])  # steps: epochs from 1
    resumed = histories(cut.info.run_id)
    assert {name: points[2] for name, points in resumed.items()} == {name: points[2] for name, points in logged.items()}


def test_a_backup_cut_short_mid_write_resumes_from_the_one_before_and_is_deleted_whole(tracking_uri, tmp_path):
    """A kill while Keras rewrote an epoch's metadata: the previous epoch's backup (double_checkpoint)
    takes its place; a phase cut short in its very first backup starts over."""
    backup = Backup.of(tmp_path, "run")
    with backup.held(), mlflow.start_run():
        fit_phase(backup.phase("head"), 3)
    assert backup.resume_epoch() == 3
    (backup.phase("head") / "training_metadata.json").write_text('{"epo')
    assert backup.resume_epoch() == 2
    assert json.loads((backup.phase("head") / "training_metadata.json").read_text())["epoch"] == 2
    backup.phase("finetune").mkdir()
    (backup.phase("finetune") / "training_metadata.json").write_text("{")
    assert backup.resume_epoch() == 2 and not backup.phase("finetune").exists()
    backup.delete()
    assert not backup.folder.exists() and not backup.lock_path.exists()
