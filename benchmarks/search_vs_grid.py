"""An Optuna search against a grid of the same size, over the same ranges, on real data.

    python benchmarks/search_vs_grid.py [--data ../shared/data/simpsons-mini] [--trials 16]
                                        [--folder DIR]

On simpsons-mini (skipped, saying why, when it or the MobileNet weights are absent), MobileNet
alpha 0.25 with its ImageNet weights (../shared/weights), 40 epochs on cached features:
- the grid: optimizer.lr 1e-4,1e-3 x dropout 0.2,0.5 x optimizer adam,rmsprop x image_size
  128,224 (16 points, each inside the Optuna preset's ranges), one command;
- the search: `hydra/sweeper=optuna hydra.sweeper.n_trials=16` (the preset's ranges: lr on a log
  scale in [1e-5, 1e-2], dropout in [0, 0.6], adam/rmsprop/sgd/adamw, 128/160/192/224 px), killed
  with kill -9 (the whole process group) once half its trials have ended, then the same command
  again, to the end;
each in its own experiment of one new SQLite store, with its own feature cache. Printed: each
one's runs, wall time, its best run by validation accuracy (the kept epoch's) and that run's test
accuracy; then the search's trials after the kill: finished, pruned, failed, and whether any was
lost or doubled. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "data" / "simpsons-mini"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
GRID = ["optimizer.lr=1e-4,1e-3", "dropout=0.2,0.5", "optimizer=adam,rmsprop", "image_size=128,224"]
POLL_SECONDS = 2


def common(data: Path, uri: str, experiment: str, cache: Path) -> list[str]:
    return [
        "data=simpsons",
        f"data.dir={data}",
        "backbone=mobilenet",
        "backbone.kwargs.alpha=0.25",
        f"backbone.weights={WEIGHTS}",
        "epochs=40",
        "batch_size=32",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        f"cache_dir={cache}",
    ]


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "simpsons.train", "-m", *args]


def run(command: list[str], log: Path) -> float:
    """Run to the end; its wall seconds. Exits with its output's tail if it fails."""
    started = time.perf_counter()
    with log.open("a") as output:
        code = subprocess.run(command, cwd=log.parent, stdout=output, stderr=subprocess.STDOUT, env=env()).returncode
    if code != 0:
        sys.exit(f"{' '.join(command[3:6])}... exited {code}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONUNBUFFERED": "1"}


def trial_runs(client, experiment: str) -> list:
    from simpsons.tracking import schema

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], f"tags.`{schema.RUN_TYPE}` = '{schema.TRAIN}'")


def killed_halfway(command: list[str], log: Path, client, experiment: str, half: int) -> float:
    """Start `command`, kill -9 its process group once `half` trial runs have ended; its wall seconds."""
    started = time.perf_counter()
    with log.open("a") as output:
        driver = subprocess.Popen(
            command, cwd=log.parent, stdout=output, stderr=subprocess.STDOUT, env=env(), start_new_session=True
        )
    while sum(run.info.status == "FINISHED" for run in trial_runs(client, experiment)) < half:
        if driver.poll() is not None:
            sys.exit(f"the search ended (exit {driver.returncode}) before {half} trials:\n{log.read_text()[-3000:]}")
        time.sleep(POLL_SECONDS)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return time.perf_counter() - started


def best(runs: list) -> tuple[float, float, str]:
    """The run with the best kept-epoch validation accuracy: that, its test accuracy, its name."""
    top = max(runs, key=lambda run: run.data.metrics["best_val_accuracy"])
    return top.data.metrics["best_val_accuracy"], top.data.metrics["test_accuracy"], top.info.run_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--folder", type=Path, help="where the store, caches and logs go (default: a new one in /tmp)")
    options = parser.parse_args()
    for needed in (options.data, WEIGHTS):
        if not needed.exists():
            print(f"skipped: {needed} is absent (../shared/README.md)")
            return
    folder = options.folder or Path(tempfile.mkdtemp(prefix="search-vs-grid-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = options.data.resolve()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    sys.path.insert(0, str(ROOT))
    from mlflow.tracking import MlflowClient

    from simpsons.tracking import schema, store

    store.configure(uri)
    client = MlflowClient(uri)
    print(f"store: {uri}; logs: {folder}/*.log")

    grid_seconds = run(train_command([*GRID, *common(data, uri, "grid", folder / "cache-grid")]), folder / "grid.log")
    grid = [run for run in trial_runs(client, "grid") if run.info.status == "FINISHED"]

    searched = ["hydra/sweeper=optuna", f"hydra.sweeper.n_trials={options.trials}"]
    search = train_command([*searched, *common(data, uri, "optuna", folder / "cache-optuna")])
    first = killed_halfway(search, folder / "optuna.log", client, "optuna", options.trials // 2)
    again = run(search, folder / "optuna.log")
    trials = trial_runs(client, "optuna")
    finished = [run for run in trials if run.info.status == "FINISHED"]
    numbers = [int(run.data.tags[schema.TRIAL]) for run in finished]
    pruned = [run for run in finished if schema.PRUNED in run.data.tags]

    print(f"{'':8} {'runs':>5} {'wall s':>8} {'best val_accuracy':>18} {'its test_accuracy':>18}  best run")
    for name, runs, seconds in (("grid", grid, grid_seconds), ("optuna", finished, first + again)):
        val, test, run_name = best(runs)
        print(f"{name:8} {len(runs):>5} {seconds:>8.1f} {val:>18.4f} {test:>18.4f}  {run_name}")
    print(f"optuna: killed -9 after {first:.1f} s, the same command again took {again:.1f} s")
    print(
        f"optuna trials: {len(finished)} finished runs ({len(pruned)} pruned), distinct trial numbers "
        f"{len(set(numbers))}, doubled {len(numbers) - len(set(numbers))}, "
        f"runs not finished {len(trials) - len(finished)} (the trial the kill cut: KILLED)"
    )


if __name__ == "__main__":
    main()
