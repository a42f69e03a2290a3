"""`python -m simpsons.server`: the team's MLflow tracking server, and its users.

    MLFLOW_AUTH_ADMIN_PASSWORD=... PGPASSWORD=... python -m simpsons.server \\
        --backend-store-uri postgresql://mlflow@dbhost:5432/mlflow --artifacts-destination /srv/mlflow-artifacts
    MLFLOW_AUTH_ADMIN_PASSWORD=... SIMPSONS_NEW_USER_PASSWORD=... python -m simpsons.server add-user alice
    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m simpsons.server grant bob --experiment simpsons --permission EDIT

The first runs MLflow's `mlflow server` with a PostgreSQL backend store, proxied artifacts and MLflow's
basic-auth app (with simpsons/server_app.py around it), on 127.0.0.1 unless `--host` says otherwise;
the others add a user, and grant a user a permission on one experiment or registered model, through
the server's REST API as its admin (a grant also as the owner). No TensorFlow here.

Safe by default: every user reads everything and writes only what they created (MLflow makes a
creator MANAGE its experiment or registered model) or were granted with `grant`; nobody but the
admin deletes others' work. Only /health answers without a login (simpsons/server_app.py).

Secrets come from the environment only, never from a default or the command line (where `ps` shows
them): the admin password from MLFLOW_AUTH_ADMIN_PASSWORD (MLflow's own variable; it creates the
admin user on the first start and is ignored once that user exists), the database's password from
libpq's PGPASSWORD or ~/.pgpass. A URI with a password in it is refused (simpsons/credentials.py).
MLflow's auth config is handed to the server in the environment and never written to a file; the
server dies with this process, even when it is killed with SIGKILL (simpsons/server_app.py).
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import getpass
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType
from urllib.parse import quote, urlencode, urlsplit

from simpsons import credentials
from simpsons.server_app import CONFIG_VARIABLE, WRAPPER_VARIABLE

ADMIN_PASSWORD_VARIABLE = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own: read by the auth app itself
ADMIN_USERNAME_VARIABLE = "MLFLOW_AUTH_ADMIN_USERNAME"
NEW_USER_PASSWORD_VARIABLE = "SIMPSONS_NEW_USER_PASSWORD"
SECRET_KEY_VARIABLE = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # CSRF key of the auth app's sign-up form
DEFAULT_ADMIN = "admin"
DEFAULT_PORT = 5000
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "READ"  # read everything, write only what one created or was granted
# How long a worker trusts a user's password once checked. MLflow checks it with scrypt, 0.2 s of CPU
# here, several times a request (before it, then as it looks up the user's admin flag and
# permissions): a job's few hundred requests cost minutes of the server's CPU. Its own cache (off in
# MLflow by default) keeps a check for this long, at the price of a removed user, a changed password
# or a removed admin flag taking up to this long to reach every worker.
DEFAULT_AUTH_CACHE_SECONDS = 60
MIN_PASSWORD_LENGTH = 12  # MLflow refuses shorter passwords
BACKEND_SCHEMES = ("postgresql", "postgresql+psycopg")
APP_NAME = "simpsons"  # the mlflow.app entry point (pyproject.toml): simpsons/server_app.py
APP = "simpsons.server_app:create_app"
START_SECONDS = 120  # for the server to answer /health after it was started
STOP_SECONDS = 30  # for the server's processes to end after SIGTERM, before SIGKILL
BOOTSTRAP_SECONDS = 120
REQUEST_SECONDS = 30


class ServerError(Exception):
    """A problem the user can fix; printed as one line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["add-user"]:
            return add_user(add_user_parser().parse_args(argv[1:]))
        if argv[:1] == ["grant"]:
            return grant(grant_parser().parse_args(argv[1:]))
        return serve(start_parser().parse_args(argv))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# Starting the server.


def start_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpsons.server",
        description="Start the team's MLflow server: PostgreSQL store, proxied artifacts, basic auth "
        f"(admin password from {ADMIN_PASSWORD_VARIABLE}). `python -m simpsons.server add-user NAME` adds a user, "
        "`python -m simpsons.server grant NAME --experiment E --permission EDIT` lets them write in another's.",
    )
    parser.add_argument(
        "--backend-store-uri",
        required=True,
        help="postgresql://USER@HOST:PORT/DATABASE; its password from PGPASSWORD or ~/.pgpass, not the URI",
    )
    parser.add_argument(
        "--artifacts-destination",
        required=True,
        help="where the server keeps artifacts: a folder, or an object store URI (s3://...)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    parser.add_argument(
        "--allowed-hosts",
        help="host names teammates reach it by, e.g. mlflow.lab:5000 (MLflow already allows localhost and private IPs)",
    )
    parser.add_argument("--workers", type=int, default=4, help="server worker processes (4)")
    parser.add_argument(
        "--auth-database-uri", help="where users and permissions live (default: the backend store's database)"
    )
    parser.add_argument(
        "--default-permission",
        choices=PERMISSIONS,
        default=DEFAULT_PERMISSION,
        help=f"what every user may do with experiments and models others created ({DEFAULT_PERMISSION}: read "
        "them; EDIT: also write into them, which lets anyone change anyone's runs, models and aliases)",
    )
    parser.add_argument(
        "--auth-cache-seconds",
        type=_seconds,
        default=DEFAULT_AUTH_CACHE_SECONDS,
        help=f"how long a worker trusts a checked password ({DEFAULT_AUTH_CACHE_SECONDS}; 0: check it on every "
        "request, at 0.2 s of CPU each); a changed password or removed user reaches every worker within this",
    )
    return parser


def _seconds(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds (0 or more)")
    return seconds


def serve(args: argparse.Namespace) -> int:
    """Check everything, then run `mlflow server` until it exits or this process is stopped."""
    backend = _checked_backend("--backend-store-uri", args.backend_store_uri)
    auth_database = _checked_backend("--auth-database-uri", args.auth_database_uri or backend)
    _admin_password()  # missing or too short: refuse before anything starts
    if error := credentials.password_error("--artifacts-destination", args.artifacts_destination):
        raise ServerError(error)
    _check_app_installed()
    _check_database("--backend-store-uri", backend)
    if auth_database != backend:
        _check_database("--auth-database-uri", auth_database)
    artifacts = _artifacts_destination(args.artifacts_destination)
    env = server_environment(auth_config_text(auth_database, args.default_permission, args.auth_cache_seconds))
    _bootstrap(env)
    command = mlflow_server_command(args, backend, artifacts)
    url = f"http://{_connectable(args.host)}:{args.port}"
    print(
        f"starting the MLflow server at http://{args.host}:{args.port}: store {backend}, "
        f"artifacts {artifacts}, users in {auth_database}, default permission {args.default_permission}",
        file=sys.stderr,
        flush=True,
    )
    return _run(command, env, url)


def server_environment(config_text: str) -> dict[str, str]:
    """The server's environment: this one, plus its auth config and who to die with."""
    import psutil

    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_AUTH_CONFIG_PATH"}
    env[CONFIG_VARIABLE] = config_text
    env[WRAPPER_VARIABLE] = f"{os.getpid()}:{psutil.Process().create_time()!r}"
    # One key per start is enough for one server: it only guards the sign-up form, and every
    # worker of this server inherits the same one. Several servers behind one address need one key.
    env.setdefault(SECRET_KEY_VARIABLE, secrets.token_hex(32))
    # MLflow's GenAI job runner (scorers, prompt optimisation) is of no use to this project, and
    # MLflow gives it its internal token only under the app name `basic-auth`: off.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def mlflow_server_command(args: argparse.Namespace, backend: str, artifacts: str) -> list[str]:
    # MLflow refuses requests whose Host header it does not know (DNS rebinding): a server reached
    # by name needs that name listed.
    allowed = ["--allowed-hosts", args.allowed_hosts] if args.allowed_hosts else []
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        APP_NAME,
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        *allowed,
    ]


def _checked_backend(name: str, uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in BACKEND_SCHEMES:
        raise ServerError(
            f"{name}={credentials.redact_uri(uri)!r} is not a PostgreSQL URI; use postgresql://USER@HOST:PORT/DATABASE"
        )
    if error := credentials.password_error(name, uri):  # `ps` shows a server's command line to every user
        raise ServerError(error)
    return uri


def _admin_password() -> str:
    password = os.environ.get(ADMIN_PASSWORD_VARIABLE, "")
    if not password:
        raise ServerError(
            f"{ADMIN_PASSWORD_VARIABLE} is not set; set it to the admin password "
            f"(at least {MIN_PASSWORD_LENGTH} characters) in the environment, never on the command line"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServerError(
            f"{ADMIN_PASSWORD_VARIABLE} is {len(password)} characters long; MLflow needs at least {MIN_PASSWORD_LENGTH}"
        )
    return password


def _artifacts_destination(destination: str) -> str:
    """A local folder made absolute (and created), or an object store's URI as given."""
    if "://" in destination:
        return destination
    folder = Path(destination).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServerError(
            f"--artifacts-destination={destination}: cannot create {folder} ({error.strerror}); use a writable folder"
        ) from error
    return str(folder)


def _check_app_installed() -> None:
    if not any(e.name == APP_NAME and e.value == APP for e in entry_points(group="mlflow.app")):
        raise ServerError(
            f"MLflow does not know the app {APP_NAME!r} (the mlflow.app entry point of this project); "
            "reinstall the project: pip install -e '.[server]'"
        )


def _check_database(name: str, uri: str) -> None:
    from simpsons.errors import ConfigError
    from simpsons.tracking import store  # MLflow: loaded only to start a server

    try:
        store.check(uri)
    except ConfigError as error:
        raise ServerError(str(error).replace("tracking.uri=", f"{name}=", 1)) from error


def auth_config_text(
    database_uri: str, default_permission: str, auth_cache_seconds: int = DEFAULT_AUTH_CACHE_SECONDS
) -> str:
    """MLflow's basic_auth.ini for this server. It holds no secret: the database URI has no
    password (refused), and MLflow reads the admin's from MLFLOW_AUTH_ADMIN_PASSWORD."""
    values = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": str(auth_cache_seconds),
    }
    config = configparser.ConfigParser(interpolation=None)
    # MLflow reads the file with interpolation: a URI's %-escapes (%40 for @) are written as %%.
    config["mlflow"] = {key: value.replace("%", "%%") for key, value in values.items()}
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def _bootstrap(env: dict[str, str]) -> None:
    """Create the users' tables and the admin user once, before any worker starts, as `mlflow
    server` does for its own basic-auth app: a failure is one line here, not workers that uvicorn
    restarts for ever. In a process of its own, so this one, which lives as long as the server,
    never loads MLflow's server."""
    result = subprocess.run(
        [sys.executable, "-m", "simpsons.server_app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOOTSTRAP_SECONDS,
    )
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        raise ServerError(errors[-1].removeprefix("error: ") if errors else f"{result.stderr.strip()[-500:]}")


def _run(command: list[str], env: dict[str, str], url: str) -> int:
    """Run the server in a session (and process group) of its own; SIGINT/SIGTERM stop the whole
    group (mlflow's uvicorn and its workers are children of `mlflow server`, which does not stop
    them itself). If this process is killed instead, the workers kill the group (server_app.py)."""
    server = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if _wait_until_up(server, url):
            _warn_if_admin_password_is_stale(url)
        return server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_group(server)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to what is left after STOP_SECONDS."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while _group_alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


def _group_alive(server: subprocess.Popen) -> bool:
    """Any process of the server's group still running (zombies, left for init to reap, do not count)."""
    import psutil

    server.poll()  # reaps `mlflow server` itself
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == server.pid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def _wait_until_up(server: subprocess.Popen, url: str) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            print(f"MLflow server ready at {url}", file=sys.stderr, flush=True)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _warn_if_admin_password_is_stale(url: str) -> None:
    """MLflow uses the admin password only to create the admin user; once that user exists a changed
    MLFLOW_AUTH_ADMIN_PASSWORD is silently ignored. Say so instead."""
    admin = os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN
    try:
        _request(url, f"/api/2.0/mlflow/users/get?username={quote(admin)}", (admin, _admin_password()))
    except ServerError as error:
        print(f"warning: {error}", file=sys.stderr, flush=True)


# Adding a user, granting a permission.


def add_user_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpsons.server add-user",
        description=f"Add a user to the team's MLflow server, as its admin (password from {ADMIN_PASSWORD_VARIABLE}). "
        f"The new user's password comes from {NEW_USER_PASSWORD_VARIABLE}, else a prompt.",
    )
    parser.add_argument("username")
    _add_server_argument(parser)
    return parser


def add_user(args: argparse.Namespace) -> int:
    url, admin = _server_url(args.server), _admin()
    exists = ServerError(f"user {args.username!r} already exists on {url}; nothing was changed")
    if _user_exists(url, admin, args.username):
        raise exists  # MLflow would answer with its database's error, the new password's hash in it
    password = _new_user_password(args.username)
    try:
        _request(url, "/api/2.0/mlflow/users/create", admin, {"username": args.username, "password": password})
    except RequestRefused as error:
        if error.error_code == "RESOURCE_ALREADY_EXISTS":  # added meanwhile by another admin
            raise exists from error
        raise
    print(
        f"added user {args.username!r} to {url}; they set MLFLOW_TRACKING_URI={url}, "
        f"MLFLOW_TRACKING_USERNAME={args.username} and MLFLOW_TRACKING_PASSWORD"
    )
    return 0


def grant_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpsons.server grant",
        description="Set what a user may do with one experiment or registered model, as the server's admin "
        f"(password from {ADMIN_PASSWORD_VARIABLE}) or else as its owner (MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD; its creator has MANAGE). READ: see it; EDIT: also log runs into it, register "
        "versions, move aliases, edit; MANAGE: also delete it and grant others; NO_PERMISSIONS: not even see it. "
        "It replaces the user's earlier grant on it.",
    )
    parser.add_argument("username")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--experiment", metavar="NAME", help="the experiment, by name (e.g. simpsons)")
    target.add_argument("--registered-model", metavar="NAME", help="the registered model, by name (e.g. simpsons)")
    parser.add_argument("--permission", choices=PERMISSIONS, default="EDIT", help="what they may do (EDIT)")
    _add_server_argument(parser)
    return parser


def grant(args: argparse.Namespace) -> int:
    url, login = _server_url(args.server), _granter()
    is_admin = ADMIN_PASSWORD_VARIABLE in os.environ
    if is_admin and not _user_exists(url, login, args.username):  # only the admin may look users up
        raise ServerError(f"no user {args.username!r} on {url}; add it first: python -m simpsons.server add-user NAME")
    if args.experiment is not None:
        what, resource_type = f"experiment {args.experiment!r}", "experiment"
        found = _get(url, "/api/2.0/mlflow/experiments/get-by-name", login, experiment_name=args.experiment)
        resource_id = found["experiment"]["experiment_id"] if found else None
    else:
        what, resource_type = f"registered model {args.registered_model!r}", "registered_model"
        found = _get(url, "/api/2.0/mlflow/registered-models/get", login, name=args.registered_model)
        resource_id = args.registered_model if found else None
    if resource_id is None:
        raise ServerError(f"no {what} on {url}; check its name")
    body = {"username": args.username, "resource_type": resource_type, "resource_id": resource_id}
    try:
        try:
            _request(url, GRANT_PATH, login, {**body, "permission": args.permission})
        except RequestRefused as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # MLflow grants once per user and resource: an earlier grant is revoked, then replaced.
            _request(url, REVOKE_PATH, login, body)
            _request(url, GRANT_PATH, login, {**body, "permission": args.permission})
    except RequestRefused as error:
        if error.status != 403:
            raise
        raise ServerError(
            f"{url} refused user {login[0]!r} a grant on {what} (HTTP 403): only its owner (MANAGE) or the admin "
            f"({ADMIN_PASSWORD_VARIABLE}) may grant on it"
        ) from error
    print(f"{args.username} now has {args.permission} on {what} at {url}")
    return 0


def _granter() -> tuple[str, str]:
    """The admin, or else the user logged in with MLflow's variables (who must MANAGE the resource)."""
    if ADMIN_PASSWORD_VARIABLE in os.environ:
        return _admin()
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (username and password):
        raise ServerError(
            f"set {ADMIN_PASSWORD_VARIABLE} to grant as the admin, or MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to grant as the owner (the creator) of the experiment or model"
        )
    return username, password


GRANT_PATH = "/api/3.0/mlflow/users/permissions/grant"
REVOKE_PATH = "/api/3.0/mlflow/users/permissions/revoke"


def _add_server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URL,
        help=f"the server's URL (MLFLOW_TRACKING_URI, else {DEFAULT_URL})",
    )


def _server_url(server: str) -> str:
    url = server.rstrip("/")
    if credentials.has_password(url):
        raise ServerError(
            f"--server={credentials.redact_uri(url)} has a password in it; leave it out "
            f"(the admin's password comes from {ADMIN_PASSWORD_VARIABLE})"
        )
    if urlsplit(url).scheme not in ("http", "https"):
        raise ServerError(f"--server={url!r} is not a server URL; use http(s)://HOST:PORT")
    return url


def _admin() -> tuple[str, str]:
    return os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN, _admin_password()


def _user_exists(url: str, admin: tuple[str, str], username: str) -> bool:
    return _get(url, "/api/2.0/mlflow/users/get", admin, username=username) is not None


def _new_user_password(username: str) -> str:
    password = os.environ.get(NEW_USER_PASSWORD_VARIABLE)
    if password is None:
        if not sys.stdin.isatty():
            raise ServerError(f"set {NEW_USER_PASSWORD_VARIABLE} to {username}'s password (or run this in a terminal)")
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            raise ServerError("the two passwords differ; nothing was changed")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServerError(
            f"{username}'s password is {len(password)} characters long; MLflow needs at least {MIN_PASSWORD_LENGTH}"
        )
    return password


class RequestRefused(ServerError):
    """The server answered a REST call with an HTTP error; the message is one line."""

    def __init__(self, message: str, status: int, error_code: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def _get(url: str, path: str, login: tuple[str, str], **query: str) -> dict | None:
    """A GET as `login`, or None if the thing asked for does not exist (HTTP 404)."""
    try:
        return _request(url, f"{path}?{urlencode(query)}", login)
    except RequestRefused as error:
        if error.status == 404 or error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _request(url: str, path: str, login: tuple[str, str], body: dict | None = None) -> dict:
    """A REST call as `login`; a refusal becomes one RequestRefused line."""
    token = base64.b64encode(":".join(login).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_SECONDS) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        message, error_code = _refusal(url, login[0], error)
        raise RequestRefused(message, error.code, error_code) from error
    except OSError as error:
        raise ServerError(f"no MLflow server answers at {url} ({getattr(error, 'reason', error)})") from error


def _refusal(url: str, user: str, error: urllib.error.HTTPError) -> tuple[str, str]:
    """One line for an HTTP error, and MLflow's error code. Only the first line of MLflow's message,
    cut before any SQL: a database error there would show the statement's parameters."""
    if error.code == 401 and user == (os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN):
        return (
            f"{url} refused admin user {user!r} (HTTP 401: wrong password); set {ADMIN_PASSWORD_VARIABLE} to "
            f"the password the admin user was created with (it is used only when the server first starts)"
        ), "UNAUTHENTICATED"
    if error.code == 401:
        return (
            f"{url} refused user {user!r} (HTTP 401: wrong username or password); "
            "fix MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        ), "UNAUTHENTICATED"
    try:
        answer = json.loads(error.read())
        message, error_code = str(answer.get("message", "")), str(answer.get("error_code", ""))
    except (ValueError, AttributeError):
        message, error_code = "", ""
    message = message.strip().split("\n", 1)[0].split("[SQL", 1)[0].strip()
    return f"{url} answered HTTP {error.code}: {message or error.reason}", error_code


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


if __name__ == "__main__":
    sys.exit(main())
