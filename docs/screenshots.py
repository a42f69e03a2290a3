"""Screenshots of the MLflow UI for the README: docs/runs-table.png, models.png, run-metrics.png,
ensemble.png and registry.png.

    apt-get install -y chromium                   # Debian's Chromium, headless
    .venv/bin/pip install -e ".[screenshots]"     # playwright: its driver only, no browser download
    .venv/bin/python docs/screenshots.py [--port 5121] [--out docs] [--workdir DIR]

Runs the README's demo sweep (python -m simpsons.train -m experiment=demo) and an ensemble of it
into a new, throwaway store, starts `mlflow ui` on 127.0.0.1 over that store, and photographs
with headless Chromium (a) the experiment's runs table, in the UI's "Model training" view, with
the sweep expanded and its metrics shown, (b) the experiment's Models tab, (c) the best training
run's Model metrics tab (its learning curves), (d) the ensemble's run page (its members table and
metrics) and (e) the registered model `simpsons-demo` with its champion alias. Each page is
checked for what it must show before it is saved. Not a test: it takes about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
DEMO_EXPERIMENT = "simpsons-demo"  # conf/experiment/demo.yaml: the demo runs in its own experiment
CHROMIUM_FLAGS = [  # headless in a container: no sandbox, no GPU, nothing fetched from outside
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 600}
# The headline metrics, the kept epoch's (a curve's column, e.g. epoch/val_accuracy, is its last epoch's value)
METRIC_COLUMNS = ["best_val_accuracy", "best_val_loss", "test_accuracy", "test_macro_f1"]
RUN_NAME = "attributes.`Run Name`"  # the runs grid's column ids (MLflow 3.17.2)
UI_DEADLINE = 180  # seconds for `mlflow ui` to answer, and for a page to show its runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5121, help="port of the `mlflow ui` on 127.0.0.1 (5121)")
    parser.add_argument("--out", type=Path, default=PROJECT / "docs", help="folder for the PNGs (docs/)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the store and logs here, or reuse them (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is missing; apt-get install -y chromium", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="simpsons-screenshots-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        if not (workdir / "mlflow.db").exists():  # a --workdir of an earlier call has its demo already
            run_demo(uri, workdir)
        experiment, sweep = sweep_ids(uri)
        with mlflow_ui(uri, args.port, workdir) as base:
            shoot(base, experiment, sweep, uri, args.out, workdir)
            shoot_pages(base, experiment, sweep, uri, args.out, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_demo(uri: str, workdir: Path) -> None:
    """The README's first command and an ensemble of its sweep, into the store at `uri`."""
    for module, overrides in (
        ("simpsons.train", ["-m", "experiment=demo"]),
        ("simpsons.ensemble", ["sweep=latest", f"tracking.experiment={DEMO_EXPERIMENT}"]),
    ):
        command = [sys.executable, "-m", module, *overrides, f"tracking.uri={uri}"]
        print("$", " ".join(command[1:]), flush=True)
        with (workdir / f"{module}.log").open("w") as log:
            subprocess.run(command, cwd=workdir, env=environment(), stdout=log, stderr=subprocess.STDOUT, check=True)


def environment() -> dict[str, str]:
    """This environment without a tracking URI of its own; the venv's bin first (mlflow, uvicorn)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def sweep_ids(uri: str) -> tuple[str, str]:
    """The experiment's id and its sweep's parent run id."""
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(PROJECT))
    from simpsons.tracking import schema

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(DEMO_EXPERIMENT).experiment_id
    [sweep] = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.SWEEP}'")
    return experiment, sweep.info.run_id


@contextmanager
def mlflow_ui(uri: str, port: int, workdir: Path):
    """`mlflow ui` over the store on 127.0.0.1:port until the block ends; yields its base URL."""
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with (workdir / "mlflow-ui.log").open("w") as log:
        server = subprocess.Popen(
            command, cwd=workdir, env=environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_DEADLINE
        while not answers(f"{base}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer at {base}; see {workdir / 'mlflow-ui.log'}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: uvicorn's workers too
        server.wait(timeout=60)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def shoot(base: str, experiment: str, sweep: str, uri: str, out: Path, workdir: Path) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(uri)
    runs = client.search_runs([experiment])
    children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep]
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(workdir / "chromium-profile"),  # a new, empty profile
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=VIEWPORT,
        )
        try:
            browser.add_init_script(ui_settings(experiment, sweep))
            page = browser.new_page()
            page.goto(f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning")
            for name in children:  # the sweep is expanded: every job's run is listed
                page.get_by_text(name, exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            save(page, out / "runs-table.png")

            page.get_by_role("link", name="Models", exact=True).first.click()
            page.get_by_text("Source run", exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            show_model_columns(page)
            widen(page, "source_run_id", 60)
            for name in children:  # every training run's model is listed
                page.get_by_text(name, exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            save(page, out / "models.png")
        finally:
            browser.close()


def shoot_pages(base: str, experiment: str, sweep: str, uri: str, out: Path, workdir: Path) -> None:
    """A run's curves, the ensemble's page and the registry's model, each checked before it is saved."""
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    from simpsons.tracking import schema

    client = MlflowClient(uri)
    best = client.get_run(client.get_run(sweep).data.tags[schema.BEST_RUN])
    [ensemble] = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.ENSEMBLE}'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(workdir / "chromium-profile-pages"),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={**VIEWPORT, "height": 1000},
        )
        try:
            browser.add_init_script(ui_settings(experiment, sweep))
            page = browser.new_page()
            runs = f"{base}/#/experiments/{experiment}/runs"
            page.set_viewport_size({**VIEWPORT, "height": 1400})  # the epoch/ curves, and the best_* below them
            page.goto(f"{runs}/{best.info.run_id}/model-metrics")
            for chart in ("accuracy", "log10_lr", "val_loss"):  # the epoch/ section's (the UI draws what is in view)
                page.get_by_text(chart, exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            page.wait_for_timeout(8000)  # each chart fetches its history
            save(page, out / "run-metrics.png")
            page.set_viewport_size({**VIEWPORT, "height": 1000})

            page.goto(f"{runs}/{ensemble.info.run_id}")
            page.get_by_text(ensemble.info.run_name, exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            page.get_by_text("best_val_accuracy", exact=True).first.wait_for(timeout=UI_DEADLINE * 1000)
            save(page, out / "ensemble.png")

            page.goto(f"{base}/#/models/{DEMO_EXPERIMENT}")
            page.get_by_text("@ champion").or_(page.get_by_text("champion")).first.wait_for(timeout=UI_DEADLINE * 1000)
            save(page, out / "registry.png")
        finally:
            browser.close()


def save(page, path: Path) -> None:
    """Let the grid lay out and fetch what it shows (the UI polls, so the network is never idle)."""
    page.wait_for_load_state("load")
    page.wait_for_timeout(4000)
    page.screenshot(path=path)
    print("wrote", path)


def show_model_columns(page) -> None:
    """In the Models tab's Columns menu: no params, and of the metrics only METRIC_COLUMNS; the
    attributes that tell what a model is (source run, registry, dataset) stay."""
    page.set_viewport_size({**VIEWPORT, "height": 2000})  # the unfolded menu is taller than the screenshot
    page.get_by_role("button", name="Columns").first.click()
    menu = page.locator("[role=menu]")
    unfold(menu, "Metrics")
    unfold(menu, "No dataset")  # the metrics logged without a dataset
    for title in ("Parameters", "Metrics", "Status", "Logged from"):
        check(menu, title, False)
    for metric in METRIC_COLUMNS:
        check(menu, metric, True)
    page.keyboard.press("Escape")
    page.set_viewport_size(VIEWPORT)
    for metric in METRIC_COLUMNS:
        page.locator(".ag-header-cell-text", has_text=metric).first.wait_for()


def tree_node(menu, title: str):
    node = menu.locator(f'[title="{title}"]').first
    node.wait_for()
    return node.locator("xpath=..")  # the title's wrapper sits beside the switcher and the checkbox


def unfold(menu, title: str) -> None:
    """Open a folded group of the Columns menu's tree (some stores show it folded, some open)."""
    switcher = tree_node(menu, title).locator("[class*='tree-switcher']").first
    if "switcher_close" in (switcher.get_attribute("class") or ""):
        switcher.click()


def check(menu, title: str, on: bool) -> None:
    """Set a Columns menu checkbox; a group's may be half-checked, which a click turns on first."""
    box = tree_node(menu, title).locator("[class*='tree-checkbox']").first
    for _ in range(3):
        classes = box.get_attribute("class") or ""
        if ("tree-checkbox-checked" in classes) == on and "indeterminate" not in classes:
            return
        box.click()
    raise RuntimeError(f"the Columns menu did not set {title!r} to {on}")


def widen(page, column: str, pixels: int) -> None:
    """Drag a grid column's right edge, as a user does to read long names (slowly: the grid
    starts a resize on a hovered handle and follows the pointer's moves)."""
    handle = page.locator(f'.ag-header-cell[col-id="{column}"] .ag-header-cell-resize').first
    handle.hover()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + pixels * step / 20, y)
        page.wait_for_timeout(30)
    page.mouse.up()


def ui_settings(experiment: str, sweep: str) -> str:
    """A script run before the UI's own: the Model training view, the assistant panel closed, and
    the runs table with the sweep expanded, wide run names, and the metrics' columns.

    These are the UI's own localStorage keys (MLflow 3.17.2); a user gets the same by clicking."""
    columns = [f"metrics.`{m}`" for m in METRIC_COLUMNS]
    order = ["0", RUN_NAME, "runDateAndNestInfo", "attributes.`Dataset`", "duration", "attributes.`Models`", *columns]
    state = {  # the UI's defaults, but for the columns, their widths and the expanded sweep
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Dataset`", "attributes.`Models`", *columns],
        "columnOrder": order,  # the grid applies widths only along an order
        "columnWidths": {RUN_NAME: 360, "attributes.`Dataset`": 150, **dict.fromkeys(columns, 125)},
        "runsExpanded": {sweep: True},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "autoRefreshEnabled": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    items = {
        "mlflow.workflowType_v1": json.dumps("machine_learning"),
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState': json.dumps(state),
    }
    return "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items())


if __name__ == "__main__":
    sys.exit(main())
