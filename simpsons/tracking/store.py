"""The MLflow store: its URI, its setup under an inter-process lock, and experiments (provenance: provenance.py).

No TensorFlow here: every command, the read side included, starts with this module.

SQLite stores are set up once, under a lock file beside the database: creating the schema (or
upgrading it) from several processes at once leaves alembic's temporary tables behind and the
store unusable, and so does racing to create the experiment. The database runs in WAL mode, so
readers (`mlflow ui`, `report`, a liveness check) never wait for a writer; writers wait for each
other (MLflow's busy timeout) instead of failing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import re
import shlex
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import mlflow
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from simpsons import credentials, locks
from simpsons.errors import ConfigError
from simpsons.tracking import connection
from simpsons.tracking.sqlite import SQLITE_PREFIX, absolute_sqlite_uri, lock_file, sqlite_path

DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https")
ACCEPTED_URIS = "sqlite:///path/to/mlflow.db, http(s)://host:port of an mlflow server, or postgresql/mysql/mssql://..."
PROBE_SECONDS = 5  # each reachability check; a bad store fails in one line well within 10 s
# MLflow's client reads a server's credentials from these; so does the probe, to check them first.
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
TOKEN_VARIABLE = "MLFLOW_TRACKING_TOKEN"
SEARCH_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
PERMISSION_PROBE = "/api/3.0/mlflow/users/permissions/get"  # MLflow's auth app: a user may ask about themselves
WRITING_PERMISSIONS = ("EDIT", "MANAGE")
LOGIN_PROBE_SECONDS = 30  # a server that answered /health: its first search may wait for the store
SCHEMA_LOCK = "simpsons: the MLflow schema"  # the name of the PostgreSQL advisory lock held to set it up


def configure(uri: str, retry_seconds: int | None = None) -> str:
    """Check `uri`, set up its store if needed, and make it MLflow's; returns the URI used.

    A relative SQLite path is made absolute. Raises ConfigError (one line) for a store that
    cannot be used: an unknown scheme, a folder that cannot be written, a server that does not
    answer (ServerUnreachable), a database that refuses the connection. With `retry_seconds`
    (tracking.retry_seconds), a server's requests are given up after that long (connection.py).
    """
    _refuse_password_in(uri)
    uri = absolute_sqlite_uri(uri)
    if uri.startswith(SQLITE_PREFIX):
        _commit_without_fsync()
        _prepare_sqlite(sqlite_path(uri))
    else:
        _check_remote(uri)
        if urlsplit(uri).scheme.split("+")[0] == "postgresql":
            _prepare_postgres(uri)
        if retry_seconds is not None:
            connection.configure(uri, retry_seconds)
    mlflow.set_tracking_uri(uri)
    return uri


@functools.cache
def _commit_without_fsync() -> None:
    """Every SQLite connection MLflow opens from now on commits with synchronous=NORMAL.

    In WAL mode a commit then appends to the log without waiting for the disk: a kill -9 loses
    nothing, since the log is in the OS's cache, and a power cut may undo the last commits but
    never corrupts the store (SQLite's documented guarantee). It saves about 6 ms a commit, and a
    cached training run commits some 60 times: a sixth of its cost.
    """

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _normal_sync(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA synchronous=NORMAL")


def check(uri: str) -> None:
    """Raise ConfigError (one line) unless `uri` names a store this process can use; creates nothing.

    What configure() would find, without creating the database, its folder or its lock file, so
    that a config that fails another check leaves no store behind.
    """
    _refuse_password_in(uri)
    uri = absolute_sqlite_uri(uri)
    if uri.startswith(SQLITE_PREFIX):
        _check_sqlite(sqlite_path(uri))
    else:
        _check_remote(uri)


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (or in the folders to be made for it), or None.

    os.access asks the kernel as this process's user would write: a read-only mount is refused
    (EROFS) even to root, who passes every permission check on a chmod'ed folder.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{existing} is not writable"
    return None


def _check_sqlite(path: Path) -> None:
    uri = SQLITE_PREFIX + str(path)
    problem = folder_problem(path.parent)
    if problem is not None:  # SQLite writes its journal and our lock file beside the database
        raise ConfigError(
            f"tracking.uri={uri}: cannot write in {path.parent} ({problem}); use a store in a writable folder"
        )
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"tracking.uri={uri}: {path} is not a file; use a path to a SQLite database file")
    # Asked through SQLite, never by opening the file: closing any other descriptor of the database
    # file drops every POSIX lock this process's SQLite connections hold on it (SQLite's "how to
    # corrupt" §2.2). A job checks its config while the sweep's connections are open; another
    # process, seeing no lock, then checkpoints and deletes the WAL under them ("database disk
    # image is malformed"). An empty file is a new database to SQLite.
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)) as database:
            database.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"tracking.uri={uri}: not a usable SQLite database ({error})") from error


@functools.cache
def _prepare_sqlite(path: Path) -> None:
    """Create or upgrade the schema, once, under the store's lock (once per process too)."""
    uri = SQLITE_PREFIX + str(path)
    try:  # trying beats os.access: root passes every permission check, but not a read-only mount
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_file(path)
    except OSError as error:
        raise ConfigError(
            f"tracking.uri={uri}: cannot write in {path.parent} ({error.strerror}); use a store in a writable folder"
        ) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
            MlflowClient(uri).search_experiments(max_results=1)  # creates or checks the schema
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"tracking.uri={uri}: not a usable SQLite database ({error})") from error
        except MlflowException as error:
            raise ConfigError(f"tracking.uri={uri}: {str(error).splitlines()[0]}") from error


def check_server(uri: str) -> None:
    """Raise ServerUnreachable unless the server at `uri` answers now, within PROBE_SECONDS + 1 s
    (nothing to check for other stores): a quick look before requests that would retry for long."""
    if urlsplit(uri).scheme in SERVER_SCHEMES:
        _within_deadline(uri, _probe_server, unanswered=ServerUnreachable)


def _check_remote(uri: str) -> None:
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in SERVER_SCHEMES:
        _within_deadline(uri, _probe_server, unanswered=ServerUnreachable)
        _within_deadline(uri, _probe_login, LOGIN_PROBE_SECONDS)
    elif scheme in DATABASE_SCHEMES:
        _within_deadline(uri, _probe_database)
    else:
        raise ConfigError(f"tracking.uri={redact_uri(uri)!r} is not a supported store; use {ACCEPTED_URIS}")


def check_database(uri: str, key: str) -> None:
    """Raise ConfigError (one line naming `key`) unless the database at `uri` (postgresql://,
    mysql://, ...) lets this process connect, within PROBE_SECONDS + 1 s; creates nothing."""
    _within_deadline(uri, functools.partial(_probe_database, key=key), key=key)


def _within_deadline(
    uri: str,
    probe: Callable[[str], None],
    seconds: float | None = None,
    unanswered: type[ConfigError] = ConfigError,
    key: str = "tracking.uri",
) -> None:
    """Run `probe(uri)`, but answer within `seconds` (PROBE_SECONDS) + 1 s whatever it does.

    Socket timeouts do not bound everything a probe waits for: a hanging DNS look-up, or a
    database driver that ignores connect_timeout. The probe goes on in a daemon thread, harmlessly.
    A probe that does not answer in time raises `unanswered`.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            probe(uri)
            outcome.append(None)
        except BaseException as error:  # handed to the caller's thread
            outcome.append(error)

    thread = threading.Thread(target=run, name="store-probe", daemon=True)
    thread.start()
    limit = (PROBE_SECONDS if seconds is None else seconds) + 1
    thread.join(limit)
    if not outcome:
        raise unanswered(f"{key}={redact_uri(uri)}: no answer within {limit:g} s")
    if outcome[0] is not None:
        raise outcome[0]


class ServerUnreachable(ConfigError):
    """No MLflow server answers at the URI: in a sweep's job, the server the sweep started with is lost."""


def _probe_server(uri: str) -> None:
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachable(f"tracking.uri={redact_uri(uri)}: no MLflow server answers ({reason})") from error


def _probe_login(uri: str) -> None:
    """The server lets this process's user in (MLFLOW_TRACKING_USERNAME/PASSWORD), or needs no login.

    A search of experiments is what any user may do, so a refusal there is about the credentials,
    not the user's permissions. It may take seconds more than /health: a server worker's first
    request sets up its connection to the store.
    """
    search = urllib.request.Request(uri.rstrip("/") + SEARCH_PROBE, headers=_credential_headers())
    try:
        urllib.request.urlopen(search, timeout=LOGIN_PROBE_SECONDS).close()
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise ConfigError(_refused(uri)) from error
        raise ConfigError(
            f"tracking.uri={redact_uri(uri)}: the server answered HTTP {error.code} ({error.reason})"
        ) from error
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"tracking.uri={redact_uri(uri)}: the server did not answer a search ({reason})") from error


def _refuse_password_in(uri: str) -> None:
    """A password inside a URI (userinfo or query, simpsons/credentials.py) would reach the logs,
    the run's overrides tag and the .hydra files logged with every run: refused for every scheme."""
    error = credentials.password_error("tracking.uri", uri)
    if error is not None:
        raise ConfigError(error)


def _credential_headers() -> dict[str, str]:
    """The Authorization header MLflow's client would send (basic auth, else a bearer token)."""
    username, password = os.environ.get(USERNAME_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if username and password:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if os.environ.get(TOKEN_VARIABLE):
        return {"Authorization": f"Bearer {os.environ[TOKEN_VARIABLE]}"}
    return {}


def _refused(uri: str) -> str:
    """One line: the server, the user it refused, and which variables to fix."""
    fix = f"set {USERNAME_VARIABLE} and {PASSWORD_VARIABLE} to your user on that server"
    username = os.environ.get(USERNAME_VARIABLE)
    if username and os.environ.get(PASSWORD_VARIABLE):
        return (
            f"tracking.uri={redact_uri(uri)} refused user {username!r} (HTTP 401: wrong username or password); "
            f"fix {USERNAME_VARIABLE} and {PASSWORD_VARIABLE}"
        )
    if username or os.environ.get(PASSWORD_VARIABLE):
        missing = PASSWORD_VARIABLE if username else USERNAME_VARIABLE
        return f"tracking.uri={redact_uri(uri)} refused the request (HTTP 401): {missing} is not set; {fix}"
    return f"tracking.uri={redact_uri(uri)} refuses anonymous access (HTTP 401); {fix}"


def _probe_database(uri: str, key: str = "tracking.uri") -> None:
    import sqlalchemy  # MLflow's own dependency; only these stores need it here

    scheme = urlsplit(uri).scheme
    connect_args = {"connect_timeout": PROBE_SECONDS} if scheme.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
        with engine.connect():
            pass
    except ModuleNotFoundError as error:
        raise ConfigError(f"{key}={redact_uri(uri)}: its driver is not installed ({error.name})") from error
    except Exception as error:  # sqlalchemy wraps every driver's own errors differently
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(f"{key}={redact_uri(uri)}: cannot connect ({reason})") from error


@functools.cache
def _prepare_postgres(uri: str) -> None:
    """Create or check the schema of a PostgreSQL store, once, under a lock of that database.

    MLflow creates the tables of an empty database on its first access, without a lock: processes
    that start together on a new database fail (`duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"`). An advisory lock belongs to the database, so it holds for
    processes on any machine, and PostgreSQL drops it with the connection of a process that dies.
    """
    try:
        with locks.postgres_advisory(uri, SCHEMA_LOCK, {"connect_timeout": PROBE_SECONDS}):
            MlflowClient(uri).search_experiments(max_results=1)  # creates or checks the schema
    except (MlflowException, TimeoutError) as error:
        raise ConfigError(f"tracking.uri={redact_uri(uri)}: {str(error).splitlines()[0]}") from error


def experiment_description(data_name: str | None) -> str:
    """What a new experiment's page says of it (the `mlflow.note.content` tag, the UI's Description)."""
    on = f" on the `{data_name}` data set" if data_name else ""
    return (
        f"Transfer-learning image classifiers{on}, trained by `python -m simpsons.train`: a sweep is a parent "
        "run with its jobs (and its ensembles, `python -m simpsons.ensemble`) nested under it. A run's "
        "headline metrics (`best_*`) are those of the epoch it kept; `python -m simpsons.report` tabulates them."
    )


def ensure_experiment(uri: str, name: str, data_name: str | None = None) -> str:
    """The experiment's id, created if needed (once, under the store's lock), with a description
    that names the data set of the command that creates it (experiment_description).

    With a SQLite store, artifacts go beside the database, whatever the working directory:
    mlflow.db keeps them in mlruns/, any other X.db in X-mlruns/, so two stores in one folder
    never share an artifact folder. A server or other database keeps its own artifact root.
    """
    from simpsons.tracking import races  # it takes the store's lock (sqlite.store_lock), or retries

    client = MlflowClient(uri)

    def existing_or_new() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise ConfigError(
                f"tracking.experiment={name!r} is deleted in {redact_uri(uri)}; restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
            )
        if experiment is not None:
            check_can_write(uri, "experiment", name, experiment.experiment_id)
            return experiment.experiment_id
        tags = {"mlflow.note.content": experiment_description(data_name)}
        return client.create_experiment(name, artifact_location=artifact_location(uri, name), tags=tags)

    return races.shared_write(uri, existing_or_new, f"experiment {name!r}")


def check_can_write(uri: str, kind: str, name: str, resource_id: str) -> None:
    """On a server with basic auth, raise ConfigError (one line) unless this process's user may
    write into the experiment or registered model (`kind`): MLflow would refuse the first write
    with HTTP 403, mid-run. Another user's is READ for them unless its owner or the admin granted
    more (docs/scaling-out.md). Asked of MLflow's own permission check; a server without it passes."""
    permission = _permission(uri, kind, resource_id)
    if permission is not None and permission not in WRITING_PERMISSIONS:
        raise ConfigError(_cannot_write(uri, kind, name, permission))


def check_can_register(client: MlflowClient, name: str) -> None:
    """check_can_write for a registered model; one that does not exist yet is its first registrant's."""
    permission = _permission(client.tracking_uri, "registered_model", name)
    if permission is None or permission in WRITING_PERMISSIONS:
        return
    try:
        client.get_registered_model(name)
    except MlflowException:
        return  # no such model: MLflow answers the default permission for a name nobody holds
    raise ConfigError(_cannot_write(client.tracking_uri, "registered_model", name, permission))


def _cannot_write(uri: str, kind: str, name: str, permission: str) -> str:
    key, flag = {
        "experiment": ("tracking.experiment", "--experiment"),
        "registered_model": ("registered_model", "--registered-model"),
    }[kind]
    user = os.environ[USERNAME_VARIABLE]
    return (
        f"{key}={name!r} on {redact_uri(uri)}: user {user!r} has {permission} on it, not EDIT; use one of your own "
        f"({key}=NAME), or have its owner or the server's admin run: "
        f"python -m simpsons.server grant {shlex.quote(user)} {flag} {shlex.quote(name)} --permission EDIT"
    )


def _permission(uri: str, kind: str, resource_id: str) -> str | None:
    """This process's user's permission on a resource of the server at `uri`, or None where there is
    no such answer (no server, no basic-auth user, a server without MLflow's auth app)."""
    if urlsplit(uri).scheme not in SERVER_SCHEMES or not os.environ.get(USERNAME_VARIABLE):
        return None
    query = urlencode({"username": os.environ[USERNAME_VARIABLE], "resource_type": kind, "resource_id": resource_id})
    request = urllib.request.Request(f"{uri.rstrip('/')}{PERMISSION_PROBE}?{query}", headers=_credential_headers())
    try:
        with urllib.request.urlopen(request, timeout=LOGIN_PROBE_SECONDS) as response:
            return str(json.loads(response.read()).get("permission")) or None
    except (OSError, ValueError):  # HTTPError included: the write itself will say what is wrong
        return None


def artifact_location(uri: str, experiment: str) -> str | None:
    if not uri.startswith(SQLITE_PREFIX):
        return None
    database = sqlite_path(uri)
    folder = "mlruns" if database.stem == "mlflow" else f"{database.stem}-mlruns"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (database.parent / folder / slug).as_uri()


def redact_uri(uri: str) -> str:
    """The URI without a password, in its userinfo or its query (simpsons/credentials.py)."""
    return credentials.redact_uri(uri)
