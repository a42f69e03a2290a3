"""Same results: a fixed config trains to the same metrics, to 1e-6, as before the redesign (issue 17).

The pinned numbers are what commit 518c9c4 (before the redesign started) logged to MLflow for these
two commands, each run there in a new folder with its own SQLite store, demo images and feature
cache, and with CUDA_VISIBLE_DEVICES=-1:

    python -m simpsons.train experiment=demo data.dir=DIR/demo cache_dir=DIR/cache epochs=3 image_size=32 \
        deterministic=true jit_compile=false tracking.uri=sqlite:///DIR/mlflow.db
    ... the same, and finetune.layers=10 finetune.epochs=2 monitor=val_loss

That is a ResNet50V2 with random weights on the demo images (generated from their seed): first the
head on cached features, 3 epochs; then the same, and 2 epochs with its top 10 layers unfrozen,
keeping the epoch with the lowest val_loss, a fine-tuned one, so that the test metrics are the
fine-tuned model's. On the CPU with op determinism, each run gives the same numbers every time;
a GPU (even with determinism) or XLA gives others, hence no GPU and no XLA here. So, from the
fine-tuning phase on, does another kind of CPU: the same commit's numbers on each CPU seen so far are
pinned (PINNED_ON_OTHER_CPUS), and a run must match one of them to 1e-6.

The test compares every metric the runs log (the timings are in timings.json, not metrics):
the per-epoch curves and the run's final values.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from simpsons.config import PROJECT_ROOT

COMMON = ["experiment=demo", "epochs=3", "image_size=32", "deterministic=true", "jit_compile=false"]
FINETUNE = ["finetune.layers=10", "finetune.epochs=2", "monitor=val_loss"]


def log10(learning_rates: list[float]) -> list[float]:
    """The log10_lr curve of the learning rates 518c9c4 logged as its `lr` curve (one chart since issue 18)."""
    return [math.log10(value) for value in learning_rates]


# Logged by commit 518c9c4 (see the docstring): per-epoch curves by step (under epoch/ since issue 18,
# Keras's names after it), then the final values.
PINNED = {
    "cached": {
        "epoch/accuracy": [0.296875, 0.5703125, 0.7109375],
        "epoch/loss": [1.3743414878845215, 1.2919650077819824, 1.2413891553878784],
        "epoch/val_accuracy": [0.28125, 0.59375, 0.78125],
        "epoch/val_loss": [1.3255445957183838, 1.2687878608703613, 1.217332363128662],
        "epoch/log10_lr": log10([0.009999999776482582, 0.009999999776482582, 0.009999999776482582]),
        "best_epoch": 3.0,  # 518c9c4 logged 2.0: epochs count from 1 since issue 18
        "best_val_accuracy": 0.78125,
        "best_val_loss": 1.217332363128662,  # best_*: the kept epoch's curve values, since issue 18
        "best_loss": 1.2413891553878784,
        "best_accuracy": 0.7109375,
        "val_macro_f1": 0.7745623941276115,
        "test_accuracy": 0.9,
        "test_loss": 1.2181392908096313,
        "test_macro_f1": 0.9014556318332062,
    },
    # Its first 3 epochs are the cached run's: the head phase trains on the same cached features.
    "finetune": {
        "epoch/accuracy": [0.296875, 0.5703125, 0.7109375, 0.7890625, 0.890625],
        "epoch/loss": [
            1.3743414878845215,
            1.2919650077819824,
            1.2413891553878784,
            1.1727514266967773,
            1.0627408027648926,
        ],
        "epoch/val_accuracy": [0.28125, 0.59375, 0.78125, 0.9375, 0.90625],
        "epoch/val_loss": [
            1.3255445957183838,
            1.2687878608703613,
            1.217332363128662,
            1.1154588460922241,
            1.0159178972244263,
        ],
        "epoch/log10_lr": log10(
            [
                0.009999999776482582,
                0.009999999776482582,
                0.009999999776482582,
                0.0010000000474974513,
                0.0010000000474974513,
            ]
        ),
        "best_epoch": 5.0,  # 518c9c4 logged 4.0: epochs count from 1 since issue 18
        "best_val_accuracy": 0.90625,
        "best_val_loss": 1.0159178972244263,
        "best_loss": 1.0627408027648926,
        "best_accuracy": 0.890625,
        "val_macro_f1": 0.902834008097166,
        "test_accuracy": 0.925,
        "test_loss": 1.0257809162139893,
        "test_macro_f1": 0.9244322928533454,
    },
}


# The same commit and command on another CPU: an AMD EPYC with AVX2 and no AVX-512 (2026-12-03).
# oneDNN picks its kernels by the CPU it finds, and the fine-tuning phase (the gradients of the
# backbone's convolutions) then rounds otherwise: each CPU gives its numbers every time, but not the
# other's, from the 5th epoch on (the 4th differs by 1e-7). The head phase (a Dense layer on cached
# features) gives the same on both. Values not listed here are as above.
PINNED_ON_OTHER_CPUS = {
    "finetune": [
        PINNED["finetune"]
        | {
            "epoch/loss": [*PINNED["finetune"]["epoch/loss"][:3], 1.1727513074874878, 1.0627321004867554],
            "epoch/val_loss": [*PINNED["finetune"]["epoch/val_loss"][:3], 1.1154587268829346, 1.0159084796905518],
            "best_val_loss": 1.0159084796905518,
            "best_loss": 1.0627321004867554,
            "test_loss": 1.0257723331451416,
        }
    ],
}


def by_step(metrics: dict[str, float | list[float]]) -> dict[str, float]:
    """{"epoch/loss": [a, b]} as {"epoch/loss[0]": a, "epoch/loss[1]": b}: pytest.approx compares no nested lists."""
    flat = {}
    for key, value in metrics.items():
        flat |= {f"{key}[{step}]": item for step, item in enumerate(value)} if isinstance(value, list) else {key: value}
    return flat


def logged_metrics(uri: str) -> dict[str, float | list[float]]:
    """The store's one run's metrics: a curve (by step) for each metric logged at several steps, else its value."""
    client = MlflowClient(uri)
    [run] = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert run.info.status == "FINISHED"
    metrics: dict[str, float | list[float]] = {}
    for key, value in run.data.metrics.items():
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda metric: metric.step)
        steps = [metric.step for metric in history]
        assert len(set(steps)) == len(steps), f"{key} logged twice at a step: {steps}"
        metrics[key] = [metric.value for metric in history] if len(history) > 1 else value
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,overrides", [pytest.param("cached", [], id="cached"), pytest.param("finetune", FINETUNE, id="finetune")]
)
def test_a_fixed_config_logs_the_metrics_it_logged_before_the_redesign(name, overrides, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    places = [f"data.dir={tmp_path / 'demo'}", f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={uri}"]
    # The CPU alone: a visible GPU would compute other numbers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"CUDA_VISIBLE_DEVICES": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "simpsons.train", *COMMON, *overrides, *places],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    logged = logged_metrics(uri)
    found = by_step({key: logged[key] for key in PINNED[name] if key in logged})
    on_other_cpus = [by_step(pinned) for pinned in PINNED_ON_OTHER_CPUS.get(name, [])]
    if not any(found == pytest.approx(pinned, abs=1e-6) for pinned in on_other_cpus):
        assert found == pytest.approx(by_step(PINNED[name]), abs=1e-6)  # the diff, against the first machine's
    assert not {key for key in logged if not key.startswith("system/")} - PINNED[name].keys()  # nothing new unpinned
