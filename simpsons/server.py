"""`python -m simpsons.server`: the team's MLflow tracking server, and its users.

    MLFLOW_AUTH_ADMIN_PASSWORD=... PGPASSWORD=... python -m simpsons.server \\
        --backend-store-uri postgresql://mlflow@dbhost:5432/mlflow --artifacts-destination /srv/mlflow-artifacts
    MLFLOW_AUTH_ADMIN_PASSWORD=... SIMPSONS_NEW_USER_PASSWORD=... python -m simpsons.server add-user alice

The first runs MLflow's `mlflow server` with a PostgreSQL backend store, proxied artifacts and MLflow's
basic-auth app, on 127.0.0.1 unless `--host` says otherwise; the second adds a user through the
server's REST API. No TensorFlow here.

Secrets come from the environment only, never from a default or the command line (where `ps` shows
them): the admin password from MLFLOW_AUTH_ADMIN_PASSWORD (MLflow's own variable; it creates the
admin user on the first start and is ignored once that user exists), the database's password from
libpq's PGPASSWORD or ~/.pgpass. The auth config MLflow reads (MLFLOW_AUTH_CONFIG_PATH) names the
users' database, so it is written to a private (0600) temporary file and removed when the server stops.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import getpass
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import quote, urlsplit

ADMIN_PASSWORD_VARIABLE = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own: read by the auth app itself
ADMIN_USERNAME_VARIABLE = "MLFLOW_AUTH_ADMIN_USERNAME"
NEW_USER_PASSWORD_VARIABLE = "SIMPSONS_NEW_USER_PASSWORD"
SECRET_KEY_VARIABLE = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # CSRF key of the auth app's sign-up form
DEFAULT_ADMIN = "admin"
DEFAULT_PORT = 5000
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
MIN_PASSWORD_LENGTH = 12  # MLflow refuses shorter passwords
BACKEND_SCHEMES = ("postgresql", "postgresql+psycopg")
START_SECONDS = 120  # for the server to answer /health after it was started
REQUEST_SECONDS = 30


class ServerError(Exception):
    """A problem the user can fix; printed as one line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["add-user"]:
            return add_user(add_user_parser().parse_args(argv[1:]))
        return serve(start_parser().parse_args(argv))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


# Starting the server.


def start_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpsons.server",
        description="Start the team's MLflow server: PostgreSQL store, proxied artifacts, basic auth "
        f"(admin password from {ADMIN_PASSWORD_VARIABLE}). `python -m simpsons.server add-user NAME` adds a user.",
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
        default="EDIT",
        help="what every user may do in experiments others created (EDIT: log runs into them; not delete)",
    )
    return parser


def serve(args: argparse.Namespace) -> int:
    """Check everything, then run `mlflow server` until it exits or this process is stopped."""
    backend = _checked_backend(args.backend_store_uri)
    auth_database = _checked_backend(args.auth_database_uri) if args.auth_database_uri else backend
    _admin_password()  # missing or too short: refuse before anything starts
    artifacts = _artifacts_destination(args.artifacts_destination)
    _check_database(backend)
    with _auth_config(auth_database, args.default_permission) as config_path:
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config_path)}
        # One key per start is enough for one server: it only guards the sign-up form, and every
        # worker of this server inherits the same one. Several servers behind one address need one key.
        env.setdefault(SECRET_KEY_VARIABLE, secrets.token_hex(32))
        command = mlflow_server_command(args, backend, artifacts)
        url = f"http://{_connectable(args.host)}:{args.port}"
        print(
            f"starting the MLflow server at http://{args.host}:{args.port}: store {_redacted(backend)}, "
            f"artifacts {artifacts}, users in {_redacted(auth_database)}",
            file=sys.stderr,
            flush=True,
        )
        return _run(command, env, url)


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
        "basic-auth",
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


def _checked_backend(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in BACKEND_SCHEMES:
        raise ServerError(
            f"--backend-store-uri={_redacted(uri)!r} is not a PostgreSQL URI; use postgresql://USER@HOST:PORT/DATABASE"
        )
    if parts.password:  # `ps` shows a server's command line to every user of the machine
        raise ServerError(
            f"--backend-store-uri={_redacted(uri)} has a password in it; "
            "leave it out and set PGPASSWORD (or use ~/.pgpass) instead"
        )
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


def _check_database(uri: str) -> None:
    from simpsons.errors import ConfigError
    from simpsons.tracking import store  # MLflow: loaded only to start a server

    try:
        store.check(uri)
    except ConfigError as error:
        raise ServerError(str(error).replace("tracking.uri=", "--backend-store-uri=", 1)) from error


@contextlib.contextmanager
def _auth_config(database_uri: str, default_permission: str) -> Iterator[Path]:
    """MLflow's basic_auth.ini for this server, in a private temporary file (mkstemp: mode 0600)."""
    values = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "admin_username": os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    config = configparser.ConfigParser(interpolation=None)
    # MLflow reads the file with interpolation: a URI's %-escapes (%40 for @) are written as %%.
    config["mlflow"] = {key: value.replace("%", "%%") for key, value in values.items()}
    descriptor, name = tempfile.mkstemp(prefix="simpsons-basic-auth-", suffix=".ini")
    path = Path(name)
    try:
        with os.fdopen(descriptor, "w") as file:
            config.write(file)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _run(command: list[str], env: dict[str, str], url: str) -> int:
    """Run the server in its own process group; SIGINT/SIGTERM stop the whole group (mlflow's
    uvicorn and its workers are children of `mlflow server`, which does not stop them itself)."""
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)


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


# Adding a user.


def add_user_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpsons.server add-user",
        description=f"Add a user to the team's MLflow server, as its admin (password from {ADMIN_PASSWORD_VARIABLE}). "
        f"The new user's password comes from {NEW_USER_PASSWORD_VARIABLE}, else a prompt.",
    )
    parser.add_argument("username")
    parser.add_argument(
        "--server",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URL,
        help=f"the server's URL (MLFLOW_TRACKING_URI, else {DEFAULT_URL})",
    )
    return parser


def add_user(args: argparse.Namespace) -> int:
    url = args.server.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ServerError(f"--server={url!r} is not a server URL; use http(s)://HOST:PORT")
    admin = (os.environ.get(ADMIN_USERNAME_VARIABLE) or DEFAULT_ADMIN, _admin_password())
    password = _new_user_password(args.username)
    _request(url, "/api/2.0/mlflow/users/create", admin, {"username": args.username, "password": password})
    print(
        f"added user {args.username!r} to {url}; they set MLFLOW_TRACKING_URI={url}, "
        f"MLFLOW_TRACKING_USERNAME={args.username} and MLFLOW_TRACKING_PASSWORD"
    )
    return 0


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


def _request(url: str, path: str, credentials: tuple[str, str], body: dict | None = None) -> dict:
    """A REST call as `credentials`; a refusal becomes one ServerError line."""
    token = base64.b64encode(":".join(credentials).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_SECONDS) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise ServerError(_refusal(url, credentials[0], error)) from error
    except OSError as error:
        raise ServerError(f"no MLflow server answers at {url} ({getattr(error, 'reason', error)})") from error


def _refusal(url: str, user: str, error: urllib.error.HTTPError) -> str:
    if error.code == 401:
        return (
            f"{url} refused admin user {user!r} (HTTP 401: wrong password); set {ADMIN_PASSWORD_VARIABLE} to "
            f"the password the admin user was created with (it is used only when the server first starts)"
        )
    try:
        message = json.loads(error.read()).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{url} answered HTTP {error.code}: {message or error.reason}"


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _redacted(uri: str) -> str:
    from simpsons.tracking.store import redact_uri

    return redact_uri(uri)


if __name__ == "__main__":
    sys.exit(main())
