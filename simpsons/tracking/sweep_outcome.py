"""A sweep's outcome, read from its jobs' runs: logged on its parent run and shown in the terminal.

Read from the store, not from the launcher's return values, so that it is the same under every
launcher (jobs in this process, in loky workers, on Slurm nodes or Ray workers), after a job was
killed -9, and when a job reused an earlier run (a REUSED run is FINISHED, with the metrics of
the run it stands for). No TensorFlow here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from simpsons.commands import command, mlflow_command
from simpsons.config import default_tracking_uri
from simpsons.tracking import reader, schema
from simpsons.tracking.store import redact_uri

METRIC = "best_val_accuracy"  # what the jobs are ranked by: the ensemble's default too
COLUMNS = (METRIC, "val_macro_f1", "test_accuracy", "test_macro_f1")  # the description's table
TERMINAL_COLUMNS = COLUMNS[:3]  # the terminal's, narrower
DECIMALS = 4
OUTCOME_HEADING = "**Outcome:**"  # where the outcome starts in the parent's description
DEFAULT_EXPERIMENT = "simpsons"  # conf/tracking/default.yaml's: the next commands name any other


@dataclass(frozen=True)
class Job:
    run_id: str
    name: str
    status: str
    reused_run_id: str | None  # the earlier run this job reused, which holds its model
    metrics: dict[str, float]
    pruned: bool = False  # a search's trial its pruner stopped early (FINISHED, on fewer epochs)


@dataclass(frozen=True)
class Outcome:
    parent_run_id: str
    parent_name: str
    jobs: list[Job]  # best first; jobs without the metric (failed, killed) last
    experiment: str = DEFAULT_EXPERIMENT  # the sweep's experiment's name

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.status == "FINISHED"]

    @property
    def best(self) -> Job | None:
        ranked = [job for job in self.finished if METRIC in job.metrics]
        return ranked[0] if ranked else None

    def metrics(self) -> dict[str, float]:
        """What the parent run logs: its best job's metric and how many jobs finished, failed (raised),
        were killed (a signal, scancel, a process killed -9) and reused."""
        counts = {
            "jobs_finished": len(self.finished),
            "jobs_failed": sum(job.status == "FAILED" for job in self.jobs),
            "jobs_killed": sum(job.status == "KILLED" for job in self.jobs),
            "jobs_reused": sum(job.reused_run_id is not None for job in self.jobs),
        }
        best = self.best
        return counts | ({METRIC: best.metrics[METRIC]} if best else {})


def outcome(client: MlflowClient, parent: Run) -> Outcome:
    """The jobs of the sweep whose parent run is `parent`, best first (its ensembles, nested under it
    too, are no jobs)."""
    children = [
        run
        for run in client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{schema.PARENT_RUN}` = '{parent.info.run_id}'",
            max_results=reader.SEARCH_LIMIT,
        )
        if reader.run_type(run) != schema.ENSEMBLE
    ]
    jobs = [
        Job(
            run.info.run_id,
            run.info.run_name,
            run.info.status,
            run.data.tags.get(schema.REUSED_RUN) if run.data.tags.get(schema.RUN_TYPE) == schema.REUSED else None,
            dict(run.data.metrics),
            schema.PRUNED in run.data.tags,
        )
        for run in children
    ]
    jobs.sort(key=lambda job: (job.status != "FINISHED", -job.metrics.get(METRIC, float("-inf")), job.name))
    experiment = client.get_experiment(parent.info.experiment_id).name
    return Outcome(parent.info.run_id, parent.info.run_name, jobs, experiment)


def record(client: MlflowClient, parent: Run, uri: str, result: Outcome | None = None) -> Outcome:
    """Log the sweep's outcome on its parent run: metrics, the best run's id, and a description
    that adds the jobs' table and the next commands to the one the parent was created with.
    `result`: the outcome already read, so that what is logged is what the caller decided on."""
    result = outcome(client, parent) if result is None else result
    now = int(time.time() * 1000)
    plan = parent.data.tags.get(schema.NOTE, "").split(OUTCOME_HEADING)[0].rstrip()
    tags = [RunTag(schema.NOTE, f"{plan}\n\n{markdown(result, uri)}".strip())]
    if result.best is not None:
        tags.append(RunTag(schema.BEST_RUN, _model_run(result.best)))
    metrics = [Metric(key, value, now, 0) for key, value in result.metrics().items()]
    client.log_batch(parent.info.run_id, metrics=metrics, tags=tags)
    return result


def _model_run(job: Job) -> str:
    """The run that holds a job's model and artifacts: the earlier run, for a job that reused one."""
    return job.reused_run_id or job.run_id


def _value(job: Job, key: str) -> str:
    return f"{job.metrics[key]:.{DECIMALS}f}" if key in job.metrics else "-"


def _columns(result: Outcome, wanted: tuple[str, ...]) -> list[str]:
    """The metrics some job has, of `wanted`: no test columns without a test set."""
    return [key for key in wanted if any(key in job.metrics for job in result.jobs)] or [METRIC]


def _status(job: Job) -> str:
    if job.reused_run_id:
        return "reused"
    return "pruned" if job.pruned and job.status == "FINISHED" else job.status.lower()


def _finished(result: Outcome) -> str:
    """How many jobs finished, and of them how many were reused or pruned: "16 finished (5 pruned)"."""
    metrics, pruned = result.metrics(), sum(job.pruned for job in result.finished)
    parts = [f"{metrics['jobs_reused']} reused"] * bool(metrics["jobs_reused"]) + [f"{pruned} pruned"] * bool(pruned)
    return f"{metrics['jobs_finished']} finished" + (f" ({', '.join(parts)})" if parts else "")


def table(result: Outcome) -> str:
    """The jobs best first, their metrics rounded, in aligned plain-text columns."""
    columns = _columns(result, TERMINAL_COLUMNS)
    headers = ["run", *columns, "status", "run id"]
    rows = [[job.name, *(_value(job, key) for key in columns), _status(job), job.run_id[:8]] for job in result.jobs]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    numeric = range(1, 1 + len(columns))

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        aligned = [cell.rjust(width) if i in numeric else cell.ljust(width) for i, (cell, width) in pairs]
        return "  " + "  ".join(aligned).rstrip()

    return "\n".join(line(cells) for cells in [headers, *rows])


def next_commands(result: Outcome, uri: str) -> list[str]:
    """What to run next, with the interpreter (or console script) this command ran with: an ensemble
    of this sweep, its report, and the UI on this store. The store and experiment are named unless
    they are the defaults."""
    default_store = uri == default_tracking_uri()
    other_experiment = result.experiment != DEFAULT_EXPERIMENT
    tracking = "" if default_store else f" tracking.uri={redact_uri(uri)}"
    tracking += f" tracking.experiment={result.experiment}" if other_experiment else ""
    flags = f" --experiment {result.experiment}" if other_experiment else ""
    flags += "" if default_store else f" --tracking-uri {redact_uri(uri)}"
    ui = (
        f"open {redact_uri(uri)} in a browser"
        if uri.startswith(("http://", "https://"))
        else f"{mlflow_command()} ui --backend-store-uri {redact_uri(uri)}"
    )
    return [
        f"{command('ensemble')} sweep={result.parent_run_id}{tracking}",
        f"{command('report')} --sweep {result.parent_run_id}{flags}",
        ui,
    ]


def summary(result: Outcome, uri: str) -> str:
    """What the terminal shows at the end of a sweep."""
    metrics = result.metrics()
    counts = f"{len(result.jobs)} jobs: {_finished(result)}, {metrics['jobs_failed']} failed"
    counts += f", {metrics['jobs_killed']} killed" if metrics["jobs_killed"] else ""
    lines = [f"sweep {result.parent_name!r} (run {result.parent_run_id}): {counts}", table(result)]
    best = result.best
    if best is not None:
        held = f"; its model is in run {best.reused_run_id}" if best.reused_run_id else ""
        lines.append(f"best: {best.name}, run {best.run_id} ({METRIC} {_value(best, METRIC)}{held})")
    lines += ["next:", *(f"  {command}" for command in next_commands(result, uri))]
    return "\n".join(lines)


def markdown(result: Outcome, uri: str) -> str:
    """The outcome as the parent's description (Markdown, which the MLflow UI renders)."""
    columns = _columns(result, COLUMNS)
    rows = [
        f"| {job.name} | {' | '.join(_value(job, key) for key in columns)} | {_status(job)} | {job.run_id} |"
        for job in result.jobs
    ]
    header = f"| run | {' | '.join(columns)} | status | run id |"
    rule = "|" + "---|" * (len(columns) + 3)
    metrics = result.metrics()
    lines = [
        f"{OUTCOME_HEADING} {_finished(result)}, {metrics['jobs_failed']} failed, {metrics['jobs_killed']} killed.",
        "",
        header,
        rule,
        *rows,
        "",
        "Next: " + "; ".join(f"`{command}`" for command in next_commands(result, uri)),
    ]
    return "\n".join(lines)
