"""Reading runs back: each config counted once, REUSED runs standing for their originals."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from simpsons.tracking import lifecycle, reader, schema
from simpsons.tracking.store import configure, ensure_experiment


def make_run(client: MlflowClient, experiment: str, name: str, identity: str, status: str = "FINISHED") -> str:
    tags = {schema.RUN_TYPE: schema.TRAIN, schema.CONFIG_HASH: identity}
    run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    client.log_metric(run_id, "best_val_accuracy", 0.5)
    client.set_terminated(run_id, status)
    time.sleep(0.01)  # distinct start times order the runs; the test's outcome does not depend on it
    return run_id


def test_each_config_counts_once_by_its_latest_finished_run_and_reused_runs_stand_for_their_originals(
    tracking_uri,
):
    uri = configure(tracking_uri)
    experiment = ensure_experiment(uri, "reading")
    client = MlflowClient(uri)
    older_a = make_run(client, experiment, "a (first sweep)", "hash-a")
    killed_b = make_run(client, experiment, "b (killed)", "hash-b", status="KILLED")
    newer_a = make_run(client, experiment, "a (reuse=false)", "hash-a")
    finished_b = make_run(client, experiment, "b (rerun)", "hash-b")
    parent = client.create_run(experiment, tags={schema.RUN_TYPE: schema.SWEEP}).info.run_id
    reused = lifecycle.record_reuse(client, experiment, "b again", parent, client.get_run(finished_b), {})
    ensemble = client.create_run(experiment, tags={schema.RUN_TYPE: schema.ENSEMBLE}).info.run_id

    everything = reader.search(client, experiment)
    counted, superseded = reader.training_runs(client, everything)
    assert [run.info.run_id for run in counted] == [killed_b, newer_a, finished_b]
    assert [run.info.run_id for run in superseded] == [older_a]
    assert ensemble not in {run.info.run_id for run in counted}

    [stub] = reader.search(client, experiment, sweep=parent)
    assert stub.info.run_id == reused and stub.info.status == "FINISHED"
    assert stub.data.tags[schema.RUN_TYPE] == schema.REUSED and stub.data.metrics == {"best_val_accuracy": 0.5}
    counted, superseded = reader.training_runs(client, [stub])
    assert [run.info.run_id for run in counted] == [finished_b] and superseded == []


def test_a_training_run_s_curve_reads_at_its_kept_epoch_by_either_name_and_an_ensemble_s_as_logged(tracking_uri):
    uri = configure(tracking_uri)
    experiment = ensure_experiment(uri, "reading")
    client = MlflowClient(uri)
    trained = client.create_run(experiment, tags={schema.RUN_TYPE: schema.TRAIN}).info.run_id
    for step, value in enumerate([0.9, 0.5, 0.7], start=1):  # kept epoch 2; the last is 0.7
        client.log_metric(trained, schema.curve("val_loss"), value, step=step)
        client.log_metric(trained, schema.curve("log10_lr"), -3.0 - step, step=step)
    client.log_metric(trained, schema.kept("val_loss"), 0.5)
    ensemble = client.create_run(experiment, tags={schema.RUN_TYPE: schema.ENSEMBLE}).info.run_id
    client.log_metric(ensemble, "val_loss", 0.4)

    run, combined = client.get_run(trained), client.get_run(ensemble)
    assert reader.metric(run, "val_loss") == reader.metric(run, "epoch/val_loss") == 0.5  # not the last epoch's
    assert reader.metric(run, "epoch/log10_lr") == -6.0  # a curve with no kept value: its latest
    assert reader.metric(combined, "val_loss") == reader.metric(combined, "epoch/val_loss") == 0.4
    assert reader.metric(run, "test_accuracy") is None
