"""One GPU per job process (simpsons/training/gpus.py): the claims of real processes on real lock files.

No GPU is needed: a claim picks among GPU names, and TensorFlow is shown the one picked
(simpsons.training.runtime.configure_gpus, which on a GPU box benchmarks/gpu_check.sh exercises).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import train_settings

from simpsons import hydra_jobs
from simpsons.training import gpus
from simpsons.training.runs import training_config

EXIT_DEADLINE = 60.0

# Claims, prints its claim as JSON, then holds it until its stdin closes.
CLAIMANT = """
import json, sys
from pathlib import Path
from simpsons.training import gpus
claim = gpus.claim(Path(sys.argv[1]), sys.argv[2].split(","))
again = gpus.claim(Path(sys.argv[1]), sys.argv[2].split(","))
found = {"index": claim.index, "name": claim.name, "others": claim.others, "same": again is claim}
print(json.dumps(found), flush=True)
sys.stdin.read()
"""


@contextmanager
def claimants() -> Iterator[list[subprocess.Popen]]:
    """Processes started by `claimant`; any left at the end are killed."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=EXIT_DEADLINE)


def claimant(started: list[subprocess.Popen], directory: Path, names: list[str]) -> dict:
    """A new process that claims one of `names`; its claim, once made (it holds it until it ends)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIMANT, str(directory), ",".join(names)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    line = process.stdout.readline()  # the claim, or "" if the process died first
    assert line, f"the claimant exited ({process.wait(timeout=EXIT_DEADLINE)}) without a claim"
    return json.loads(line)


def test_two_processes_claim_different_gpus_and_a_third_shares_the_least_used(tmp_path):
    with claimants() as started:
        first, second = claimant(started, tmp_path, ["0", "1"]), claimant(started, tmp_path, ["0", "1"])
        assert {first["index"], second["index"]} == {0, 1}
        assert first["others"] == second["others"] == 0
        assert first["same"] and second["same"]  # a second claim in a process returns the first

        third = claimant(started, tmp_path, ["0", "1"])  # every GPU taken: it shares, it does not wait
        assert (third["index"], third["others"]) == (0, 1)

        fourth = claimant(started, tmp_path, ["0", "1"])
        assert (fourth["index"], fourth["others"]) == (1, 1)


def test_a_process_killed_with_sigkill_frees_its_gpu(tmp_path):
    with claimants() as started:
        holders = [claimant(started, tmp_path, ["0", "1", "2"]) for _ in range(3)]
        assert sorted(h["index"] for h in holders) == [0, 1, 2]
        victim = next(p for p, h in zip(started, holders, strict=True) if h["index"] == 1)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=EXIT_DEADLINE) == -signal.SIGKILL

        after = claimant(started, tmp_path, ["0", "1", "2"])
        assert (after["index"], after["others"]) == (1, 0)


def test_a_process_that_ended_normally_frees_its_gpu(tmp_path):
    with claimants() as started:
        first = claimant(started, tmp_path, ["0", "1"])
        started[0].stdin.close()
        assert started[0].wait(timeout=EXIT_DEADLINE) == 0
        assert claimant(started, tmp_path, ["0", "1"]) == first


def test_gpus_are_named_by_cuda_visible_devices_so_subsets_agree(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert gpus.visible_names(2) == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e1f/0")
    assert gpus.visible_names(1) == ["GPU-5e1f_0"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.visible_names(3) == ["0", "1", "2"]


def test_claims_are_per_host_and_per_slurm_job(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    host = gpus.lock_dir(tmp_path)
    assert host.parent == tmp_path / "gpus" and host.name == os.uname().nodename
    monkeypatch.setenv("SLURM_JOB_ID", "417")
    assert gpus.lock_dir(tmp_path) == host / "slurm-417"


@pytest.mark.parametrize("key", ["gpu.memory_growth", "gpu.one_per_job"])
def test_a_gpu_key_takes_true_or_false(key):
    assert hydra_jobs.command_line_errors([f"{key}=auto"]) == [f"{key}='auto' is invalid; expected true or false"]


def test_gpu_keys_do_not_change_a_configs_identity():
    """Which GPU, and how its memory is mapped, change no result: a run on another GPU is reused."""
    default = training_config(train_settings(["backbone=mobilenet"]))
    other = training_config(train_settings(["backbone=mobilenet", "gpu.memory_growth=false", "gpu.one_per_job=false"]))
    assert default == other
    assert not any(key.startswith("gpu.") for key in default)
