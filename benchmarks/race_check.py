"""The demo sweep, 4 jobs at once through hydra/launcher=parallel, N times in a row, each on a new
SQLite store: how its jobs' runs ended, round by round. Every job logs the same data set into the
same experiment at the same moment, so a write that races shows up here as a FAILED run.

    .venv/bin/python benchmarks/race_check.py                      # 10 rounds, 1 epoch, tiny MobileNet
    .venv/bin/python benchmarks/race_check.py --rounds 3 -- epochs=2 backbone=resnet50v2 image_size=64

Each round is `python -m simpsons.train -m experiment=demo hydra/launcher=parallel
hydra.launcher.n_jobs=4` with its own store, feature cache and Hydra folder (in a temporary
folder, removed at the end); the demo images are generated once and shared. Extra overrides after
`--` replace the tiny defaults. Exit code 1 if any round had a run that did not finish or a
command that failed.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TINY = ["epochs=1", "backbone=mobilenet", "backbone.kwargs.alpha=0.25", "image_size=32", "backbone.weights=null"]
EXPERIMENT = "race-check"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="sweeps in a row (default 10)")
    parser.add_argument("--jobs", type=int, default=4, help="jobs at once (hydra.launcher.n_jobs, default 4)")
    parser.add_argument("overrides", nargs="*", help=f"train overrides instead of {' '.join(TINY)}")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient  # after --help

    totals: collections.Counter[str] = collections.Counter()
    bad_rounds = 0
    with tempfile.TemporaryDirectory(prefix="race-check-") as scratch:
        folder = Path(scratch)
        for number in range(1, args.rounds + 1):
            round_dir = folder / f"round-{number}"
            round_dir.mkdir()
            uri = f"sqlite:///{round_dir / 'mlflow.db'}"
            command = [sys.executable, "-m", "simpsons.train", "-m", "experiment=demo", "hydra/launcher=parallel"]
            command += [f"hydra.launcher.n_jobs={args.jobs}", f"data.dir={folder / 'demo-data'}"]
            command += [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}", *(args.overrides or TINY)]
            env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            env["SIMPSONS_CACHE_DIR"] = str(round_dir / "cache")
            started = time.monotonic()
            with (round_dir / "output.txt").open("w") as output:
                finished = subprocess.run(command, cwd=round_dir, env=env, stdout=output, stderr=subprocess.STDOUT)
            code = finished.returncode
            seconds = time.monotonic() - started
            statuses = _job_statuses(MlflowClient(uri))
            tracebacks = (round_dir / "output.txt").read_text().count("Traceback (most recent call last)")
            totals.update(statuses)
            counts = ", ".join(f"{status} {statuses[status]}" for status in ("FINISHED", "FAILED", "other"))
            print(f"round {number}: {counts}; exit {code}; {tracebacks} traceback(s); {seconds:.0f} s", flush=True)
            if code != 0 or statuses["FAILED"] or statuses["other"] or tracebacks:
                bad_rounds += 1
                print((round_dir / "output.txt").read_text()[-3000:], flush=True)
    runs = sum(totals.values())
    counts = ", ".join(f"{status} {totals[status]}" for status in ("FINISHED", "FAILED", "other"))
    print(f"{args.rounds} rounds of {args.jobs} jobs at once: {runs} runs: {counts}; {bad_rounds} round(s) not clean")
    return 1 if bad_rounds else 0


def _job_statuses(client) -> collections.Counter[str]:
    """How the sweep's training runs ended: FINISHED, FAILED, or other (KILLED, RUNNING, ...)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return collections.Counter()
    runs = client.search_runs([experiment.experiment_id], "tags.`simpsons.run_type` = 'train'", max_results=1000)
    return collections.Counter(r.info.status if r.info.status in ("FINISHED", "FAILED") else "other" for r in runs)


if __name__ == "__main__":
    sys.exit(main())
