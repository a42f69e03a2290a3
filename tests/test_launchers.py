"""The presets' launchers (simpsons/launchers.py): lanes of real loky processes, where one killed job
ends alone; and the helpers that name and count the jobs. The sweeps themselves, with TensorFlow,
are in test_signals.py, test_slurm.py and test_ray.py."""

from __future__ import annotations

import os

import pytest
from hydra.core.utils import JobReturn, JobStatus
from lane_jobs import job  # run by loky workers, which import the module that defines it: a light one

from simpsons import launchers


def test_a_job_whose_lane_process_dies_ends_alone_and_the_next_job_gets_a_new_process(tmp_path):
    every_job = [["x=1", "dropout=0.1"], ["x=1", "dropout=0.2"], ["x=1", "dropout=0.3"]]
    jobs = [(job, idx, overrides, str(tmp_path)) for idx, overrides in enumerate(every_job)]
    lanes = [launchers._Lane(launchers.worker_environment(2)) for _ in range(2)]

    results, killed = launchers._run_in_lanes(jobs, lanes, every_job)

    assert killed == {0: "job #0 (dropout=0.1)"}
    assert [result.status for result in results] == [JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.COMPLETED]
    victim = int((tmp_path / "victim-started").read_text())
    sibling, queued = results[1].return_value, results[2].return_value
    assert victim not in (sibling, queued), "the sibling lived on, and the queued job got a new process"
    assert [result.overrides for result in results] == every_job


def test_killed_jobs_end_the_sweep_with_exit_1_once_all_have_ended(caplog):
    completed = JobReturn(overrides=["dropout=0.1"], status=JobStatus.COMPLETED)
    failed = JobReturn(overrides=["dropout=0.2"], status=JobStatus.FAILED)
    failed.return_value = ValueError("bad")
    killed = JobReturn(overrides=["dropout=0.3"], status=JobStatus.FAILED)
    every_job = [["dropout=0.1"], ["dropout=0.2"], ["dropout=0.3"]]

    assert launchers._finish([completed, failed], {}, every_job, 0) == [completed, failed]  # Hydra reports
    with pytest.raises(launchers.JobsKilled) as raised:
        launchers._finish([completed, failed, killed], {2: "job #2 (dropout=0.3)"}, every_job, 0)
    assert raised.value.code == 1 and raised.value.killed == ["job #2 (dropout=0.3)"]
    assert "job #1 (dropout=0.2) failed: bad" in caplog.text


def test_n_jobs_means_what_it_means_to_joblib():
    cores = os.cpu_count()
    assert [launchers.lanes(n, 100) for n in (2, -1, None)] == [2, cores, 1]
    assert launchers.lanes(-2, 100) == max(cores - 1, 1)
    assert launchers.lanes(8, 3) == 3  # no more processes than jobs


def test_how_a_worker_ended_from_lokys_message():
    said = (
        "A worker process managed by the executor was unexpectedly terminated.\nThe exit codes of the workers are {%s}"
    )
    assert launchers._how_it_ended(RuntimeError(said % "SIGTERM(-15)")) == "was killed by SIGTERM"
    assert launchers._how_it_ended(RuntimeError(said % "EXIT(1)")) == "ended (exit code EXIT(1))"
