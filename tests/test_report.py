"""`python -m simpsons.report`: its tables, files, chart and --help, on runs in a private SQLite logged.

The runs are written with MlflowClient, with the tags and metrics a training run and an ensemble
log (simpsons.tracking.schema), so that every value, and so the expected order, is known exactly.
tests/test_ensemble.py reports on runs that really trained.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import pytest
from conftest import ensemble_config, help_imports
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import report
from simpsons.ensembling.command import ensemble
from simpsons.tracking import schema
from simpsons.tracking.store import configure

# name: (params, metrics); best_val_accuracy and test_accuracy deliberately disagree on the order.
TRAINING = {
    "resnet50v2-adam dropout=0.2": ({"optimizer.name": "adam"}, {"best_val_accuracy": 0.9, "test_accuracy": 0.70}),
    "resnet50v2-rmsprop dropout=0.2": (
        {"optimizer.name": "rmsprop"},
        {"best_val_accuracy": 0.318749999, "test_accuracy": 0.95},
    ),
    "resnet50v2-sgd dropout=0.5": ({"optimizer.name": "sgd"}, {"best_val_accuracy": 0.5, "test_accuracy": 0.80}),
}


@dataclass(frozen=True)
class Logged:
    uri: str
    sweep: str  # the sweep's parent run id
    sweep_name: str
    training: dict[str, str]  # run name: run id
    ensemble: str
    outside: str  # a training run outside the sweep, without a test set


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """One sweep of three training runs, an ensemble drawn from it, and outside the sweep a training
    run without a test set and an ensemble of another sweep."""
    uri = configure(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")
    client = MlflowClient(uri)
    experiment = client.create_experiment("simpsons")
    sweep_name = "sweep 2026-11-28 12:00 optimizer=adam,rmsprop,sgd"
    sweep = client.create_run(experiment, run_name=sweep_name, tags={schema.RUN_TYPE: schema.SWEEP}).info.run_id
    training = {}
    for i, (name, (params, metrics)) in enumerate(TRAINING.items()):
        tags = {schema.RUN_TYPE: schema.TRAIN, schema.PARENT_RUN: sweep, schema.CONFIG_HASH: f"config-{i}"}
        run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        metrics = metrics | {"val_accuracy": 0.25, "val_loss": 2.0 - metrics["best_val_accuracy"]}
        finish(client, run_id, params | {"backbone.name": "resnet50v2"}, metrics | {"test_macro_f1": 0.123456})
        training[name] = run_id
    client.set_terminated(sweep)
    tags = {schema.RUN_TYPE: schema.ENSEMBLE, schema.ENSEMBLE_SWEEP: sweep}
    ensemble = client.create_run(experiment, run_name="ensemble mean of 3", tags=tags).info.run_id
    params = {"method": "mean", "weights": "equal", "num_members": "3"}
    finish(client, ensemble, params, {"val_accuracy": 0.5, "test_accuracy": 0.9, "test_macro_f1": 0.88888})
    outside = client.create_run(
        experiment, run_name="outside the sweep", tags={schema.RUN_TYPE: schema.TRAIN, schema.CONFIG_HASH: "other"}
    ).info.run_id
    finish(client, outside, {}, {"best_val_accuracy": 0.99, "val_accuracy": 0.6, "val_loss": 0.5})
    tags = {schema.RUN_TYPE: schema.ENSEMBLE, schema.ENSEMBLE_SWEEP: "another sweep"}
    other = client.create_run(experiment, run_name="ensemble of another sweep", tags=tags).info.run_id
    finish(client, other, {}, {"val_accuracy": 0.1, "test_accuracy": 0.1})
    return Logged(uri, sweep, sweep_name, training, ensemble, outside)


def finish(client: MlflowClient, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)


def table_rows(printed: str, title: str) -> list[list[str]]:
    """The rows under `title` in the terminal table, split on runs of two or more spaces."""
    section = printed.split(f"{title}\n\n", 1)[1].split("\n\n", 1)[0]
    header, _, *body = section.splitlines()
    return [[header.split()[0]], *([value.strip() for value in line.split("  ") if value.strip()] for line in body)]


def test_the_table_names_its_sweep_and_lists_short_ids_sorted_by_the_metric_with_4_decimals(logged, capsys):
    assert report.main(["--sweep", "latest", "--tracking-uri", logged.uri]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f'Results: experiment simpsons, sweep "{logged.sweep_name}" ({logged.sweep[:8]})'
    assert "3 training run(s) sorted by best_val_accuracy (highest first), 1 ensemble(s)" in printed
    _, *training = table_rows(printed, "Training runs")
    by_best = sorted(TRAINING, key=lambda name: -TRAINING[name][1]["best_val_accuracy"])
    assert [row[0] for row in training] == [logged.training[name][:8] for name in by_best]
    assert [row[1] for row in training] == by_best
    assert "0.3187" in training[-1] and "0.318749999" not in printed  # rounded to 4 decimals
    assert "outside the sweep" not in printed and "another sweep" not in printed
    _, [ensemble_id, ensemble_name, *ensemble_values] = table_rows(printed, "Ensembles")
    assert (ensemble_id, ensemble_name) == (logged.ensemble[:8], "ensemble mean of 3")
    assert "0.8889" in ensemble_values  # its test_macro_f1
    for header in (printed.split("Training runs\n\n")[1], printed.split("Ensembles\n\n")[1]):
        assert "test_macro_f1" in header.splitlines()[0]


def test_a_loss_sorts_lowest_first_and_the_experiment_is_named_without_a_sweep(logged, capsys):
    assert report.main(["--metric", "val_loss", "--tracking-uri", logged.uri]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "Results: experiment simpsons, all runs"
    _, *training = table_rows(printed, "Training runs")
    assert training[0][1] == "outside the sweep"  # the lowest val_loss
    assert "sorted by val_loss (lowest first)" in printed
    assert "ensemble of another sweep" in printed


def test_output_writes_markdown_csvs_with_short_ids_and_a_chart(logged, tmp_path, capsys):
    assert report.main(["--sweep", logged.sweep, "--output", str(tmp_path), "--tracking-uri", logged.uri]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith(f'# Results: experiment simpsons, sweep "{logged.sweep_name}" ({logged.sweep[:8]})\n')
    for headers in [line for line in markdown.splitlines() if line.startswith("| id |")]:
        assert "| test_macro_f1 |" in headers
    with (tmp_path / "results.csv").open() as file:
        training = list(csv.DictReader(file))
    assert {row["id"] for row in training} == {run_id[:8] for run_id in logged.training.values()}
    assert {row["test_macro_f1"] for row in training} == {"0.1235"}
    with (tmp_path / "ensembles.csv").open() as file:
        [ensemble] = list(csv.DictReader(file))
    assert (ensemble["id"], ensemble["test_macro_f1"]) == (logged.ensemble[:8], "0.8889")
    assert Image.open(tmp_path / "results.png").format == "PNG"


def test_the_chart_is_titled_sorted_by_what_it_plots_and_has_a_legend_for_the_ensemble(logged):
    client = MlflowClient(logged.uri)
    training = [client.get_run(run_id) for run_id in logged.training.values()]
    ensemble = client.get_run(logged.ensemble)
    scope = report.Scope("simpsons", logged.sweep, logged.sweep_name)
    figure = report.chart(training, [ensemble], scope)
    axes = figure.axes[0]
    plotted = [round(bar.get_width(), 4) for bar in axes.patches]
    assert plotted == [0.95, 0.9, 0.8, 0.7]  # test accuracy, best at the top, the ensemble among them
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels[1] == f"ensemble mean of 3 ({logged.ensemble[:8]})"
    assert axes.patches[1].get_facecolor() != axes.patches[0].get_facecolor()
    assert figure.get_suptitle() == f"Test accuracy by run, best first\n{scope.describe()}"
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["training run", "ensemble"]

    figure = report.chart([training[0], client.get_run(logged.outside)], [], report.Scope("simpsons"))
    assert figure.axes[0].get_xlabel() == "val accuracy"  # one metric for every bar, never a mix
    assert [round(bar.get_width(), 4) for bar in figure.axes[0].patches] == [0.6, 0.25]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["training run"]


def test_a_bad_sweep_is_one_line_and_exit_2(logged, capsys):
    assert report.main(["--sweep", "not-a-run", "--tracking-uri", logged.uri]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: sweep='not-a-run' is not a run id")


def test_help_explains_every_option_without_importing_tensorflow_or_mlflow():
    imported, printed = help_imports("simpsons.report")
    assert {"simpsons.config", "simpsons.tracking.schema"} <= imported  # the log covers the help path
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "mlflow", "matplotlib")}
    options = [action for action in report.parser()._actions if action.option_strings]
    assert all(len(action.help) > 20 for action in options if action.dest != "help")
    for action in options:
        assert action.option_strings[-1] in printed
    for words in ("what to print: table", "best first", "results.png", "examples:"):
        assert words in " ".join(printed.split())  # argparse wraps lines


def test_report_lists_the_sweep_sorted_by_the_metric_with_its_ensembles(store, tmp_path, capsys):
    ensemble(ensemble_config(store, f"sweep={store.sweep}", "method=greedy"))
    capsys.readouterr()
    status = report.main(
        ["--sweep", store.sweep, "--format", "markdown", "--output", str(tmp_path), "--tracking-uri", store.uri]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (tmp_path / "results.md").read_text().strip()
    training, ensembles = printed.split("## Ensembles")
    rows = [line for line in training.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert len(rows) == 4
    best = [float(row.split("|")[11]) for row in rows]
    assert best == sorted(best, reverse=True)
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(run_id[:8] for run_id in store.children)
    assert "greedy" in ensembles
    assert Image.open(tmp_path / "results.png").format == "PNG"
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("id,run,backbone,image_size,dropout,batch_size,epochs,optimizer,lr,val_accuracy")
