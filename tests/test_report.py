"""`python -m simpsons.report`: its tables, files, chart and --help, on runs in a private SQLite logged.

The runs are written with MlflowClient, with the tags and metrics a training run and an ensemble
log (simpsons.tracking.schema), so that every value, and so the expected order, is known exactly.
tests/test_ensemble.py reports on runs that really trained.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import numpy as np
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
        # The latest val_accuracy (the last epoch's) is not what report shows: the kept epoch's best_*.
        metrics = metrics | {"val_accuracy": 0.25, "val_loss": 9.0, "best_val_loss": 2.0 - metrics["best_val_accuracy"]}
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
    finish(client, outside, {}, {"best_val_accuracy": 0.99, "val_accuracy": 0.6, "best_val_loss": 0.5, "val_loss": 3})
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
    assert report.main(["--metric", "best_val_loss", "--tracking-uri", logged.uri]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "Results: experiment simpsons, all runs"
    _, *training = table_rows(printed, "Training runs")
    assert training[0][1] == "outside the sweep"  # the lowest best_val_loss
    assert "sorted by best_val_loss (lowest first)" in printed
    assert "ensemble of another sweep" in printed


def test_output_writes_markdown_csvs_with_short_ids_and_a_chart(logged, tmp_path, capsys):
    assert report.main(["--sweep", logged.sweep, "--output", str(tmp_path), "--tracking-uri", logged.uri]) == 0
    written = ["results.md", "results.csv", "ensembles.csv", "results.png"]
    assert capsys.readouterr().err.splitlines()[-1] == "wrote " + ", ".join(str(tmp_path / name) for name in written)
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
    assert figure.axes[0].get_xlabel() == "best val accuracy"  # one metric for every bar, never a mix
    # the kept epoch's (best_val_accuracy), not the last epoch's val_accuracy (0.6, 0.25)
    assert [round(bar.get_width(), 4) for bar in figure.axes[0].patches] == [0.99, 0.9]
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
    header = "id,run,backbone,image_size,dropout,batch_size,epochs,optimizer,lr,best_epoch,best_val_accuracy,"
    header += "best_val_loss"  # the kept epoch's
    assert csv_rows[0].startswith(header)


def terminal_rows(printed: str) -> list[list[str]]:
    """The --group-by terminal table (after its heading and summary lines): header, then rows; cells
    split on runs of two or more spaces."""
    header, _, *body = printed.split("\n\n", 1)[1].strip().splitlines()
    return [[cell.strip() for cell in re.split(r"\s{2,}", line)] for line in [header, *body]]


def grouped_csv(printed: str) -> dict[str, dict[str, str]]:
    """The --group-by csv, by the first column (the group)."""
    return {row[next(iter(row))]: row for row in csv.DictReader(io.StringIO(printed))}


def test_group_by_gives_each_value_its_runs_mean_and_sample_std_of_real_runs(store, tmp_path, capsys):
    """Four real runs of the fixture's sweep by backbone (3 mobilenet, 1 mobilenetv2), and its greedy
    ensembles as one row; expected values from the store's own metrics, std with ddof=1."""
    for top_n in (2, 4):
        ensemble(ensemble_config(store, f"sweep={store.sweep}", "method=greedy", f"top_n={top_n}", "register=false"))
    capsys.readouterr()
    args = ["--sweep", store.sweep, "--group-by", "backbone.name", "--tracking-uri", store.uri]
    assert report.main([*args, "--format", "csv"]) == 0
    found = grouped_csv(capsys.readouterr().out)

    client = MlflowClient(store.uri)
    children = [client.get_run(run_id) for run_id in store.children]
    greedy = [
        run
        for run in client.search_runs(
            [children[0].info.experiment_id],
            f"tags.`{schema.ENSEMBLE_SWEEP}` = '{store.sweep}' AND params.method = 'greedy'",
        )
        if run.info.status == "FINISHED"
    ]
    expected = {
        backbone: [run for run in children if run.data.params["backbone.name"] == backbone]
        for backbone in ("mobilenet", "mobilenetv2")
    } | {"ensemble greedy": greedy}
    assert [len(runs) for runs in expected.values()] == [3, 1, len(greedy)] and len(greedy) >= 2
    assert set(expected) <= set(found)
    for label, runs in expected.items():
        row = found[label]
        assert row["runs"] == str(len(runs))
        for metric in report.GROUP_METRICS:
            values = np.array([run.data.metrics[metric] for run in runs])
            assert float(row[f"{metric}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
            assert row[f"{metric}_n"] == str(len(values))
            if len(values) > 1:
                assert float(row[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
            else:
                assert row[f"{metric}_std"] == ""  # no sample std of one run

    assert report.main([*args, "--output", str(tmp_path)]) == 0
    rows = terminal_rows(capsys.readouterr().out)
    mobilenet = np.array([run.data.metrics["test_accuracy"] for run in expected["mobilenet"]])
    assert rows[0] == ["backbone.name", "runs", "test_accuracy (mean ± std)"] + rows[0][3:]
    by_label = {row[0]: row for row in rows[1:]}
    assert by_label["mobilenet"][1:3] == ["3", f"{mobilenet.mean():.4f} ± {mobilenet.std(ddof=1):.4f}"]
    single = expected["mobilenetv2"][0].data.metrics["test_accuracy"]
    assert by_label["mobilenetv2"][1:3] == ["1", f"{single:.4f} (n=1, no std)"]
    labels = [row[0] for row in rows[1:]]
    assert labels[:2] == sorted(  # training groups first, by mean best_val_accuracy, best first
        ["mobilenet", "mobilenetv2"],
        key=lambda b: -np.mean([run.data.metrics["best_val_accuracy"] for run in expected[b]]),
    )
    assert "ensemble greedy" in labels[2:]
    assert (tmp_path / "by-backbone.name.md").read_text().startswith("# Results by backbone.name: experiment")
    assert grouped_csv((tmp_path / "by-backbone.name.csv").read_text()).keys() == found.keys()
    assert (tmp_path / "results.csv").is_file()  # the per-run files as without --group-by


def test_group_by_in_markdown_puts_runs_without_the_param_in_their_own_group(logged, capsys):
    """The whole experiment by backbone: the sweep's three runs, and the run outside it, which logged
    neither a backbone nor a test set; ensembles by their method, last."""
    assert report.main(["--group-by", "backbone.name", "--format", "markdown", "--tracking-uri", logged.uri]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "# Results by backbone.name: experiment simpsons, all runs\n\n4 training run(s) and 2 ensemble(s) in "
        "4 group(s), sorted by mean best_val_accuracy (highest first); mean ± sample standard deviation (ddof=1)"
    )
    header, *body = [[c.strip() for c in line.split("|")[1:-1]] for line in printed.splitlines() if line[:2] == "| "]
    assert header == ["backbone.name", "runs", *(f"{m} (mean ± std)" for m in report.GROUP_METRICS)]
    tests = np.array([metrics["test_accuracy"] for _, metrics in TRAINING.values()])
    best = np.array([metrics["best_val_accuracy"] for _, metrics in TRAINING.values()])
    assert body == [
        [report.NOT_SET, "1", "", "", "0.9900 (n=1, no std)"],  # the best mean best_val_accuracy first
        [
            "resnet50v2",
            "3",
            f"{tests.mean():.4f} ± {tests.std(ddof=1):.4f}",
            "0.1235 ± 0.0000",
            f"{best.mean():.4f} ± {best.std(ddof=1):.4f}",
        ],
        ["ensemble (not set)", "1", "0.1000 (n=1, no std)", "", ""],  # neither logged best_val_accuracy
        ["ensemble mean", "1", "0.9000 (n=1, no std)", "0.8889 (n=1, no std)", ""],
    ]


def test_group_by_says_n_of_a_metric_that_some_runs_of_a_group_lack(tmp_path, capsys):
    uri = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    experiment = client.create_experiment("simpsons")
    scores = [(0.5, 0.4), (0.6, None), (0.7, 0.45)]  # (best_val_accuracy, test_accuracy); one without a test set
    for i, (best, test) in enumerate(scores):
        tags = {schema.RUN_TYPE: schema.TRAIN, schema.CONFIG_HASH: f"config-{i}"}
        run_id = client.create_run(experiment, run_name=f"run {i}", tags=tags).info.run_id
        metrics = {"best_val_accuracy": best} | ({"test_accuracy": test} if test is not None else {})
        finish(client, run_id, {"variant": "tta", "seed": str(i)}, metrics)

    assert report.main(["--group-by", "variant", "--tracking-uri", uri]) == 0
    [header, row] = terminal_rows(capsys.readouterr().out)
    tests, best = np.array([0.4, 0.45]), np.array([0.5, 0.6, 0.7])
    assert row == ["tta", "3", f"{tests.mean():.4f} ± {tests.std(ddof=1):.4f} (n=2)", f"{best.mean():.4f} ± 0.1000"]
    assert header[0] == "variant"

    assert report.main(["--group-by", "variant", "--format", "csv", "--tracking-uri", uri]) == 0
    [found] = grouped_csv(capsys.readouterr().out).values()
    assert (found["test_accuracy_n"], found["test_macro_f1_n"], found["test_macro_f1_mean"]) == ("2", "0", "")


def test_group_by_a_param_no_run_logged_is_one_line_and_exit_2(logged, capsys):
    args = ["--sweep", logged.sweep, "--group-by", "optimizer", "--tracking-uri", logged.uri]
    assert report.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: --group-by 'optimizer' is not a param of these training runs; use one of the params that differ "
        "between them: optimizer.name"
    ]
