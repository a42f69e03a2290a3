"""The team tracking server: a real PostgreSQL, the real `mlflow server` with basic auth, started by
`python -m simpsons.server`, and the real CLIs pointed at it over HTTP as a team's users would.

Each pytest-xdist worker that runs these tests starts its own PostgreSQL and server, on free ports
and in folders of its own, so workers never share one.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import mlflow
import psutil
import pytest
from conftest import COMMAND_SECONDS, TINY_MODEL, clean_environment, folder_data, free_port, run_module, serving
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from services.postgres import DATABASE_PASSWORD, POSTGRES_BINARIES

from simpsons import server as team_server
from simpsons.tracking import schema

# Fresh per test session: whatever leaks is found by its value, which nothing else could contain.
ADMIN_PASSWORD = "admin-" + secrets.token_hex(12)
PASSWORDS = {"alice": "alice-" + secrets.token_hex(12), "bob": "bob-" + secrets.token_hex(12)}
SECRETS = [ADMIN_PASSWORD, DATABASE_PASSWORD, *PASSWORDS.values()]
API = "/api/2.0/mlflow"
JOBLIB_2 = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


class Server(NamedTuple):
    url: str
    log: Path


def teammate(url: str, user: str | None, password: str | None = None) -> dict[str, str]:
    """The environment of a teammate pointing runs at `url`, as the README says."""
    env = {**clean_environment(), "MLFLOW_TRACKING_URI": url}
    if user is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[user]}
    return env


@pytest.fixture(scope="session")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The team server as the README starts it, with users alice and bob added as the README says."""
    folder = tmp_path_factory.mktemp("team-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "simpsons.server", "--backend-store-uri", postgres]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--port", str(port), "--workers", "2"]
    env = clean_environment() | {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "PGPASSWORD": DATABASE_PASSWORD}
    with serving(command, f"{url}/health", folder, env, timeout=180):
        for user, password in PASSWORDS.items():
            admin = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "SIMPSONS_NEW_USER_PASSWORD": password}
            added = run_module("server", ["add-user", user, "--server", url], folder, clean_environment() | admin)
            assert added.returncode == 0, added.stderr
            assert f"added user '{user}'" in added.stdout
        yield Server(url, folder / "server.log")


@pytest.fixture
def as_alice(team: Server, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """This test process, logged in as alice."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["alice"])
    return MlflowClient(team.url)


def runs_of(client: MlflowClient, experiment: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


def run_type(run: Run) -> str:
    return run.data.tags.get("simpsons.run_type", "")


def error_lines(module: str, result: subprocess.CompletedProcess) -> list[str]:
    """The error lines of a command: train and report print them alone on stderr; ensemble, a Hydra
    app that loads TensorFlow first, logs them (as its other errors) among TensorFlow's start-up lines."""
    if module != "ensemble":
        return result.stderr.strip().splitlines()
    lines = (result.stdout + result.stderr).splitlines()
    return [line[line.index("error: ") :] for line in lines if "error: " in line]


def leaked_secrets(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def files_with_secrets(folder: Path) -> list[str]:
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes()
        leaks += [f"{path}: {secret[:6]}..." for secret in SECRETS if secret.encode() in content]
    return leaks


def files_holding(folder: Path, text: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def admin_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m simpsons.server ARGS` as the server's admin; it must succeed."""
    result = run_module("server", args, cwd, clean_environment() | {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def call(url: str, method: str, path: str, user: str | None, body: dict | None = None, data: bytes | None = None):
    """One REST request as `user` (None: anonymous); its HTTP status and body."""
    headers = {}
    if user is not None:
        login = f"{user}:{PASSWORDS.get(user, ADMIN_PASSWORD)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# Starting the server: bad input in one line, before anything starts.


def test_the_server_will_not_start_without_an_admin_password(capsys):
    os.environ.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)  # the test process never has it
    code = team_server.main(["--backend-store-uri", "postgresql://mlflow@db/mlflow", "--artifacts-destination", "a"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line.startswith("error: MLFLOW_AUTH_ADMIN_PASSWORD is not set;")


def test_the_server_refuses_a_short_admin_password_a_password_in_the_uri_and_other_stores(
    monkeypatch, capsys, tmp_path
):
    artifacts = str(tmp_path / "artifacts")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    assert team_server.main(["--backend-store-uri", "postgresql://m@db/m", "--artifacts-destination", artifacts]) == 2
    assert "MLFLOW_AUTH_ADMIN_PASSWORD is 5 characters long; MLflow needs at least 12" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    instead = "leave it out and give it to the database's client instead (PostgreSQL: PGPASSWORD or ~/.pgpass)"
    refused = {
        ("--backend-store-uri", f"postgresql://m:{DATABASE_PASSWORD}@db/m"): "postgresql://m:***@db/m",
        (
            "--backend-store-uri",
            f"postgresql://m@db/m?password={DATABASE_PASSWORD}",
        ): "postgresql://m@db/m?password=***",
        ("--auth-database-uri", f"postgresql://m@db/users?sslmode=require&sslpassword={DATABASE_PASSWORD}"): (
            "postgresql://m@db/users?sslmode=require&sslpassword=***"
        ),
        ("--artifacts-destination", f"s3://bucket/x?password={DATABASE_PASSWORD}"): "s3://bucket/x?password=***",
    }
    for (flag, uri), redacted in refused.items():
        args = {"--backend-store-uri": "postgresql://m@db/m", "--artifacts-destination": artifacts, flag: uri}
        assert team_server.main([word for pair in args.items() for word in pair]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line == f"error: {flag}={redacted} has a password in it; {instead}"
    assert team_server.main(["--backend-store-uri", "sqlite:///x.db", "--artifacts-destination", artifacts]) == 2
    assert "is not a PostgreSQL URI; use postgresql://USER@HOST:PORT/DATABASE" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()  # refused before anything was made


def test_the_auth_config_holds_no_secret_and_keeps_percent_escapes():
    text = team_server.auth_config_text("postgresql://mlflow@db/mlflow", "READ")
    assert "database_uri = postgresql://mlflow@db/mlflow" in text
    assert "default_permission = READ" in text
    assert "auth_cache_ttl_seconds = 60" in text  # a password is checked (scrypt) once a minute, not per request
    assert "password" not in text  # MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD
    parser = configparser.ConfigParser()  # as MLflow reads it, with interpolation
    parser.read_string(team_server.auth_config_text("postgresql://ml%40flow@db/mlflow", "READ"))
    assert parser["mlflow"]["database_uri"] == "postgresql://ml%40flow@db/mlflow"
    defaults = team_server.start_parser().parse_args(["--backend-store-uri", "u", "--artifacts-destination", "a"])
    assert (defaults.default_permission, defaults.auth_cache_seconds) == ("READ", 60)


# The running server.


@pytest.mark.slow
def test_postgres_server_refuses_anonymous_requests_and_wrong_passwords_in_one_line(
    team, as_alice, image_folders, tmp_path
):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{team.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert refused.value.code == 401

    train_args = [*folder_data(image_folders), *TINY_MODEL, "epochs=1"]
    commands = {"train": train_args, "ensemble": [], "report": []}
    wrong = (
        f"error: tracking.uri={team.url} refused user 'alice' (HTTP 401: wrong username or password); "
        "fix MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    anonymous = (
        f"error: tracking.uri={team.url} refuses anonymous access (HTTP 401); "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your user on that server"
    )
    for module, args in commands.items():
        for env, expected in (
            (teammate(team.url, "alice", "not-" + PASSWORDS["alice"]), wrong),
            (teammate(team.url, None), anonymous),
        ):
            result = run_module(module, args, tmp_path, env)
            assert result.returncode == 2, (module, result.stderr[-3000:])
            assert error_lines(module, result) == [expected], module
    assert not list(tmp_path.rglob("multirun"))  # nothing started: no sweep folder, no experiment
    assert as_alice.get_experiment_by_name("simpsons") is None

    wrong_admin = run_module(
        "server",
        ["add-user", "carol", "--server", team.url],
        tmp_path,
        clean_environment() | {"MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 12, "SIMPSONS_NEW_USER_PASSWORD": "y" * 12},
    )
    assert wrong_admin.returncode == 2
    [line] = wrong_admin.stderr.strip().splitlines()
    assert line.startswith(f"error: {team.url} refused admin user 'admin' (HTTP 401: wrong password)")


def test_a_password_inside_the_server_url_is_refused_before_anything_starts(image_folders, tmp_path):
    url = f"http://alice:{PASSWORDS['alice']}@127.0.0.1:{free_port()}"
    result = run_module("train", [*folder_data(image_folders), *TINY_MODEL], tmp_path, teammate(url, None))
    assert result.returncode == 2
    assert leaked_secrets(result.stdout + result.stderr) == []
    assert result.stderr.strip().splitlines() == [
        f"error: MLFLOW_TRACKING_URI=http://alice:***@127.0.0.1:{url.rsplit(':', 1)[1]} has a password in it; "
        "leave it out and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    ]


@pytest.mark.slow
def test_postgres_sweep_of_four_jobs_two_at_a_time_over_http_then_ensemble_and_report(team, as_alice, tmp_path):
    env = teammate(team.url, "alice")
    sweep = ["-m", "experiment=demo", f"data.dir={tmp_path / 'demo'}", *TINY_MODEL, "epochs=2", *JOBLIB_2]
    sweep += ["tracking.experiment=team-sweep"]
    outputs = [run_module("train", sweep, tmp_path, env)]
    assert outputs[0].returncode == 0, outputs[0].stderr[-3000:]

    runs = runs_of(as_alice, "team-sweep")
    [parent] = [r for r in runs if run_type(r) == "sweep"]
    children = [r for r in runs if run_type(r) == "train"]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    grid = {(c.data.params["optimizer.name"], c.data.params["dropout"]) for c in children}
    assert grid == {(o, d) for o in ("adam", "rmsprop") for d in ("0.2", "0.5")}
    assert all(len(as_alice.get_metric_history(c.info.run_id, "epoch/val_accuracy")) == 2 for c in children)
    # The parent's outcome, from the runs two joblib workers wrote, and where to see it
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (4, 0)
    names = sorted(c.info.run_name for c in children)
    assert names == [f"{o} drop={d}" for o in ("adam", "rmsprop") for d in ("0.2", "0.5")]
    assert f"open {team.url} in a browser" in outputs[0].stdout

    ensemble = run_module("ensemble", ["tracking.experiment=team-sweep", "sweep=latest", "top_n=4"], tmp_path, env)
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    [ensemble_run] = [r for r in runs_of(as_alice, "team-sweep") if run_type(r) == "ensemble"]
    assert ensemble_run.info.status == "FINISHED"
    assert set(ensemble_run.data.tags[schema.MEMBERS].split(",")) == {c.info.run_id for c in children}
    report = run_module("report", ["--experiment", "team-sweep", "--sweep", "latest"], tmp_path, env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert all(c.info.run_name in report.stdout for c in children)
    assert ensemble_run.info.run_name in report.stdout
    outputs += [ensemble, report]

    # No credential anywhere: params, tags, every artifact (downloaded through the server), the
    # commands' output, and every file they wrote (multirun/, outputs/, Hydra's .hydra/*.yaml).
    for run in runs_of(as_alice, "team-sweep"):
        assert leaked_secrets(repr(run.data.params) + repr(run.data.tags) + run.info.run_name) == []
        destination = str(tmp_path / "artifacts" / run.info.run_id)
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=destination, tracking_uri=team.url)
    assert leaked_secrets("".join(o.stdout + o.stderr for o in outputs)) == []
    assert len(list(tmp_path.glob("artifacts/*/hydra/overrides.yaml"))) == 4
    assert list(tmp_path.glob("multirun/*/*/0/.hydra/config.yaml"))
    assert files_with_secrets(tmp_path) == []


@pytest.mark.slow
def test_postgres_four_parallel_writers_of_two_users_lose_no_run(team, as_alice, image_folders, tmp_path):
    """Four processes at once into alice's experiment: bob, who may only read it by default, is
    first refused in one line, then granted EDIT with the documented command."""
    as_alice.create_experiment("team-writers")
    args = [*folder_data(image_folders), *TINY_MODEL, "epochs=1", "tracking.experiment=team-writers"]
    refused = run_module("train", args, tmp_path, teammate(team.url, "bob"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    [line] = [line for line in (refused.stdout + refused.stderr).splitlines() if "error: " in line]
    assert line.endswith(
        f"error: tracking.experiment='team-writers' on {team.url}: user 'bob' has READ on it, not EDIT; use one of "
        "your own (tracking.experiment=NAME), or have its owner or the server's admin run: "
        "python -m simpsons.server grant bob --experiment team-writers --permission EDIT"
    )
    assert "Traceback" not in refused.stdout + refused.stderr
    assert runs_of(as_alice, "team-writers") == []
    granted = admin_command(["grant", "bob", "--experiment", "team-writers", "--server", team.url], tmp_path)
    assert granted.stdout.strip() == f"bob now has EDIT on experiment 'team-writers' at {team.url}"

    writers = {"0.1": "alice", "0.2": "bob", "0.3": "alice", "0.4": "bob"}
    processes = []
    for dropout, user in writers.items():
        folder = tmp_path / f"writer-{dropout}"
        folder.mkdir()
        args = [*folder_data(image_folders), *TINY_MODEL, "epochs=2", f"dropout={dropout}"]
        args += ["tracking.experiment=team-writers"]
        output = (folder / "output.txt").open("w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "simpsons.train", *args],
                cwd=folder,
                env=teammate(team.url, user),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        )
        output.close()
    try:
        codes = [process.wait(timeout=COMMAND_SECONDS) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert codes == [0, 0, 0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("writer-*/output.txt")]

    runs = [r for r in runs_of(as_alice, "team-writers") if run_type(r) == "train"]
    assert sorted(r.data.params["dropout"] for r in runs) == sorted(writers)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(len(as_alice.get_metric_history(r.info.run_id, "epoch/val_accuracy")) == 2 for r in runs)
    assert files_with_secrets(tmp_path) == []


@pytest.mark.slow
def test_postgres_server_restarted_with_another_admin_password_warns_and_stops_whole(team, postgres, tmp_path):
    """A second start on the same database: the admin exists, so MLflow ignores the new password,
    and the server says so. Its auth config is in no file while it runs; stopped, nothing is left."""
    port, private = free_port(), tmp_path / "tmp"
    private.mkdir()
    command = [sys.executable, "-m", "simpsons.server", "--backend-store-uri", postgres, "--port", str(port)]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"]
    env = clean_environment() | {"PGPASSWORD": DATABASE_PASSWORD, "TMPDIR": str(private)}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "another-" + ADMIN_PASSWORD
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        warning = poll(lambda: "warning: " in log.read_text(), server, log)
        assert files_holding(private, "database_uri") == []  # MLflow's auth config is in no file
        processes = psutil.Process(server.pid).children(recursive=True)
        assert processes  # mlflow server, its uvicorn and worker
    finally:
        server.terminate()
        server.wait(timeout=120)
    assert warning
    [line] = [line for line in log.read_text().splitlines() if line.startswith("warning: ")]
    assert line.startswith(f"warning: http://127.0.0.1:{port} refused admin user 'admin' (HTTP 401: wrong password)")
    assert files_holding(private, "database_uri") == []  # (MLflow leaves its own db_init_lock file)
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


# Safe by default: a teammate reads everything and changes nothing of another's until granted.


@pytest.fixture
def alices_work(as_alice: MlflowClient, tmp_path: Path) -> dict[str, str]:
    """What alice made: an experiment, a FINISHED run with a metric, a tag and a model file, a
    registered model with two versions and `champion` on version 1, a logged model."""
    experiment = as_alice.create_experiment(f"alices-{secrets.token_hex(3)}")
    run = as_alice.create_run(experiment, run_name="hers").info.run_id
    as_alice.log_metric(run, "val_accuracy", 0.9)
    as_alice.set_tag(run, "stage", "hers")
    (tmp_path / "weights.txt").write_text("her weights")
    as_alice.log_artifact(run, str(tmp_path / "weights.txt"), "model")
    as_alice.set_terminated(run, "FINISHED")
    model = f"alices-model-{secrets.token_hex(3)}"
    as_alice.create_registered_model(model)
    for _ in range(2):
        as_alice.create_model_version(model, f"runs:/{run}/model", run)
    as_alice.set_registered_model_alias(model, "champion", "1")
    logged = as_alice.create_logged_model(experiment, name="hers").model_id
    return {"experiment": experiment, "run": run, "model": model, "logged": logged}


def tampering(work: dict[str, str]) -> dict[str, tuple[str, str, dict | None, bytes | None]]:
    """Every write the issue saw bob make into alice's work with HTTP 200, and their neighbours."""
    experiment, run, model, logged = work["experiment"], work["run"], work["model"], work["logged"]
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/model/weights.txt"
    metric = {"run_id": run, "key": "val_accuracy", "value": 0.1, "timestamp": 1, "step": 0}
    return {
        "replace her model file": ("PUT", artifact, None, b"bob's weights"),
        "delete her model file": ("DELETE", artifact, None, None),
        "upload through the UI's endpoint": (
            "POST",
            f"/ajax-api/2.0/mlflow/upload-artifact?run_uuid={run}&path=x",
            None,
            b"x",
        ),
        "move her champion alias": (
            "POST",
            API + "/registered-models/alias",
            {"name": model, "alias": "champion", "version": "2"},
            None,
        ),
        "delete her alias": ("DELETE", API + "/registered-models/alias", {"name": model, "alias": "champion"}, None),
        "create a version in her model": (
            "POST",
            API + "/model-versions/create",
            {"name": model, "source": f"runs:/{run}/model", "run_id": run},
            None,
        ),
        "edit her model's description": (
            "PATCH",
            API + "/registered-models/update",
            {"name": model, "description": "bob"},
            None,
        ),
        "edit her version's description": (
            "PATCH",
            API + "/model-versions/update",
            {"name": model, "version": "1", "description": "bob"},
            None,
        ),
        "rename her model": (
            "POST",
            API + "/registered-models/rename",
            {"name": model, "new_name": model + "-bob"},
            None,
        ),
        "mark her finished run FAILED": ("POST", API + "/runs/update", {"run_id": run, "status": "FAILED"}, None),
        "rename her run": ("POST", API + "/runs/update", {"run_id": run, "run_name": "bob's"}, None),
        "log a metric into her run": ("POST", API + "/runs/log-metric", metric, None),
        "log a batch into her run": ("POST", API + "/runs/log-batch", {"run_id": run, "metrics": [metric]}, None),
        "set a tag on her run": (
            "POST",
            API + "/runs/set-tag",
            {"run_id": run, "key": "stage", "value": "bob's"},
            None,
        ),
        "edit her run's description": (
            "POST",
            API + "/runs/set-tag",
            {"run_id": run, "key": "mlflow.note.content", "value": "bob"},
            None,
        ),
        "delete her run": ("POST", API + "/runs/delete", {"run_id": run}, None),
        "rename her experiment": (
            "POST",
            API + "/experiments/update",
            {"experiment_id": experiment, "new_name": "bob's"},
            None,
        ),
        "edit her experiment's description": (
            "POST",
            API + "/experiments/set-experiment-tag",
            {"experiment_id": experiment, "key": "mlflow.note.content", "value": "bob"},
            None,
        ),
        "create a run in her experiment": ("POST", API + "/runs/create", {"experiment_id": experiment}, None),
        "tag her logged model": (
            "PATCH",
            f"{API}/logged-models/{logged}/tags",
            {"tags": [{"key": "k", "value": "bob"}]},
            None,
        ),
        "fail her logged model": (
            "PATCH",
            f"{API}/logged-models/{logged}",
            {"model_id": logged, "status": "LOGGED_MODEL_UPLOAD_FAILED"},
            None,
        ),
    }


@pytest.mark.slow
def test_postgres_bob_reads_alices_work_but_every_change_is_refused_until_granted(
    team, as_alice, alices_work, tmp_path
):
    statuses = {}
    for what, (method, path, body, data) in tampering(alices_work).items():
        statuses[what] = call(team.url, method, path, "bob", body, data)[0]
    assert statuses == dict.fromkeys(statuses, 403)

    # Nothing changed, and bob still reads it all.
    run, model = as_alice.get_run(alices_work["run"]), as_alice.get_registered_model(alices_work["model"])
    assert (run.info.status, run.info.run_name, run.data.metrics, run.data.tags["stage"]) == (
        "FINISHED",
        "hers",
        {"val_accuracy": 0.9},
        "hers",
    )
    assert (model.aliases, model.description, len(as_alice.search_model_versions(f"name='{model.name}'"))) == (
        {"champion": "1"},
        "",
        2,
    )
    assert as_alice.get_experiment(alices_work["experiment"]).name.startswith("alices-")
    artifact = tampering(alices_work)["replace her model file"][1]
    assert call(team.url, "GET", artifact, "bob") == (200, b"her weights")
    assert call(team.url, "GET", f"/api/2.0/mlflow/runs/get?run_id={run.info.run_id}", "bob")[0] == 200
    found = call(
        team.url, "POST", "/api/2.0/mlflow/runs/search", "bob", {"experiment_ids": [alices_work["experiment"]]}
    )
    assert json.loads(found[1])["runs"][0]["info"]["run_id"] == run.info.run_id

    # An ensemble into her experiment, or registered into her model, stops in one line naming the grant.
    experiment = as_alice.get_experiment(alices_work["experiment"]).name
    ensemble = run_module("ensemble", [f"tracking.experiment={experiment}"], tmp_path, teammate(team.url, "bob"))
    assert ensemble.returncode == 2
    assert error_lines("ensemble", ensemble) == [
        f"error: tracking.experiment={experiment!r} on {team.url}: user 'bob' has READ on it, not EDIT; use one of "
        "your own (tracking.experiment=NAME), or have its owner or the server's admin run: "
        f"python -m simpsons.server grant bob --experiment {experiment} --permission EDIT"
    ]

    # Granted EDIT, by alice herself (she created them: MANAGE) and by the admin: bob may write.
    alice = clean_environment() | {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": PASSWORDS["alice"]}
    by_alice = run_module("server", ["grant", "bob", "--experiment", experiment, "--server", team.url], tmp_path, alice)
    assert by_alice.returncode == 0, by_alice.stderr[-3000:]
    assert by_alice.stdout.strip() == f"bob now has EDIT on experiment {experiment!r} at {team.url}"
    args = [f"tracking.experiment={experiment}", f"registered_model={model.name}"]
    ensemble = run_module("ensemble", args, tmp_path, teammate(team.url, "bob"))
    assert ensemble.returncode == 2
    assert error_lines("ensemble", ensemble) == [
        f"error: registered_model={model.name!r} on {team.url}: user 'bob' has READ on it, not EDIT; use one of "
        "your own (registered_model=NAME), or have its owner or the server's admin run: "
        f"python -m simpsons.server grant bob --registered-model {model.name} --permission EDIT"
    ]
    admin_command(["grant", "bob", "--registered-model", model.name, "--server", team.url], tmp_path)
    for what in ("create a run in her experiment", "log a metric into her run", "move her champion alias"):
        method, path, body, data = tampering(alices_work)[what]
        assert call(team.url, method, path, "bob", body, data)[0] == 200, what
    assert as_alice.get_registered_model(model.name).aliases == {"champion": "2"}
    # bob cannot grant on what he does not MANAGE; a grant is replaced, not added to.
    bob = clean_environment() | {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": PASSWORDS["bob"]}
    args = ["grant", "alice", "--experiment", experiment, "--permission", "NO_PERMISSIONS", "--server", team.url]
    refused = run_module("server", args, tmp_path, bob)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: {team.url} refused user 'bob' a grant on experiment {experiment!r} (HTTP 403): only its owner "
        "(MANAGE) or the admin (MLFLOW_AUTH_ADMIN_PASSWORD) may grant on it"
    ]
    admin_command(["grant", "bob", "--experiment", experiment, "--permission", "READ", "--server", team.url], tmp_path)
    method, path, body, data = tampering(alices_work)["log a metric into her run"]
    assert call(team.url, method, path, "bob", body, data)[0] == 403


@pytest.mark.slow
def test_postgres_only_health_answers_without_a_login(team):
    anonymous = {
        path: call(team.url, "GET", path, None)[0]
        for path in (
            "/health",
            "/api/3.0/mlflow/server-info",  # MLflow's own basic-auth app answers it to anyone
            "/ajax-api/3.0/mlflow/server-info",
            "/static-files/index.html",  # MLflow's: to anyone too
            "/favicon.ico",
            "/",
            "/version",
            "/signup",
            "/graphql",
            "/metrics",
            "/api/2.0/mlflow/experiments/search?max_results=1",
            "/api/2.0/mlflow-artifacts/artifacts",
            "/v1/traces",
            "/no-such-page",
        )
    }
    assert anonymous == {"/health": 200} | {path: 401 for path in anonymous if path != "/health"}
    assert call(team.url, "GET", "/api/3.0/mlflow/server-info", "bob")[0] == 200
    assert call(team.url, "GET", "/static-files/index.html", "bob")[0] == 200
    assert call(team.url, "GET", "/version", "bob")[0] == 200


@pytest.mark.slow
def test_postgres_adding_an_existing_user_is_one_line_and_changes_nothing(team, as_alice, tmp_path):
    new_password = "new-" + secrets.token_hex(12)
    env = clean_environment() | {
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SIMPSONS_NEW_USER_PASSWORD": new_password,
    }
    result = run_module("server", ["add-user", "alice", "--server", team.url], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: user 'alice' already exists on {team.url}; nothing was changed"
    ]
    assert new_password not in result.stdout + result.stderr and "scrypt" not in result.stderr
    assert as_alice.search_experiments(max_results=1) is not None  # her password is the one it was


# No credential in a URI.


@pytest.mark.slow
def test_postgres_no_command_takes_a_password_in_a_uri_and_none_reaches_the_store_or_a_file(
    team, postgres, image_folders, tmp_path
):
    """Sentinels: the database's password in PGPASSWORD, alice's in MLFLOW_TRACKING_PASSWORD, and each
    also tried inside a URI by every command: all refused in one line that does not hold it, creating
    nothing. Then real runs with them in the environment only, straight into PostgreSQL and over HTTP;
    the database (pg_dump), the server's artifacts and log, every file the commands wrote
    (outputs/, multirun/, .hydra/, logs) and their console hold none of them."""
    server_with_password = team.url.replace("http://", f"http://alice:{PASSWORDS['alice']}@", 1)
    in_userinfo = postgres.replace("mlflow@", f"mlflow:{DATABASE_PASSWORD}@", 1)
    in_query, in_conninfo = (
        f"{postgres}?password={DATABASE_PASSWORD}",
        f"{postgres}?dbname=mlflow%20password%3D{DATABASE_PASSWORD}",
    )
    env = teammate(team.url, "alice") | {"PGPASSWORD": DATABASE_PASSWORD}
    admin = env | {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "SIMPSONS_NEW_USER_PASSWORD": "carol-" + "x" * 12}
    train = [*folder_data(image_folders), *TINY_MODEL, "epochs=1"]
    image = str(next(image_folders.rglob("*.jpg")))
    attempts = [
        ("train", [*train, f"tracking.uri={in_query}"], env),
        ("train", ["-m", *train, "dropout=0.1,0.2", f"tracking.uri={in_userinfo}"], env),
        ("train", [*train, f"tracking.uri={in_conninfo}"], env),
        ("train", train, env | {"MLFLOW_TRACKING_URI": server_with_password}),
        ("ensemble", [f"tracking.uri={in_query}"], env),
        ("ensemble", [], env | {"MLFLOW_TRACKING_URI": server_with_password}),
        ("report", ["--tracking-uri", in_query], env),
        ("predict", ["--tracking-uri", server_with_password, "--run", "0" * 32, image], env),
        ("server", ["--backend-store-uri", in_query, "--artifacts-destination", str(tmp_path / "artifacts")], admin),
        ("server", ["add-user", "carol", "--server", server_with_password], admin),
    ]
    outputs = []
    for module, args, environment in attempts:
        outputs.append(result := run_module(module, args, tmp_path, environment))
        assert result.returncode == 2, (module, args, result.stderr[-2000:])
        [line] = error_lines(module, result)
        assert "has a password in it" in line and "***" in line, line
    assert leaked_secrets("".join(o.stdout + o.stderr for o in outputs)) == []
    assert list(tmp_path.iterdir()) == []  # nothing created: no outputs/, multirun/, artifacts

    direct = [*train, f"tracking.uri={postgres}", "tracking.experiment=sentinel-direct"]
    outputs += [run_module("train", direct, tmp_path, env)]
    outputs += [run_module("train", [*train, "tracking.experiment=sentinel-http"], tmp_path, env)]
    outputs += [run_module("report", ["--experiment", "sentinel-http"], tmp_path, env)]
    assert [o.returncode for o in outputs[-3:]] == [0, 0, 0], outputs[-1].stderr[-3000:]
    dump = subprocess.run(
        [str(POSTGRES_BINARIES[-1].parent / "pg_dump"), "-h", "127.0.0.1", "-p", str(urlsplit(postgres).port)]
        + ["-U", "mlflow", "mlflow"],
        env=clean_environment() | {"PGPASSWORD": DATABASE_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "sentinel-direct" in dump and "sentinel-http" in dump  # the dump has the runs' data
    assert leaked_secrets(dump) == []
    assert leaked_secrets("".join(o.stdout + o.stderr for o in outputs)) == []
    assert leaked_secrets(team.log.read_text()) == []
    assert list(tmp_path.glob("outputs/*/*/.hydra/overrides.yaml"))  # Hydra's files are among those searched
    assert files_with_secrets(tmp_path) == []
    assert files_with_secrets(team.log.parent / "artifacts") == []


# The wrapper's death.


@pytest.mark.slow
def test_postgres_server_whose_wrapper_is_killed_dies_with_it_and_leaves_no_file(postgres, tmp_path):
    """kill -9 of `python -m simpsons.server` (it can run no handler): `mlflow server`, uvicorn and
    its workers end too, within a minute, and no file holds the server's auth config."""
    port, private = free_port(), tmp_path / "tmp"
    private.mkdir()
    command = [sys.executable, "-m", "simpsons.server", "--backend-store-uri", postgres, "--port", str(port)]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "2"]
    env = clean_environment() | {"PGPASSWORD": DATABASE_PASSWORD, "TMPDIR": str(private)}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    log = tmp_path / "server.log"
    with log.open("w") as output:
        wrapper = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    processes: list[psutil.Process] = []
    try:
        poll(lambda: "MLflow server ready" in log.read_text(), wrapper, log)
        processes = psutil.Process(wrapper.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in processes]
        assert sum("spawn_main" in c for c in commands) == 2, commands  # the two uvicorn workers
        assert leaked_secrets(" ".join(commands)) == []  # `ps` shows no password
        assert files_holding(private, "database_uri") == []  # nor does any file, while it serves
        wrapper.kill()
        wrapper.wait()
        alive = lambda: [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
        deadline = time.monotonic() + 60
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive() == [], [" ".join(p.cmdline()) for p in alive()]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert files_holding(private, "database_uri") == []


def poll(condition: Callable[[], bool], process: subprocess.Popen, log: Path, seconds: float = 300) -> bool:
    """True once `condition()` is; fails if the process ends first or at the deadline (a hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"not seen before the server ended or {seconds:g} s passed: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    return True
