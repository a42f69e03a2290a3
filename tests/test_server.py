"""The team tracking server: a real PostgreSQL, the real `mlflow server` with basic auth, started by
`python -m simpsons.server`, and the real CLIs pointed at it over HTTP as a team's users would.

Each pytest-xdist worker that runs these tests starts its own PostgreSQL and server, on free ports
and in folders of its own, so workers never share one.
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import leftovers
import mlflow
import psutil
import pytest
from conftest import TINY_MODEL, folder_data, free_port, serving
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons import server as team_server
from simpsons.tracking import schema

POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
# Fresh per test session: whatever leaks is found by its value, which nothing else could contain.
ADMIN_PASSWORD = "admin-" + secrets.token_hex(12)
PASSWORDS = {"alice": "alice-" + secrets.token_hex(12), "bob": "bob-" + secrets.token_hex(12)}
DATABASE_PASSWORD = "database-" + secrets.token_hex(12)
SECRETS = [ADMIN_PASSWORD, DATABASE_PASSWORD, *PASSWORDS.values()]
JOBLIB_2 = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
COMMAND_SECONDS = 900


class Server(NamedTuple):
    url: str
    log: Path


def clean_environment() -> dict[str, str]:
    """This process's environment without any MLflow setting (as a new shell would have it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PGPASSWORD"}


def teammate(url: str, user: str | None, password: str | None = None) -> dict[str, str]:
    """The environment of a teammate pointing runs at `url`, as the README says."""
    env = {**clean_environment(), "MLFLOW_TRACKING_URI": url}
    if user is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[user]}
    return env


def simpsons(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m simpsons.MODULE ARGS` in `cwd`, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", f"simpsons.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def psql_command(binaries: Path, socket_dir: Path, port: int, sql: str) -> list[str]:
    return [
        str(binaries / "psql"),
        *("-h", str(socket_dir), "-p", str(port), "-U", "postgres", "-d", "postgres"),
        *("-v", "ON_ERROR_STOP=1", "-q", "-c", sql),
    ]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL in a temporary folder, on 127.0.0.1 and a free port, with a database
    `mlflow` owned by a user `mlflow` whose password is DATABASE_PASSWORD; yields its URI (no password).

    initdb refuses to run as root: as root, the cluster belongs to Debian's `postgres` user.
    """
    if not POSTGRES_BINARIES:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    binaries = POSTGRES_BINARIES[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="simpsons-postgres-"))  # short: the socket path has a length limit
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run(
        [*as_owner, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust"]
        + ["--auth-host=scram-sha-256"],
        **run,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_owner, str(binaries / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-l", str(folder / "postgres.log"), "-w", "-t", "120", "-o", options, "start"], **run)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    with leftovers.recorded(postmaster, leftovers.POSTMASTER, folder):  # until it is stopped
        try:
            for sql in (
                f"CREATE ROLE mlflow LOGIN PASSWORD '{DATABASE_PASSWORD}'",
                "CREATE DATABASE mlflow OWNER mlflow",
            ):
                subprocess.run([*as_owner, *psql_command(binaries, folder, port, sql)], **run)
            yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
            shutil.rmtree(folder, ignore_errors=True)


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
            added = simpsons("server", ["add-user", user, "--server", url], folder, clean_environment() | admin)
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


# Starting the server: bad input in one line, before anything starts.


def test_the_server_will_not_start_without_an_admin_password(capsys):
    os.environ.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)  # the test process never has it
    code = team_server.main(["--backend-store-uri", "postgresql://mlflow@db/mlflow", "--artifacts-destination", "a"])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line.startswith("error: MLFLOW_AUTH_ADMIN_PASSWORD is not set;")


def test_the_server_refuses_a_short_admin_password_a_password_in_the_uri_and_other_stores(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "short")
    assert team_server.main(["--backend-store-uri", "postgresql://m@db/m", "--artifacts-destination", "a"]) == 2
    assert "MLFLOW_AUTH_ADMIN_PASSWORD is 5 characters long; MLflow needs at least 12" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    assert team_server.main(["--backend-store-uri", "postgresql://m:pw@db/m", "--artifacts-destination", "a"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: --backend-store-uri=postgresql://m:***@db/m has a password in it; "
        "leave it out and set PGPASSWORD (or use ~/.pgpass) instead"
    )
    assert team_server.main(["--backend-store-uri", "sqlite:///x.db", "--artifacts-destination", "a"]) == 2
    assert "is not a PostgreSQL URI; use postgresql://USER@HOST:PORT/DATABASE" in capsys.readouterr().err


def test_the_auth_config_is_private_and_gone_after_the_server():
    with team_server._auth_config("postgresql://mlflow@db/mlflow", "EDIT") as path:
        assert path.stat().st_mode & 0o777 == 0o600
        assert not path.is_relative_to(Path(team_server.__file__).parent.parent)  # never in the repository
        text = path.read_text()
        assert "database_uri = postgresql://mlflow@db/mlflow" in text
        assert "default_permission = EDIT" in text
        assert "password" not in text  # MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD
    assert not path.exists()
    with team_server._auth_config("postgresql://ml%40flow@db/mlflow", "READ") as path:
        parser = configparser.ConfigParser()  # as MLflow reads it
        parser.read(path)
        assert parser["mlflow"]["database_uri"] == "postgresql://ml%40flow@db/mlflow"


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
            result = simpsons(module, args, tmp_path, env)
            assert result.returncode == 2, (module, result.stderr[-3000:])
            assert error_lines(module, result) == [expected], module
    assert not list(tmp_path.rglob("multirun"))  # nothing started: no sweep folder, no experiment
    assert as_alice.get_experiment_by_name("simpsons") is None

    wrong_admin = simpsons(
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
    result = simpsons("train", [*folder_data(image_folders), *TINY_MODEL], tmp_path, teammate(url, None))
    assert result.returncode == 2
    assert leaked_secrets(result.stdout + result.stderr) == []
    assert result.stderr.strip().splitlines() == [
        f"error: tracking.uri=http://alice:***@127.0.0.1:{url.rsplit(':', 1)[1]} has a password in it; "
        "leave it out and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    ]


@pytest.mark.slow
def test_postgres_sweep_of_four_jobs_two_at_a_time_over_http_then_ensemble_and_report(team, as_alice, tmp_path):
    env = teammate(team.url, "alice")
    sweep = ["-m", "experiment=demo", f"data.dir={tmp_path / 'demo'}", *TINY_MODEL, "epochs=2", *JOBLIB_2]
    sweep += ["tracking.experiment=team-sweep"]
    outputs = [simpsons("train", sweep, tmp_path, env)]
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
    assert all(len(as_alice.get_metric_history(c.info.run_id, "val_accuracy")) == 2 for c in children)
    # The parent's outcome, from the runs two joblib workers wrote, and where to see it
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"]) == (4, 0)
    names = sorted(c.info.run_name for c in children)
    assert names == [f"{o} {d}" for o in ("adam", "rmsprop") for d in ("0.2", "0.5")]
    assert f"open {team.url} in a browser" in outputs[0].stdout

    ensemble = simpsons("ensemble", ["tracking.experiment=team-sweep", "sweep=latest", "top_n=4"], tmp_path, env)
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    [ensemble_run] = [r for r in runs_of(as_alice, "team-sweep") if run_type(r) == "ensemble"]
    assert ensemble_run.info.status == "FINISHED"
    assert set(ensemble_run.data.tags[schema.MEMBERS].split(",")) == {c.info.run_id for c in children}
    report = simpsons("report", ["--experiment", "team-sweep", "--sweep", "latest"], tmp_path, env)
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
    """Four processes at once on a new experiment: they race to create it, and bob writes into the
    experiment alice may have created (the server's default permission is EDIT)."""
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
    assert all(len(as_alice.get_metric_history(r.info.run_id, "val_accuracy")) == 2 for r in runs)
    assert files_with_secrets(tmp_path) == []


@pytest.mark.slow
def test_postgres_server_restarted_with_another_admin_password_warns_and_stops_whole(team, postgres, tmp_path):
    """A second start on the same database: the admin exists, so MLflow ignores the new password,
    and the server says so. Its auth config is private while it runs; stopped, nothing is left."""
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
        [config] = private.glob("simpsons-basic-auth-*.ini")
        assert config.stat().st_mode & 0o777 == 0o600
        processes = psutil.Process(server.pid).children(recursive=True)
        assert processes  # mlflow server, its uvicorn and worker
    finally:
        server.terminate()
        server.wait(timeout=120)
    assert warning
    [line] = [line for line in log.read_text().splitlines() if line.startswith("warning: ")]
    assert line.startswith(f"warning: http://127.0.0.1:{port} refused admin user 'admin' (HTTP 401: wrong password)")
    assert list(private.glob("simpsons-basic-auth-*")) == []  # (MLflow leaves its own db_init_lock file)
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def poll(condition: Callable[[], bool], process: subprocess.Popen, log: Path, seconds: float = 300) -> bool:
    """True once `condition()` is; fails if the process ends first or at the deadline (a hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"not seen before the server ended or {seconds:g} s passed: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    return True
