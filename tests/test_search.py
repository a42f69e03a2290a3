"""hydra/sweeper=optuna (simpsons/search.py, simpsons/trials.py, hydra_plugins/simpsons_sweepers/):
its search space and checks, and real searches on small JPEG folders with a tiny model, a real
SQLite MLflow store and Optuna study: trials under one parent, pruning, and a killed search continued."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_MODEL, folder_data, poll, run_cli, start_cli, train_settings
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from simpsons import trials
from simpsons.tracking import schema

MYSQL_DRIVER = importlib.util.find_spec("MySQLdb") is not None
PRESET = {
    "optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
    "dropout": "interval(0.0, 0.6)",
    "optimizer": "choice(adam, rmsprop, sgd, adamw)",
    "image_size": "choice(128, 160, 192, 224)",
}


# The search space, its name and storage (no TensorFlow).


def test_the_preset_searches_lr_on_a_log_scale_dropout_and_categories():
    dimensions, fixed, errors = trials.search_space(PRESET, ["epochs=2", "image_size=32"])

    assert errors == []
    by_key = {d.key: d for d in dimensions}
    assert set(by_key) == {"optimizer.lr", "dropout", "optimizer"}  # image_size=32 fixes it
    assert (by_key["optimizer.lr"].low, by_key["optimizer.lr"].high, by_key["optimizer.lr"].log) == (1e-5, 1e-2, True)
    assert not by_key["dropout"].log and by_key["optimizer"].choices == ("adam", "rmsprop", "sgd", "adamw")
    assert fixed == ["epochs=2", "image_size=32"]


def test_a_command_line_sweep_searches_its_key():
    dimensions, fixed, _ = trials.search_space(PRESET, ["dropout=0.1,0.3", "optimizer.lr=interval(0.001, 0.1)"])

    by_key = {d.key: d for d in dimensions}
    assert by_key["dropout"].choices == (0.1, 0.3)
    assert (by_key["optimizer.lr"].low, by_key["optimizer.lr"].log) == (0.001, False)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"dropout": "interval(0.5, 0.1)"}, "dropout=interval(0.5, 0.1): an interval's low end must be below"),
        ({"optimizer.lr": "tag(log, interval(0, 0.1))"}, "optimizer.lr=tag(log, interval(0, 0.1)): a log-scale"),
        ({"dropout": "0.2"}, "hydra.sweeper.params: nothing to search"),
    ],
)
def test_a_bad_search_space_is_one_message(params, message):
    plan = trials.SearchPlan.of(hydra_config(params=params))
    assert len(plan.errors) == 1 and plan.errors[0].startswith(message), plan.errors


def test_the_study_name_is_stable_and_ignores_n_trials_but_not_the_space():
    one = trials.SearchPlan.of(hydra_config(n_trials=4))
    assert trials.SearchPlan.of(hydra_config(n_trials=16)).study == one.study
    assert one.study.startswith("simpsons-")
    other = trials.SearchPlan.of(hydra_config(params={**PRESET, "dropout": "interval(0.0, 0.5)"}))
    assert other.study != one.study
    assert trials.SearchPlan.of(hydra_config(task=["epochs=3"])).study != one.study


def test_the_study_lives_beside_the_mlflow_store(tmp_path):
    assert trials.storage_uri(f"sqlite:///{tmp_path}/mlflow.db", None) == f"sqlite:///{tmp_path}/optuna.db"
    assert trials.storage_uri(f"sqlite:///{tmp_path}/x.db", None) == f"sqlite:///{tmp_path}/x-optuna.db"
    assert trials.storage_uri("postgresql://mlflow@db:5432/mlflow", None) == "postgresql://mlflow@db:5432/mlflow"
    assert trials.storage_uri("http://mlflow.lab:5000", None) is None
    plan = trials.SearchPlan.of(hydra_config(uri="http://mlflow.lab:5000"))
    assert plan.errors == [
        "tracking.uri=http://mlflow.lab:5000 is a server: the study needs a database; set "
        "hydra.sweeper.storage=postgresql://user@host/db (password from PGPASSWORD) or sqlite:///path/optuna.db"
    ]


def test_maximises_val_accuracy_and_minimises_val_loss():
    assert trials.SearchPlan.of(hydra_config()).direction == "maximize"
    assert trials.SearchPlan.of(hydra_config(monitor="val_loss")).direction == "minimize"


def test_a_trial_job_names_its_values_and_its_trial():
    plan = trials.SearchPlan.of(hydra_config(task=["epochs=2"]))
    job = plan.trial_overrides(
        3, {"optimizer.lr": 0.000123456, "dropout": 0.31234, "optimizer": "sgd", "image_size": 160}
    )
    assert job[:5] == ["epochs=2", "optimizer.lr=0.000123", "dropout=0.312", "optimizer=sgd", "image_size=160"]
    assert job[5:7] == ["trial.number=3", f"trial.study={plan.study}"]


def test_a_trial_has_the_config_hash_of_the_same_config_outside_a_search():
    """So that a trial whose config already finished reuses that run, as a grid's job does."""
    plain = train_settings([*TINY_MODEL, "dropout=0.2"])
    trial = train_settings([*TINY_MODEL, "dropout=0.2", "trial.number=3", "trial.study=s", "trial.storage=sqlite:///x"])
    assert trial.identity() == plain.identity() and trial.in_search and not plain.in_search
    assert trial.container()["trial"]["number"] == 3 and "trial" not in plain.container()  # a param in a search only


def hydra_config(params=None, n_trials=4, task=(), uri="sqlite:////tmp/s/mlflow.db", monitor="val_accuracy"):
    """The parts of a multirun's config that a search reads."""
    sweeper = {
        "_target_": trials.SWEEPER,
        "n_trials": n_trials,
        "n_jobs": None,
        "sampler": "tpe",
        "seed": 1,
        "pruner": "median",
        "n_startup_trials": 1,
        "n_warmup_steps": 0,
        "storage": None,
        "study_name": None,
        "params": params if params is not None else PRESET,
    }
    return OmegaConf.create(
        {
            "hydra": {"sweeper": sweeper, "overrides": {"task": list(task)}},
            "tracking": {"uri": uri, "experiment": "simpsons"},
            "monitor": monitor,
        }
    )


# Through the command line.


def search_args(tmp_path: Path, images: Path, n_trials: int, *extra: str) -> list[str]:
    """A search of 4..6 tiny trials: lr 1e-3 or 10 (which blows val_loss up: pruned once a trial
    finished), dropout on a range; 2 epochs each on cached features of a random MobileNet."""
    return [
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=6",  # lr 1e-3, 10, 1e-3, 1e-3, 10: trial 1 is pruned
        "hydra.sweeper.n_startup_trials=1",
        *(o for o in TINY_MODEL if not o.startswith("optimizer.lr=")),  # image_size=32: not searched
        "optimizer=adam",  # not searched either
        "optimizer.lr=0.001,10.0",  # the command line's sweeps are searched, in place of the preset's
        "dropout=interval(0.0, 0.5)",
        *folder_data(images),
        "epochs=2",
        "monitor=val_loss",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]


def trial_runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "simpsons"]
    runs = client.search_runs([experiment.experiment_id])
    return [run for run in runs if schema.TRIAL in run.data.tags]


def study(tmp_path: Path) -> optuna.Study:
    storage = trials.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")  # as our readers open it
    [summary] = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.slow
def test_a_search_runs_its_trials_under_one_parent_prunes_the_weak_and_names_the_best(image_folders, tmp_path):
    result = run_cli(search_args(tmp_path, image_folders, 4), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]

    runs = trial_runs(tmp_path)
    assert sorted(int(run.data.tags[schema.TRIAL]) for run in runs) == [0, 1, 2, 3]
    assert all(run.info.status == "FINISHED" for run in runs)
    [parent] = {run.data.tags[schema.PARENT_RUN] for run in runs}
    found = study(tmp_path)
    states = {t.number: t.state for t in found.trials}
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [run for run in runs if schema.PRUNED in run.data.tags]
    assert any(run.data.params["optimizer.lr"] == "10.0" for run in pruned), "trial 1 (lr 10) was not pruned"
    for run in pruned:
        assert states[int(run.data.tags[schema.TRIAL])] == TrialState.PRUNED
        assert run.data.tags[schema.PRUNED] == "1"  # stopped after its first epoch, counted from 1
        assert run.data.metrics["best_epoch"] == 1 and "test_accuracy" in run.data.metrics  # logged as any run
    parent_run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(parent)
    best = json.loads(parent_run.data.tags[schema.BEST_TRIAL])
    assert best["number"] == found.best_trial.number and best["run_id"] in {run.info.run_id for run in runs}
    assert parent_run.data.metrics["study_best_value"] == pytest.approx(found.best_value)
    assert parent_run.data.tags[schema.STUDY] == found.study_name
    assert f"best trial #{best['number']}" in result.stdout


@pytest.mark.slow
def test_a_search_killed_halfway_is_continued_by_the_same_command(image_folders, tmp_path):
    """kill -9 of the driver (its job with it) once two trials ended; the same command again marks
    the killed trial FAIL, runs its values again, and ends with n_trials distinct trials."""
    args = search_args(tmp_path, image_folders, 5)
    driver = start_cli(args, tmp_path)
    try:
        poll(lambda: _ended_and_running(tmp_path), "two trials ended and a third training", 600, driver, every=0.5)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()

    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]

    found = study(tmp_path)
    ended = [t for t in found.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in found.trials if t.state == TrialState.FAIL]
    assert len(ended) == 5 and len(failed) == 1, [(t.number, t.state) for t in found.trials]
    assert any(t.user_attrs.get("retry_of") == failed[0].number and t.params == failed[0].params for t in ended)
    runs = trial_runs(tmp_path)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert sorted(int(run.data.tags[schema.TRIAL]) for run in finished) == sorted(t.number for t in ended)
    [killed] = [run for run in runs if run.info.status != "FINISHED"]
    assert killed.info.status == "KILLED" and int(killed.data.tags[schema.TRIAL]) == failed[0].number
    assert len({run.data.tags[schema.PARENT_RUN] for run in finished}) == 2  # one sweep run per command


_OPEN_STUDY = """
import sys, time
import optuna
from simpsons import trials
from simpsons.tracking.sqlite import store_lock
uri, role = sys.argv[1], sys.argv[2]
sys.stdin.read()  # released with the others when the test closes the pipe
if role == "driver":  # as search._study creates it
    with store_lock(uri):
        optuna.create_study(study_name="s", storage=trials.open_storage(uri, create=True), load_if_exists=True)
else:  # a reader (a job, a test's poll): tries until a driver has made the study
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            optuna.load_study(study_name="s", storage=trials.open_storage(uri))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            trials.open_storage.cache_clear()
            time.sleep(0.001)
"""
READER_SECONDS = 300  # for a driver to make the study, with eight processes starting on a loaded machine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def fresh_study_store(request, tmp_path, monkeypatch) -> str:
    """A study store that does not exist yet: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    from services.postgres import DATABASE_PASSWORD

    monkeypatch.setenv("PGPASSWORD", DATABASE_PASSWORD)  # from the environment, never in the URI
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.database(f"study_{secrets.token_hex(4)}")


def test_searches_and_readers_opening_a_fresh_study_store_at_once_fail_nothing(fresh_study_store):
    """Two drivers create the study store while six readers open it, all released at one instant.
    Optuna stamps its schema version on opening, so an unlocked reader failed the driver (soak);
    on PostgreSQL two drivers creating Optuna's tables at once failed the same way."""
    roles = ["driver"] * 2 + ["reader"] * 6
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STUDY, fresh_study_store, role, str(READER_SECONDS)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in roles
    ]
    for process in processes:
        process.stdin.close()
    failed = [(role, p.stderr.read()[-2000:]) for role, p in zip(roles, processes, strict=True) if p.wait()]
    assert not failed, failed
    [study] = optuna.get_all_study_summaries(trials.open_storage(fresh_study_store))
    trials.open_storage.cache_clear()  # no pool of connections to a database the test is done with
    assert study.study_name == "s"


def _ended_and_running(tmp_path: Path) -> bool:
    if not (tmp_path / "optuna.db").exists():
        return False
    try:
        # study() opens the store as our processes do, under its lock: opened from a URI string,
        # Optuna stamps the schema version as the driver creates it, which failed the driver (soak).
        found = study(tmp_path).trials
    except Exception:  # the driver is creating the tables, or the study
        return False
    ended = [t for t in found if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return len(ended) >= 2 and any(t.state == TrialState.RUNNING and trials.RUN_ATTR in t.user_attrs for t in found)


@pytest.mark.slow
def test_loky_workers_report_to_the_study_and_are_pruned(image_folders, tmp_path):
    """hydra/launcher=parallel: two trials at a time, each in a job process of its own, which
    reports each epoch to the study and is pruned there (seed 2: lr 1e-3, 1e-3, then 10 and 10)."""
    args = search_args(tmp_path, image_folders, 4, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    args[args.index("hydra.sweeper.seed=6")] = "hydra.sweeper.seed=2"
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]

    found = study(tmp_path)
    states = [t.state for t in found.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED], states
    assert all(t.intermediate_values for t in found.trials)  # every job process reported its epochs
    runs = {int(run.data.tags[schema.TRIAL]): run for run in trial_runs(tmp_path)}
    assert {number for number, run in runs.items() if schema.PRUNED in run.data.tags} == {2, 3}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    parent = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(runs[0].data.tags[schema.PARENT_RUN])
    assert parent.data.tags[schema.PID] not in {run.data.tags[schema.PID] for run in runs.values()}  # job processes


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
@pytest.mark.parametrize(
    "override,message",
    [
        ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials=0 is invalid; expected an integer >= 1"),
        (
            "hydra.sweeper.pruner=best",
            "error: hydra.sweeper.pruner='best' is unknown; use one of: median, halving, none",
        ),
        (
            "dropout=interval(0.5, 0.1)",
            "error: dropout=interval(0.5, 0.1): an interval's low end must be below its high",
        ),
        (
            "hydra.sweeper.params.dropout='interval(0, 1.5)'",
            "error: dropout=1.5 is invalid; expected a number in [0, 1)",
        ),
        ("optimizer=choice(adam, nadam)", "error: unknown optimizer 'nadam'; choose one of: adam, adamw"),
        (  # port 1: nothing listens there, so the connection is refused at once
            "hydra.sweeper.storage=postgresql://optuna@127.0.0.1:1/studies",
            "error: hydra.sweeper.storage=postgresql://optuna@127.0.0.1:1/studies: cannot connect (",
        ),
        pytest.param(
            "hydra.sweeper.storage=mysql://optuna@127.0.0.1:1/studies",
            "error: hydra.sweeper.storage=mysql://optuna@127.0.0.1:1/studies: its driver is not installed (MySQLdb)",
            marks=pytest.mark.skipif(MYSQL_DRIVER, reason="mysqlclient is installed"),
        ),
    ],
)
def test_a_bad_sweeper_value_is_one_line_exit_2_and_creates_nothing(override, message, image_folders, tmp_path):
    args = ["-m", "hydra/sweeper=optuna", override, *TINY_MODEL, *folder_data(image_folders)]
    args.append(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "simpsons.train", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, study, multirun folder
