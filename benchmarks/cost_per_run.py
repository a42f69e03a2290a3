"""What one more config costs in a cached grid: a 1-config and a 2x2 sweep, each on a cold cache.

    python benchmarks/cost_per_run.py [--data ../shared/data/simpsons-mini] [--epochs 5] [--repeat 2]

For MobileNetV2 at 128 px and ResNet50V2 at 150 px (random weights: no download), prints the
wall seconds of both sweeps, their ratio, the cost of each extra run ((2x2 - 1x1) / 3), and every
run's breakdown from the seconds per step in its `timings.json` artifact. Each sweep gets its own temporary MLflow
store and feature cache, so both start cold: the 2x2 sweep extracts the features once, like the
1-config one, and its other three runs train heads on them. The sweeps alternate --repeat times
and the figures are each sweep's fastest, the usual guard against a machine's passing load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpsons.tracking import schema  # noqa: E402  (after the path: runs from a checkout)

CASES = [("mobilenetv2", 128), ("resnet50v2", 150)]
GRIDS = {"1x1": ["optimizer=adam", "dropout=0.2"], "2x2": ["optimizer=adam,rmsprop", "dropout=0.2,0.5"]}


def data_overrides(data: Path, scratch: Path) -> list[str]:
    """The Kaggle-layout set at --data, or without it a generated one of 4 classes x 200 images."""
    if (data / "simpsons_dataset").is_dir():
        return ["data=simpsons", f"data.dir={data.resolve()}"]
    from simpsons.demo_data import write_demo_data

    print(f"{data} has no simpsons_dataset/: generating 4 classes x (160 train + 40 test) images of 400 px")
    write_demo_data(scratch, train_per_class=160, test_per_class=40, size=400, seed=0)
    return ["data=folder", f"data.root={scratch / 'train'}", f"data.test_root={scratch / 'test'}"]


def sweep(overrides: list[str], workdir: Path) -> tuple[float, str]:
    """Wall seconds of `python -m simpsons.train -m OVERRIDES` in a new process, and its store's URI."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [sys.executable, "-m", "simpsons.train", "-m", *overrides, f"tracking.uri={uri}"]
    command.append(f"cache_dir={workdir / 'cache'}")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"sweep failed:\n{result.stderr[-3000:]}")
    return seconds, uri


def print_breakdown(uri: str) -> None:
    """One line per training run: cache use, seconds from start to end, then each phase's seconds."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("simpsons").experiment_id
    query = f"tags.`{schema.RUN_TYPE}` = '{schema.TRAIN}'"
    runs = client.search_runs([experiment], query, order_by=["attributes.start_time"])
    for run in runs:
        phases = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{schema.TIMINGS_JSON}")["seconds"]
        wall = (run.info.end_time - run.info.start_time) / 1000
        listed = " ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())
        print(f"    {run.info.run_id[:8]} cache {run.data.tags[schema.FEATURE_CACHE]:4} run {wall:5.2f} s: {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "simpsons-mini")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2, help="times each sweep runs; the fastest counts")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory() as scratch:
        data = data_overrides(args.data, Path(scratch) / "generated")
        for backbone, size in CASES:
            common = [f"backbone={backbone}", "backbone.weights=null", f"image_size={size}", f"epochs={args.epochs}"]
            seconds = {grid: float("inf") for grid in GRIDS}
            for attempt in range(args.repeat):
                for grid, axes in GRIDS.items():
                    workdir = Path(scratch) / f"{backbone}-{grid}-{attempt}"
                    workdir.mkdir()
                    wall, uri = sweep([*common, *data, *axes], workdir)
                    seconds[grid] = min(seconds[grid], wall)
                    print(f"{backbone} {size} px, {grid} sweep, cold cache: {wall:.1f} s")
                    print_breakdown(uri)
            extra = (seconds["2x2"] - seconds["1x1"]) / 3
            print(f"{backbone}: 2x2 / 1x1 = {seconds['2x2'] / seconds['1x1']:.2f}; each extra run {extra:.1f} s\n")
    print(f"({os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
