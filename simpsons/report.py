"""`python -m simpsons.report`: the results table of an experiment or sweep, straight from MLflow.

One row per finished training run, sorted by a metric, with its short run id; ensembles in their
own section. With --output, also writes results.md, results.csv (training runs), ensembles.csv
and results.png (a bar chart) there.

With --group-by KEY, one row per value of the param KEY instead (e.g. variant, the options table of
conf/experiment/options_mini.yaml), then one per ensemble method: how many runs, and the mean and
sample standard deviation of the test and validation scores over them.

MLflow and matplotlib are imported only once the arguments are parsed, so that --help answers at
once (and nothing here imports TensorFlow).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from simpsons import startup
from simpsons.config import CONF_DIR, add_tracking_uri_argument
from simpsons.errors import SimpsonsError
from simpsons.tracking import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

FORMATS = ("table", "markdown", "csv")
DECIMALS = 4  # every printed metric: enough to tell runs apart, short enough to read
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
    # The kept epoch's (best_*), as the run's model, the sweep summary and ensemble read them: a run's
    # latest val_accuracy and val_loss are its last epoch's, which need not be the one it kept.
    "best_epoch": ("metric", "best_epoch"),
    "best_val_accuracy": ("metric", "best_val_accuracy"),
    "best_val_loss": ("metric", "best_val_loss"),
    "test_accuracy": ("metric", "test_accuracy"),
    "test_macro_f1": ("metric", "test_macro_f1"),
}
ENSEMBLE_COLUMNS = {
    "id": ("id", ""),
    "run": ("name", ""),
    "method": ("method", ""),
    "members": ("param", "num_members"),
    "val_accuracy": ("metric", "val_accuracy"),
    "test_accuracy": ("metric", "test_accuracy"),
    "test_macro_f1": ("metric", "test_macro_f1"),
    "test_gain": ("metric", "test_accuracy_gain"),
}
TRAINING_COLOR, ENSEMBLE_COLOR = "tab:blue", "tab:orange"
# --group-by: what each group's row summarises. An ensemble's best_val_accuracy is its val_accuracy.
GROUP_METRICS = ("test_accuracy", "test_macro_f1", "best_val_accuracy")
NOT_SET = "(not set)"  # the group of training runs that did not log the KEY param


@dataclass(frozen=True)
class Scope:
    """What a report covers: an experiment, or one sweep of it (its parent run)."""

    experiment: str
    sweep_id: str | None = None
    sweep_name: str | None = None

    def describe(self) -> str:
        if self.sweep_id is None:
            return f"experiment {self.experiment}, all runs"
        return f'experiment {self.experiment}, sweep "{self.sweep_name}" ({self.sweep_id[:8]})'


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
    if value is not None and key == "best_epoch":  # an epoch number, counted from 1
        return f"{value:.0f}"
    return "" if value is None else f"{value:.{DECIMALS}f}"


def rows(found: list[Run], columns: dict[str, tuple[str, str]]) -> list[list[str]]:
    return [[cell(run, *spec) for spec in columns.values()] for run in found]


def results(
    client: MlflowClient, experiment: str, sweep: str | None, metric: str, descending: bool
) -> tuple[list[Run], list[Run], list[Run]]:
    """Finished training runs sorted by `metric` (best first; runs without it last), ensembles, and
    the older finished runs of configs that are counted once (by their latest run)."""
    from simpsons.tracking import reader

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
        value = reader.metric(run, metric)  # a curve's (val_loss's) at the kept epoch
        value = math.nan if value is None else value
        return not math.isfinite(value), sign * value if math.isfinite(value) else 0.0

    training.sort(key=rank)
    ensembles.sort(key=lambda run: run.data.metrics.get(headline_metric([run]), 0.0), reverse=True)
    return training, ensembles, [run for run in superseded if run.info.status == "FINISHED"]


def headline_metric(found: list[Run]) -> str:
    """test_accuracy when every run has it, else best_val_accuracy (a training run's kept epoch's; an
    ensemble's val_accuracy): one chart never mixes the two."""
    return "test_accuracy" if all("test_accuracy" in run.data.metrics for run in found) else "best_val_accuracy"


def _sweep_of(run: Run) -> str | None:
    return run.data.tags.get(schema.ENSEMBLE_SWEEP)


@dataclass(frozen=True)
class Group:
    """The runs that share a value of the grouping param (or, for ensembles, a method)."""

    label: str
    runs: tuple[Run, ...]
    ensemble: bool = False

    def values(self, metric: str) -> list[float]:
        from simpsons.tracking import reader  # --help never imports MLflow

        found = (reader.metric(run, metric) for run in self.runs)  # a curve's (val_loss's) at the kept epoch
        return [value for value in found if value is not None]


def groups(training: list[Run], ensembles: list[Run], key: str, metric: str, descending: bool) -> list[Group]:
    """Training runs by their param `key`, then ensembles by their method ('ensemble greedy'), each
    part sorted by the groups' mean `metric`, best first.

    Ensembles have no training params: their method is what tells them apart in a comparison such
    as the options table, where one greedy ensemble per seed makes the row 'ensemble greedy'.
    """
    by_value = _grouped(training, lambda run: run.data.params.get(key, NOT_SET), ensemble=False)
    by_method = _grouped(ensembles, lambda run: f"ensemble {cell(run, 'method', '') or NOT_SET}", ensemble=True)
    return _ranked(by_value, metric, descending) + _ranked(by_method, metric, descending)


def _grouped(found: list[Run], label_of: Callable[[Run], str], ensemble: bool) -> list[Group]:
    labels: dict[str, list[Run]] = {}
    for run in found:
        labels.setdefault(label_of(run), []).append(run)
    return [Group(label, tuple(runs), ensemble) for label, runs in labels.items()]


def _ranked(found: list[Group], metric: str, descending: bool) -> list[Group]:
    sign = -1 if descending else 1

    def rank(group: Group) -> tuple[bool, float, str]:
        mean, _ = mean_std(group.values(metric))
        return mean is None, 0.0 if mean is None else sign * mean, group.label

    return sorted(found, key=rank)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (ddof=1) of `values`: no std of one value, nothing of none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summary_cell(values: list[float], runs: int) -> str:
    """'0.4750 ± 0.0132' over every run of the group; says n when fewer runs logged the metric,
    and that one value has no std."""
    mean, std = mean_std(values)
    if mean is None:
        return ""
    if std is None:
        return f"{mean:.{DECIMALS}f} (n=1, no std)"
    fewer = f" (n={len(values)})" if len(values) < runs else ""
    return f"{mean:.{DECIMALS}f} ± {std:.{DECIMALS}f}{fewer}"


def group_rows(found: list[Group]) -> list[list[str]]:
    return [
        [group.label, str(len(group.runs)), *(summary_cell(group.values(m), len(group.runs)) for m in GROUP_METRICS)]
        for group in found
    ]


def group_csv_rows(found: list[Group]) -> list[list[str]]:
    """Numbers only, as they are: mean, std (empty below two values) and n of each metric."""
    table = []
    for group in found:
        row = [group.label, str(len(group.runs))]
        for metric in GROUP_METRICS:
            values = group.values(metric)
            mean, std = mean_std(values)
            row += ["" if mean is None else repr(mean), "" if std is None else repr(std), str(len(values))]
        table.append(row)
    return table


def group_headers(key: str, style: str) -> list[str]:
    if style == "csv":
        return [key, "runs", *(f"{m}_{part}" for m in GROUP_METRICS for part in ("mean", "std", "n"))]
    return [key, "runs", *(f"{m} (mean ± std)" for m in GROUP_METRICS)]


def render_groups(found: list[Group], key: str, style: str, scope: Scope, sorted_by: str) -> str:
    """The grouped table in a format, after a heading that names the scope and the statistic (none in csv)."""
    if style == "csv":
        return comma_separated(group_headers(key, style), group_csv_rows(found))
    formatter = {"table": plain, "markdown": markdown}[style]
    trained, ensembles = (sum(len(g.runs) for g in found if g.ensemble == kind) for kind in (False, True))
    heading = f"Results by {key}: {scope.describe()}"
    summary = (
        f"{trained} training run(s) and {ensembles} ensemble(s) in {len(found)} "
        f"group(s), sorted by mean {sorted_by}; mean ± sample standard deviation (ddof=1) over each group's runs"
    )
    body = formatter(group_headers(key, style), group_rows(found))
    return f"# {heading}\n\n{summary}.\n\n{body}" if style == "markdown" else f"{heading}\n{summary}\n\n{body}"


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


def chart(training: list[Run], ensembles: list[Run], scope: Scope) -> Figure:
    """One bar per run, best at the top, ensembles in their own colour; titled with what it shows."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    metric = headline_metric(training + ensembles)
    bars = sorted(
        [(run, TRAINING_COLOR) for run in training] + [(run, ENSEMBLE_COLOR) for run in ensembles],
        key=lambda bar: bar[0].data.metrics.get(metric, 0.0),
        reverse=True,
    )
    figure = Figure(figsize=(10, 0.45 * len(bars) + 1.8), layout="constrained")
    axes = figure.subplots()
    drawn = axes.barh(
        [f"{_shorten(run.info.run_name, 48)} ({run.info.run_id[:8]})" for run, _ in bars],
        [run.data.metrics.get(metric, 0.0) for run, _ in bars],
        color=[color for _, color in bars],
    )
    axes.bar_label(drawn, fmt=f"%.{DECIMALS}f", padding=3)
    axes.invert_yaxis()
    axes.set_xlim(0, 1.15)  # room for the value labels
    axes.set_xlabel(metric.replace("_", " "))
    figure.suptitle(f"{metric.replace('_', ' ').capitalize()} by run, best first\n{scope.describe()}")
    legend = [Patch(color=TRAINING_COLOR, label="training run")]
    if ensembles:
        legend.append(Patch(color=ENSEMBLE_COLOR, label="ensemble"))
    figure.legend(handles=legend, loc="outside lower center", ncols=len(legend), frameon=False)  # off the bars
    return figure


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(training: list[Run], ensembles: list[Run], style: str, scope: Scope, sorted_by: str) -> str:
    """The tables in a format: a heading naming the scope (none in csv), then each section."""
    formatter = {"table": plain, "markdown": markdown, "csv": comma_separated}[style]
    sections = []
    if style != "csv":
        heading = f"Results: {scope.describe()}"
        summary = f"{len(training)} training run(s) sorted by {sorted_by}, {len(ensembles)} ensemble(s)"
        sections.append(f"# {heading}\n\n{summary}." if style == "markdown" else f"{heading}\n{summary}")
    for title, found, columns in (
        ("Training runs", training, TRAINING_COLUMNS),
        ("Ensembles", ensembles, ENSEMBLE_COLUMNS),
    ):
        if found:
            body = formatter(list(columns), rows(found, columns))
            sections.append(body if style == "csv" else f"{'## ' if style == 'markdown' else ''}{title}\n\n{body}")
    return "\n\n".join(sections)


def parser() -> argparse.ArgumentParser:
    tracking = OmegaConf.load(CONF_DIR / "tracking" / "default.yaml")  # the defaults train and ensemble use
    result = argparse.ArgumentParser(
        prog="python -m simpsons.report",
        description=__doc__.split("\n\nMLflow")[0],
        epilog=(
            "examples:\n"
            "  python -m simpsons.report --sweep latest\n"
            "  python -m simpsons.report --metric best_val_loss --format csv > runs.csv\n"
            "  python -m simpsons.report --experiment simpsons-mini --sweep latest --output results/\n"
            "  python -m simpsons.report --experiment options-mini --sweep latest --group-by variant --format markdown"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument(
        "--experiment",
        default=tracking.experiment,
        help=f"the MLflow experiment to report (default: {tracking.experiment}, as tracking.experiment)",
    )
    result.add_argument(
        "--sweep",
        help="only one sweep: 'latest' (the newest) or a sweep's parent run id; its training runs and the "
        "ensembles drawn from it (default: every run of the experiment)",
    )
    result.add_argument(
        "--metric",
        default="best_val_accuracy",
        help="the metric that orders the training runs, best first; any metric they logged "
        "(default: best_val_accuracy)",
    )
    result.add_argument(
        "--direction",
        choices=("max", "min"),
        help="which end is best: max (higher first) or min (lower first); default: min for a metric "
        "whose name contains 'loss', else max",
    )
    result.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="what to print: table (aligned columns for a terminal), markdown (the same as results.md) or "
        "csv (training runs, then ensembles, each with its header row); default: table",
    )
    result.add_argument(
        "--group-by",
        metavar="KEY",
        help="one row per value of the training runs' param KEY (e.g. variant, seed, optimizer.name), then one "
        "per ensemble method: the number of runs and the mean ± sample std (ddof=1) of test_accuracy, "
        "test_macro_f1 and best_val_accuracy over them, groups sorted by the mean --metric; with --output, "
        "also by-KEY.md and by-KEY.csv (mean, std and n of each metric)",
    )
    result.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="also write results.md, results.csv (training runs), ensembles.csv and results.png (a bar chart "
        "of test accuracy; of validation accuracy when a run has no test set) into DIR",
    )
    add_tracking_uri_argument(result)
    result.add_argument(
        "--stale-after",
        type=float,
        default=float(tracking.stale_after),
        metavar="SECONDS",
        help="a RUNNING run of another host with no heartbeat for this long is ended KILLED before reporting "
        f"(default: {tracking.stale_after}, as tracking.stale_after)",
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    startup.prepare_process()
    # Imported now: --help and bad arguments answer without loading MLflow.
    from mlflow.tracking import MlflowClient

    from simpsons.tracking import lifecycle, reader, store

    try:
        client = MlflowClient(store.configure(args.tracking_uri))
        experiment = reader.experiment_id(client, args.experiment)
        sweep = reader.resolve_sweep(client, experiment, args.sweep, "--experiment ")
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
    if args.group_by and (error := group_key_error(training, args.group_by)):
        print(f"error: {error}", file=sys.stderr)
        return 2
    scope = Scope(args.experiment, sweep, client.get_run(sweep).info.run_name if sweep else None)
    sorted_by = f"{args.metric} ({'highest' if direction == 'max' else 'lowest'} first)"
    if args.group_by:
        found = groups(training, ensembles, args.group_by, args.metric, descending=direction == "max")
        print(render_groups(found, args.group_by, args.format, scope, sorted_by))
    else:
        print(render(training, ensembles, args.format, scope, sorted_by))
    if args.output:
        written = write(args.output, training, ensembles, scope, sorted_by)
        if args.group_by:
            written += write_groups(args.output, found, args.group_by, scope, sorted_by)
        # On stderr, as the notes: stdout stays the table, which --format csv may pipe elsewhere.
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def group_key_error(training: list[Run], key: str) -> str | None:
    """A KEY that no training run logged (a typo, most likely): name it and the params that would
    split these runs (those whose values differ between them; else every param)."""
    if not training or any(key in run.data.params for run in training):
        return None
    logged = sorted({name for run in training for name in run.data.params})
    differing = [name for name in logged if len({run.data.params.get(name) for run in training}) > 1]
    return (
        f"--group-by {key!r} is not a param of these training runs; use one of the params that differ "
        f"between them: {', '.join(differing or logged)}"
    )


def write(directory: Path, training: list[Run], ensembles: list[Run], scope: Scope, sorted_by: str) -> list[Path]:
    """results.md, results.csv, ensembles.csv (with ensembles) and results.png; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "results.md", directory / "results.csv"]
    written[0].write_text(render(training, ensembles, "markdown", scope, sorted_by) + "\n")
    written[1].write_text(comma_separated(list(TRAINING_COLUMNS), rows(training, TRAINING_COLUMNS)))
    if ensembles:
        written.append(directory / "ensembles.csv")
        written[-1].write_text(comma_separated(list(ENSEMBLE_COLUMNS), rows(ensembles, ENSEMBLE_COLUMNS)))
    written.append(directory / "results.png")
    chart(training, ensembles, scope).savefig(written[-1], dpi=120)
    return written


def write_groups(directory: Path, found: list[Group], key: str, scope: Scope, sorted_by: str) -> list[Path]:
    """by-KEY.md and by-KEY.csv; returns their paths."""
    written = [directory / f"by-{key}.md", directory / f"by-{key}.csv"]
    written[0].write_text(render_groups(found, key, "markdown", scope, sorted_by) + "\n")
    written[1].write_text(render_groups(found, key, "csv", scope, sorted_by))
    return written


if __name__ == "__main__":
    sys.exit(main())
