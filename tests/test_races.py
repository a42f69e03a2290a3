"""Store writes that other processes make at the same instant, on a fresh store of each kind.

Eight real processes, released together (they block on one pipe until the test closes it), do what
every job of a parallel sweep does at its start, through our own functions: create the experiment,
start a run, log the same data set, log a model, register it into one registered model and move
its alias; then they all end the same dead runs. Nothing may fail. On SQLite (the default store),
a direct PostgreSQL store and over HTTP (a real `mlflow server` on PostgreSQL).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import folder_data, free_port, mlflow_cli, serving
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient
from services.postgres import DATABASE_PASSWORD

from simpsons.tracking import races, schema

WRITERS = 8
PHASES = 4  # the fresh store and its experiment; the data set; the registry; the dead runs
EXPERIMENT = "races"
REGISTERED_MODEL = "races"
VAL_FILES = "the same validation files"
SETUP_SECONDS = 600  # eight processes importing TensorFlow on a busy machine
WRITE_SECONDS = 600


# The writer: one process of the race (this file, run as a script).


def writer(uri: str, images: Path, index: int, ready: int, phases: list[int]) -> None:
    """Set up, then before each racing write say ready and wait for the release (EOF on that phase's
    pipe), so that all writers make it at the same instant. Prints one JSON line of what it wrote."""
    import contextlib
    import logging

    import keras
    import mlflow
    import numpy as np
    from conftest import train_settings

    from simpsons.data import load_dataset
    from simpsons.ensembling import registry
    from simpsons.tracking import lifecycle, store
    from simpsons.tracking import writer as run_writer

    logging.basicConfig()
    logging.getLogger(races.__name__).setLevel(logging.DEBUG)  # each retried clash, in the writer's output
    data = load_dataset(train_settings(folder_data(images)).data)
    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(data.class_names))]
    )
    example = np.zeros((1, 32, 32, 3), np.float32)
    score = registry.Score("best_val_accuracy", "max", index / 10, VAL_FILES)
    tags = {schema.RUN_TYPE: schema.TRAIN, schema.VAL_FILES: VAL_FILES, "race": "the same tag"}
    release = iter(phases)

    def at_once() -> None:
        os.write(ready, b".")
        assert os.read(next(release), 1) == b""  # the test closes the pipe: every writer goes at once

    at_once()  # on a fresh store: its schema, then one experiment
    uri = store.configure(uri)
    experiment_id = store.ensure_experiment(uri, EXPERIMENT)
    client = MlflowClient(uri)
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(lifecycle.tracked_run(experiment_id, f"writer {index}", None, tags))
        at_once()  # one data set, the same for all
        run_writer.log_dataset_inputs(data, "shapes", str(images / "train"), str(images / "test"))
        model_id = run_writer.log_model(model, example, data.class_names, "race-model", step=0)
        mlflow.log_metric("best_val_accuracy", score.value)
        at_once()  # one registered model, a version each, one alias
        registration = registry.register(client, REGISTERED_MODEL, model_id, run.info.run_id, score, "a racer")
    at_once()  # the same dead runs, ended with the same tags
    ended = lifecycle.end_dead_runs(client, [experiment_id])
    done = {"experiment": experiment_id, "run": run.info.run_id, "version": registration.version}
    print(json.dumps(done | {"ended": sorted(r.info.run_id for r in ended)}), flush=True)


# The race, run by the test.


def race(uri: str, images: Path, folder: Path, env: dict[str, str]) -> list[dict]:
    """WRITERS processes, released together at each of their PHASES; the dead runs are made while
    they wait before the last. Returns what each wrote; fails with their output if one failed."""
    ready_read, ready_write = os.pipe()
    phases = [os.pipe() for _ in range(PHASES)]
    outputs, processes = [], []
    try:
        for index in range(WRITERS):
            output = (folder / f"writer-{index}.txt").open("w")
            outputs.append(output)
            fds = [ready_write, *(read for read, _ in phases)]
            arguments = [uri, str(images), str(index), str(ready_write), json.dumps([read for read, _ in phases])]
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, *arguments],
                    cwd=folder,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=fds,
                )
            )
        os.close(ready_write)
        for read, _ in phases:
            os.close(read)
        for phase, (_, release) in enumerate(phases):
            _wait_until_ready(ready_read, processes, folder, SETUP_SECONDS if phase == 0 else WRITE_SECONDS)
            if phase == PHASES - 1:
                dead_runs(uri)
            os.close(release)
        codes = [process.wait(timeout=WRITE_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for output in outputs:
            output.close()
        os.close(ready_read)
    logs = [(folder / f"writer-{index}.txt").read_text() for index in range(WRITERS)]
    failed = [f"writer {i} (exit {code}):\n{logs[i][-3000:]}" for i, code in enumerate(codes) if code != 0]
    assert not failed, "\n".join(failed)
    return [json.loads([line for line in log.splitlines() if line.startswith("{")][-1]) for log in logs]


def _wait_until_ready(ready: int, processes: list[subprocess.Popen], folder: Path, seconds: float) -> None:
    """Every writer has said it is ready (one byte each); fails if one ended first, or at the deadline."""
    count, deadline = 0, time.monotonic() + seconds
    while count < len(processes):
        if select.select([ready], [], [], 0.5)[0]:
            count += len(os.read(ready, len(processes) - count))
        ended = [i for i, p in enumerate(processes) if p.poll() is not None]
        if ended and count < len(processes):
            logs = "\n".join((folder / f"writer-{i}.txt").read_text()[-3000:] for i in ended)
            pytest.fail(f"writer(s) {ended} ended before all were ready:\n{logs}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {count} of {len(processes)} writers ready after {seconds:g} s")


def dead_runs(uri: str) -> None:
    """A sweep and its job, RUNNING on another host that stopped beating an hour ago."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    gone = {schema.HOST: "a-host-that-is-gone", schema.HEARTBEAT: f"{time.time() - 3600:.3f}"}
    sweep = client.create_run(experiment, run_name="dead sweep", tags=gone | {schema.RUN_TYPE: schema.SWEEP})
    job = gone | {schema.RUN_TYPE: schema.TRAIN, schema.PARENT_RUN: sweep.info.run_id}
    client.create_run(experiment, run_name="dead job", tags=job)


def check_the_store(uri: str, written: list[dict], sqlite: bool) -> None:
    client = MlflowClient(uri)
    [experiment] = {w["experiment"] for w in written}
    assert client.get_experiment_by_name(EXPERIMENT).experiment_id == experiment
    runs = client.search_runs([experiment], max_results=100)
    racers = [r for r in runs if r.info.run_name.startswith("writer ")]
    assert sorted(r.info.run_id for r in racers) == sorted(w["run"] for w in written)
    assert {r.info.status for r in racers} == {"FINISHED"}
    assert all(r.data.tags["race"] == "the same tag" for r in racers)
    # One dataset row per split for all of them, each run linked to the three
    inputs = [{(i.dataset.name, i.dataset.digest) for i in r.inputs.dataset_inputs} for r in racers]
    assert len({frozenset(i) for i in inputs}) == 1
    assert {name for name, _ in inputs[0]} == {"shapes/train", "shapes/validation", "shapes/test"}
    # One registered model, a version each (1 to 8, none lost), the alias on one of them
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, WRITERS + 1))
    assert sorted(w["version"] for w in written) == sorted(str(v.version) for v in versions)
    assert {v.run_id for v in versions} == {w["run"] for w in written}
    champion = client.get_registered_model(REGISTERED_MODEL).aliases[schema.CHAMPION]
    if sqlite:  # moved under the store's lock: the best ends as champion (elsewhere, see registry.py)
        assert client.get_model_version(REGISTERED_MODEL, champion).run_id == written[-1]["run"]
    # The dead runs ended KILLED once, with why, and the sweep's outcome logged on it
    dead = {r.info.run_name: client.get_run(r.info.run_id) for r in runs if r.info.run_name.startswith("dead ")}
    assert {name: r.info.status for name, r in dead.items()} == {"dead sweep": "KILLED", "dead job": "KILLED"}
    assert all("no heartbeat from a-host-that-is-gone" in r.data.tags[schema.ENDED_BY] for r in dead.values())
    outcome = dead["dead sweep"].data.metrics
    assert (outcome["jobs_failed"], outcome["jobs_killed"]) == (0, 1)  # its job ended KILLED, counted apart
    ended = [run_id for w in written for run_id in w["ended"]]
    assert set(ended) == {r.info.run_id for r in dead.values()}
    if sqlite:  # under the lock, one process ends each
        assert len(ended) == 2


# The backends


def environment(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | extra


@pytest.fixture
def fresh_postgres(postgres: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, empty schema of the test PostgreSQL as a store of its own (search_path in the URI)."""
    import sqlalchemy

    schema_name = f"races_{secrets.token_hex(4)}"
    monkeypatch.setenv("PGPASSWORD", DATABASE_PASSWORD)  # for this process's own reads
    engine = sqlalchemy.create_engine(postgres)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema_name}"))
    try:
        yield f"{postgres}?options=-csearch_path%3D{schema_name}"
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema_name} CASCADE"))
        engine.dispose()


@pytest.mark.slow
def test_eight_writers_at_once_on_a_fresh_sqlite_store(image_folders, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    written = race(uri, image_folders, tmp_path, environment())
    check_the_store(uri, written, sqlite=True)


@pytest.mark.slow
def test_eight_writers_at_once_on_a_fresh_postgres_store(fresh_postgres, image_folders, tmp_path):
    env = environment(PGPASSWORD=DATABASE_PASSWORD)
    written = race(fresh_postgres, image_folders, tmp_path, env)
    check_the_store(fresh_postgres, written, sqlite=False)


@pytest.mark.slow
def test_eight_writers_at_once_over_http_on_a_fresh_postgres_store(fresh_postgres, image_folders, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [mlflow_cli(), "server", "--backend-store-uri", fresh_postgres, "--port", str(port)]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "2"]
    server_env = environment(PGPASSWORD=DATABASE_PASSWORD)
    with serving(command, f"{url}/health", tmp_path, server_env, timeout=180):
        written = race(url, image_folders, tmp_path, environment())
        check_the_store(url, written, sqlite=False)


# The helper's own rules, without a store


def test_a_clash_is_a_unique_key_or_resource_already_exists_and_nothing_else():
    assert races.clashed(MlflowException("x", error_code=RESOURCE_ALREADY_EXISTS))
    sqlite = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"
    unique_violation = '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    assert races.clashed(MlflowException(sqlite, error_code=BAD_REQUEST))
    assert races.clashed(MlflowException(f"BAD_REQUEST: {unique_violation}", error_code=BAD_REQUEST))
    assert not races.clashed(MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not races.clashed(MlflowException("FOREIGN KEY constraint failed", error_code=BAD_REQUEST))


def test_a_clash_is_tried_again_and_any_other_error_raised_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    calls = []

    def clashes_once() -> str:
        calls.append("clash")
        if len(calls) == 1:
            raise MlflowException("UNIQUE constraint failed: datasets.name", error_code=BAD_REQUEST)
        return "written"

    assert races.shared_write(uri, clashes_once, "a row") == "written"
    assert len(calls) == 2

    def refused() -> None:
        calls.append("refused")
        raise MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="not found"):
        races.shared_write(uri, refused, "a row")
    assert calls.count("refused") == 1


if __name__ == "__main__":
    uri_, images_, index_, ready_, phases_ = sys.argv[1:]
    writer(uri_, Path(images_), int(index_), int(ready_), json.loads(phases_))
