"""A sweep's outcome, read from its jobs' runs in a real store: logged on the parent, shown in the terminal."""

from __future__ import annotations

import psutil
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from simpsons.commands import command, mlflow_command
from simpsons.config import default_tracking_uri
from simpsons.tracking import lifecycle, schema, sweep_outcome
from simpsons.tracking.store import configure, ensure_experiment

PLAN = "Sweep of dropout: 4 jobs."


def sweep_with_jobs(uri: str) -> tuple[MlflowClient, str, dict[str, str]]:
    """A parent run and its jobs: two trained, one reused (FINISHED, the original's metrics), one failed."""
    client = MlflowClient(uri)
    experiment = ensure_experiment(uri, "sweeps")
    parent = client.create_run(
        experiment, run_name="2026-11-28 12:40 dropout (4)", tags={schema.RUN_TYPE: schema.SWEEP, schema.NOTE: PLAN}
    ).info.run_id
    original = client.create_run(experiment, run_name="earlier", tags={schema.RUN_TYPE: schema.TRAIN})
    client.log_batch(original.info.run_id, metrics=[Metric("best_val_accuracy", 0.91234567, 0, 0)])
    client.set_terminated(original.info.run_id, "FINISHED")
    jobs = {
        "drop=0.1": (schema.TRAIN, "FINISHED", {"best_val_accuracy": 0.8, "val_macro_f1": 0.75, "test_accuracy": 0.7}),
        "drop=0.2": (schema.TRAIN, "FINISHED", {"best_val_accuracy": 0.87654321, "val_macro_f1": 0.8}),
        "drop=0.3": (schema.REUSED, "FINISHED", {"best_val_accuracy": 0.91234567}),
        "drop=0.4": (schema.TRAIN, "FAILED", {}),
    }
    ids = {}
    for name, (kind, status, metrics) in jobs.items():
        tags = {schema.RUN_TYPE: kind, schema.PARENT_RUN: parent}
        if kind == schema.REUSED:
            tags[schema.REUSED_RUN] = original.info.run_id
        ids[name] = run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        client.log_batch(run_id, metrics=[Metric(key, value, 0, 0) for key, value in metrics.items()])
        client.set_terminated(run_id, status)
    return client, parent, ids | {"earlier": original.info.run_id}


def test_the_parent_logs_its_best_jobs_metric_the_counts_the_best_run_and_a_description(tracking_uri):
    client, parent, ids = sweep_with_jobs(configure(tracking_uri))

    sweep_outcome.record(client, client.get_run(parent), tracking_uri)
    sweep_outcome.record(client, client.get_run(parent), tracking_uri)  # again, as a second ending would: no doubling

    run = client.get_run(parent)
    assert run.data.metrics == {
        "best_val_accuracy": 0.91234567,
        "jobs_finished": 3,
        "jobs_failed": 1,
        "jobs_killed": 0,
        "jobs_reused": 1,
    }
    assert run.data.tags[schema.BEST_RUN] == ids["earlier"]  # the run that holds the reused job's model
    note = run.data.tags[schema.NOTE]
    assert note.startswith(PLAN) and note.count("**Outcome:**") == 1
    assert "| drop=0.3 | 0.9123 | - | - | reused |" in note and f"`{command('ensemble')} sweep={parent}" in note


def test_the_summary_lists_the_jobs_best_first_rounded_with_the_best_run_and_the_next_commands(tracking_uri):
    client, parent, ids = sweep_with_jobs(configure(tracking_uri))

    text = sweep_outcome.summary(sweep_outcome.outcome(client, client.get_run(parent)), tracking_uri)

    lines = text.splitlines()
    assert lines[0] == f"sweep '2026-11-28 12:40 dropout (4)' (run {parent}): 4 jobs: 3 finished (1 reused), 1 failed"
    assert lines[1].split() == ["run", "best_val_accuracy", "val_macro_f1", "test_accuracy", "status", "run", "id"]
    assert [line.split() for line in lines[2:6]] == [
        ["drop=0.3", "0.9123", "-", "-", "reused", ids["drop=0.3"][:8]],
        ["drop=0.2", "0.8765", "0.8000", "-", "finished", ids["drop=0.2"][:8]],
        ["drop=0.1", "0.8000", "0.7500", "0.7000", "finished", ids["drop=0.1"][:8]],
        ["drop=0.4", "-", "-", "-", "failed", ids["drop=0.4"][:8]],
    ]
    assert lines[6] == (
        f"best: drop=0.3, run {ids['drop=0.3']} (best_val_accuracy 0.9123; its model is in run {ids['earlier']})"
    )
    assert lines[7:] == [
        "next:",
        f"  {command('ensemble')} sweep={parent} tracking.uri={tracking_uri} tracking.experiment=sweeps",
        f"  {command('report')} --sweep {parent} --experiment sweeps --tracking-uri {tracking_uri}",
        f"  {mlflow_command()} ui --backend-store-uri {tracking_uri}",
    ]


def test_killed_jobs_are_counted_apart_from_failed_ones(tracking_uri):
    """A job ended by a signal or scancel, or whose process was killed -9, did not fail: it was killed."""
    client, parent, ids = sweep_with_jobs(configure(tracking_uri))
    client.set_terminated(ids["drop=0.2"], "KILLED")

    outcome = sweep_outcome.outcome(client, client.get_run(parent))
    assert (outcome.metrics()["jobs_failed"], outcome.metrics()["jobs_killed"]) == (1, 1)
    first_line = sweep_outcome.summary(outcome, tracking_uri).splitlines()[0]
    assert first_line.endswith("4 jobs: 2 finished (1 reused), 1 failed, 1 killed")
    assert "**Outcome:** 2 finished (1 reused), 1 failed, 1 killed." in sweep_outcome.markdown(outcome, tracking_uri)


def test_the_next_commands_name_no_store_for_the_default_one_and_hide_a_password():
    outcome = sweep_outcome.Outcome("abc", "a sweep", [])
    assert sweep_outcome.next_commands(outcome, default_tracking_uri())[:2] == [
        f"{command('ensemble')} sweep=abc",
        f"{command('report')} --sweep abc",
    ]
    found = sweep_outcome.next_commands(outcome, "postgresql://me:secret@db/mlflow")
    assert "secret" not in " ".join(found)
    assert found[2] == f"{mlflow_command()} ui --backend-store-uri postgresql://me:***@db/mlflow"
    assert sweep_outcome.next_commands(outcome, "http://tracking:5000")[2] == "open http://tracking:5000 in a browser"


def test_the_next_commands_name_an_experiment_other_than_the_default():
    demo = sweep_outcome.Outcome("abc", "a sweep", [], "simpsons-demo")
    assert sweep_outcome.next_commands(demo, default_tracking_uri())[:2] == [
        f"{command('ensemble')} sweep=abc tracking.experiment=simpsons-demo",
        f"{command('report')} --sweep abc --experiment simpsons-demo",
    ]


def test_a_sweep_whose_driver_was_killed_gets_its_outcome_when_a_later_command_ends_it(tracking_uri):
    client, parent, _ = sweep_with_jobs(configure(tracking_uri))
    gone = psutil.Popen(["true"])
    started = gone.create_time()
    gone.wait()
    owner = {schema.HOST: lifecycle.process_tags()[schema.HOST], schema.PID: str(gone.pid)}
    for key, value in (owner | {schema.PROCESS_START: str(started)}).items():  # RUNNING, its driver killed -9
        client.set_tag(parent, key, value)

    [ended] = lifecycle.end_dead_runs(client, [client.get_run(parent).info.experiment_id])

    run = client.get_run(parent)
    assert ended.info.run_id == parent and run.info.status == "KILLED"
    assert run.data.metrics["jobs_finished"] == 3 and run.data.metrics["jobs_failed"] == 1


def dead_driver_tags() -> dict[str, str]:
    """A process of this host that has exited: its pid and start time, as a run records its owner."""
    gone = psutil.Popen(["true"])
    started = gone.create_time()
    gone.wait()
    return {
        schema.HOST: lifecycle.process_tags()[schema.HOST],
        schema.PID: str(gone.pid),
        schema.PROCESS_START: str(started),
    }


@pytest.mark.parametrize("last_job", ["FINISHED", "KILLED"])
def test_a_sweep_whose_driver_was_killed_waits_for_its_running_jobs_and_the_last_one_ends_it(tracking_uri, last_job):
    """Slurm jobs run on when their driver is killed -9: the next command leaves their sweep RUNNING
    while one of them lives, and the last job to end ends the sweep, FINISHED if all its jobs were."""
    uri = configure(tracking_uri)
    client = MlflowClient(uri)
    experiment = ensure_experiment(uri, "sweeps")
    parent = client.create_run(
        experiment, run_name="sweep", tags={schema.RUN_TYPE: schema.SWEEP, **dead_driver_tags()}
    ).info.run_id
    client.log_param(parent, "num_jobs", "2")
    done = client.create_run(experiment, run_name="a", tags={schema.RUN_TYPE: schema.TRAIN, schema.PARENT_RUN: parent})
    client.set_terminated(done.info.run_id, "FINISHED")
    alive = lifecycle.process_tags()  # this test's process: the job that still trains
    job = client.create_run(
        experiment, run_name="b", tags={schema.RUN_TYPE: schema.TRAIN, schema.PARENT_RUN: parent, **alive}
    ).info.run_id

    assert lifecycle.end_dead_runs(client, [experiment]) == []
    lifecycle.end_orphaned_sweep(client, parent)
    assert client.get_run(parent).info.status == "RUNNING"  # its job runs on

    client.set_terminated(job, last_job)  # the job's run ends (tracked_run then calls end_orphaned_sweep)
    lifecycle.end_orphaned_sweep(client, parent)

    run = client.get_run(parent)
    assert run.info.status == last_job
    assert run.data.tags[schema.ENDED_BY].startswith("its process ") and run.data.tags[schema.ENDED_BY].endswith(
        " is gone"
    )
    assert run.data.metrics["jobs_finished"] == (2 if last_job == "FINISHED" else 1)
    assert lifecycle.end_dead_runs(client, [experiment]) == []  # nothing left to end


def test_pruned_trials_are_marked_in_the_table_and_counted_among_the_finished(tracking_uri):
    """A search's trial that its pruner stopped ends FINISHED (it logs as any run) but says so."""
    client, parent, ids = sweep_with_jobs(configure(tracking_uri))
    client.set_tag(ids["drop=0.1"], schema.PRUNED, "2")

    outcome = sweep_outcome.outcome(client, client.get_run(parent))
    lines = sweep_outcome.summary(outcome, tracking_uri).splitlines()
    assert lines[0].endswith("4 jobs: 3 finished (1 reused, 1 pruned), 1 failed")
    assert lines[4].split() == ["drop=0.1", "0.8000", "0.7500", "0.7000", "pruned", ids["drop=0.1"][:8]]
    note = sweep_outcome.markdown(outcome, tracking_uri)
    assert "**Outcome:** 3 finished (1 reused, 1 pruned), 1 failed, 0 killed." in note
    assert f"| drop=0.1 | 0.8000 | 0.7500 | 0.7000 | pruned | {ids['drop=0.1']} |" in note
