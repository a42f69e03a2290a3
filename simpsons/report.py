"""`python -m simpsons.report`: the results table of an experiment or sweep, straight from MLflow.

    python -m simpsons.report [--sweep latest|<parent run id>] [--metric best_val_accuracy]
                              [--format table|markdown|csv] [--output DIR]

One row per finished training run, sorted by the metric; ensembles in their own section. With
--output, also writes results.md, results.csv (training runs), ensembles.csv and results.png (a
bar chart) there.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons.config import tracking_uri_from_environment
from simpsons.errors import SimpsonsError
from simpsons.tracking import lifecycle, reader, schema, store

TRAINING_COLUMNS = {  # header: (source, key)
    "id": ("id", ""),
    "run": ("name", ""),
    "backbone": ("param", "backbone.name"),
    "image_size": ("param", "image_size"),
    "dropout": ("param", "dropout"),
    "batch_size": ("param", "batch_size"),
    "epochs": ("param", "epochs"),
    "optimizer": ("param", "optimizer.name"),
    "lr": ("param", "optimizer.lr"),
    "val_accuracy": ("metric", "val_accuracy"),
    "best_val_accuracy": ("metric", "best_val_accuracy"),
    "val_loss": ("metric", "val_loss"),
    "test_accuracy": ("metric", "test_accuracy"),
}
ENSEMBLE_COLUMNS = {
    "id": ("id", ""),
    "run": ("name", ""),
    "method": ("method", ""),
    "members": ("param", "num_members"),
    "val_accuracy": ("metric", "val_accuracy"),
    "test_accuracy": ("metric", "test_accuracy"),
    "test_gain": ("metric", "test_accuracy_gain"),
}


def cell(run: Run, source: str, key: str) -> str:
    if source == "id":
        return run.info.run_id[:8]
    if source == "name":
        return run.info.run_name
    if source == "method":  # an ensemble's: greedy, mean, or mean weighted by validation accuracy
        method, weights = run.data.params.get("method", ""), run.data.params.get("weights")
        return f"{method} ({weights})" if method == "mean" and weights != "equal" else method
    if source == "param":
        return run.data.params.get(key, "")
    value = run.data.metrics.get(key)
    return "" if value is None else f"{value:.4f}"


def rows(found: list[Run], columns: dict[str, tuple[str, str]]) -> list[list[str]]:
    return [[cell(run, *spec) for spec in columns.values()] for run in found]


def results(
    client: MlflowClient, experiment: str, sweep: str | None, metric: str, descending: bool
) -> tuple[list[Run], list[Run], list[Run]]:
    """Finished training runs sorted by `metric` (best first; runs without it last), ensembles, and
    the older finished runs of configs that are counted once (by their latest run)."""
    candidates, superseded = reader.training_runs(client, reader.search(client, experiment, sweep))
    training = [run for run in candidates if run.info.status == "FINISHED"]
    ensembles = [
        run
        for run in reader.search(client, experiment)
        if run.info.status == "FINISHED"
        and reader.run_type(run) == schema.ENSEMBLE
        and (not sweep or _sweep_of(run) == sweep)
    ]
    sign = -1 if descending else 1

    def rank(run: Run) -> tuple[bool, float]:
        value = run.data.metrics.get(metric, math.nan)
        return not math.isfinite(value), sign * value if math.isfinite(value) else 0.0

    training.sort(key=rank)
    ensembles.sort(key=headline_accuracy, reverse=True)
    return training, ensembles, [run for run in superseded if run.info.status == "FINISHED"]


def headline_accuracy(run: Run) -> float:
    """Test accuracy where the run had a test set, else validation accuracy."""
    return run.data.metrics.get("test_accuracy", run.data.metrics.get("val_accuracy", 0.0))


def _sweep_of(run: Run) -> str | None:
    return run.data.tags.get(schema.ENSEMBLE_SWEEP)


def markdown(headers: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])


def plain(headers: list[str], table: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, table)])


def comma_separated(headers: list[str], table: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([headers, *table])
    return buffer.getvalue()


def chart(training: list[Run], ensembles: list[Run]) -> Figure:
    """Test accuracy (validation where there is no test set) of every run, ensembles in orange."""
    found = training + ensembles
    names = [textwrap.fill(r.info.run_name, 40) for r in found]
    figure = Figure(figsize=(10, 0.6 * len(found) + 1.5), layout="constrained")
    axes = figure.subplots()
    bars = axes.barh(
        names,
        [headline_accuracy(r) for r in found],
        color=["tab:blue"] * len(training) + ["tab:orange"] * len(ensembles),
    )
    axes.bar_label(bars, fmt="%.4f", padding=3)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.1)
    axes.set_xlabel("test accuracy (validation accuracy where there is no test set)")
    return figure


def render(training: list[Run], ensembles: list[Run], style: str) -> str:
    formatter = {"table": plain, "markdown": markdown, "csv": comma_separated}[style]
    sections = []
    for title, found, columns in (
        ("Training runs", training, TRAINING_COLUMNS),
        ("Ensembles", ensembles, ENSEMBLE_COLUMNS),
    ):
        if found:
            body = formatter(list(columns), rows(found, columns))
            sections.append(body if style == "csv" else f"{'## ' if style == 'markdown' else ''}{title}\n\n{body}")
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simpsons.report", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="simpsons", help="MLflow experiment (simpsons)")
    parser.add_argument("--sweep", help="latest, or a sweep's parent run id: only that sweep and its ensembles")
    parser.add_argument("--metric", default="best_val_accuracy", help="sort key (best_val_accuracy)")
    parser.add_argument("--direction", choices=("max", "min"), help="best first: max, or min for a loss (default)")
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    parser.add_argument("--output", type=Path, help="also write results.md, results.csv, ensembles.csv, results.png")
    parser.add_argument("--tracking-uri", default=tracking_uri_from_environment(), help="MLflow store")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=lifecycle.STALE_AFTER_SECONDS,
        help="seconds without a heartbeat after which another host's RUNNING run is ended KILLED",
    )
    args = parser.parse_args(argv)
    try:
        client = MlflowClient(store.configure(args.tracking_uri))
        experiment = reader.experiment_id(client, args.experiment)
        sweep = reader.resolve_sweep(client, experiment, args.sweep)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lifecycle.end_dead_runs(client, [experiment], args.stale_after)  # the store answered just now
    direction = args.direction or ("min" if "loss" in args.metric else "max")
    training, ensembles, superseded = results(client, experiment, sweep, args.metric, descending=direction == "max")
    if not training and not ensembles:
        print("error: no finished runs to report", file=sys.stderr)
        return 1
    if superseded:
        older = ", ".join(run.info.run_id[:8] for run in superseded)
        print(
            f"note: each config counted once, by its latest finished run; left out older runs: {older}", file=sys.stderr
        )
    print(render(training, ensembles, args.format))
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text(render(training, ensembles, "markdown") + "\n")
        (args.output / "results.csv").write_text(
            comma_separated(list(TRAINING_COLUMNS), rows(training, TRAINING_COLUMNS))
        )
        if ensembles:
            (args.output / "ensembles.csv").write_text(
                comma_separated(list(ENSEMBLE_COLUMNS), rows(ensembles, ENSEMBLE_COLUMNS))
            )
        chart(training, ensembles).savefig(args.output / "results.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
