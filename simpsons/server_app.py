"""The team server's web app: MLflow's basic-auth app, closed to anonymous requests but /health, and
tied to the life of the `python -m simpsons.server` process that started it.

`mlflow server --app-name simpsons` loads `create_app` in every uvicorn worker, through MLflow's own
plugin hook (the `mlflow.app` entry point in pyproject.toml). It is MLflow's `basic-auth` app with
three things added, each where MLflow leaves a gap:

- **Its config never touches the disk.** MLflow reads its auth config (basic_auth.ini) once, when
  `mlflow.server.auth` is imported, from the path in MLFLOW_AUTH_CONFIG_PATH. The wrapper hands
  the text over in SIMPSONS_AUTH_CONFIG; each worker writes it to an anonymous in-memory file
  (memfd) and points MLflow at /proc/self/fd/N for that one import. No file is left behind
  whatever kills the server, and a worker that uvicorn restarts reads it the same way.
- **Only /health answers without a login.** MLflow lets anyone read /api/3.0/mlflow/server-info
  (the store type and features) and the UI's static files. An ASGI layer around MLflow's app asks
  for a login there too, with MLflow's own check, so a request is still authenticated once.
- **The server dies with its wrapper.** `mlflow server` starts uvicorn, which starts the workers;
  none of them notices when the wrapper is killed with SIGKILL (which it cannot catch), and the
  server would go on answering. Each worker watches the wrapper through a pidfd (no pid-reuse
  race) and, the moment it is gone, kills the server's process group (mlflow server, uvicorn and
  every worker), which the wrapper started as a session of its own. The watch starts before
  anything else in the worker, so even a worker that fails to load the app still does it.

Why an app of our own through that entry point, rather than a reverse proxy or patching MLflow: it
is the hook `mlflow server --app-name` offers for this; it runs inside every worker, so the config
and the watch reach each one however uvicorn starts them; and it wraps MLflow's app without changing
it. Writes a READ user could make are refused by MLflow 3.17.2's own validators
(tests/test_server.py holds it to that, request by request), so nothing here second-guesses them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any

CONFIG_VARIABLE = "SIMPSONS_AUTH_CONFIG"  # the text of MLflow's basic_auth.ini (no secret in it)
WRAPPER_VARIABLE = "SIMPSONS_SERVER_WRAPPER"  # "PID:START_TIME" of `python -m simpsons.server`
ANONYMOUS_PATHS = ("/health",)


def create_app() -> Any:
    """MLflow's basic-auth app (FastAPI around Flask, as uvicorn serves it), gated as above."""
    watch_wrapper()
    text = os.environ.get(CONFIG_VARIABLE)
    if text is None:
        raise RuntimeError(f"this app is started by `python -m simpsons.server`, which sets {CONFIG_VARIABLE}")
    auth = import_mlflow_auth(text)
    return LoginEverywhere(auth.create_app(), auth)


def import_mlflow_auth(config_text: str) -> Any:
    """`mlflow.server.auth`, having read `config_text` as its config, through a memfd."""
    if "mlflow.server.auth" in sys.modules:  # it read some other config already
        raise RuntimeError("mlflow.server.auth was imported before its config was given")
    descriptor = os.memfd_create("simpsons-basic-auth.ini")
    previous = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    try:
        os.write(descriptor, config_text.encode())
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = f"/proc/self/fd/{descriptor}"
        import mlflow.server.auth as auth  # reads the config here, once (module level)
    finally:
        os.close(descriptor)
        if previous is None:
            os.environ.pop("MLFLOW_AUTH_CONFIG_PATH", None)
        else:
            os.environ["MLFLOW_AUTH_CONFIG_PATH"] = previous
    return auth


# Dying with the wrapper.


def watch_wrapper() -> None:
    """Kill this server's process group as soon as the wrapper named in SIMPSONS_SERVER_WRAPPER is gone."""
    value = os.environ.get(WRAPPER_VARIABLE)
    if not value:
        return
    pid, start_time = value.split(":", 1)
    pidfd = _pidfd(int(pid), float(start_time))
    if pidfd is None:
        _kill_server()  # gone before this worker started
        return
    threading.Thread(target=_wait_then_kill, args=(pidfd,), name="wrapper-watch", daemon=True).start()


def _pidfd(pid: int, start_time: float) -> int | None:
    """A pidfd of the wrapper, or None if it is gone (its pid now names another process, or none)."""
    import psutil

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Checked after opening: a pidfd names one process for good, so if the start time matches
    # now, the fd is the wrapper's and not that of a process that reused its pid.
    with contextlib.suppress(psutil.Error):
        if abs(psutil.Process(pid).create_time() - start_time) < 0.01:
            return pidfd
    os.close(pidfd)
    return None


def _wait_then_kill(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has exited
    _kill_server()


def _kill_server() -> None:
    # SIGKILL, not SIGTERM: uvicorn's supervisor would restart workers that stop one by one, and
    # with the wrapper gone nobody is left to wait for a graceful end. PostgreSQL rolls back
    # whatever a killed worker had not committed.
    os.killpg(os.getpgrp(), signal.SIGKILL)


# A login for what MLflow leaves open.


class LoginEverywhere:
    """ASGI middleware: the routes MLflow answers without a login (server-info, static files)
    need one too; only ANONYMOUS_PATHS do not. Every other route MLflow authenticates itself, so
    a request is checked once more at most (a password hash costs 0.2 s of CPU, less its cache)."""

    def __init__(self, app: Any, auth: Any) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            # MLflow serves no WebSocket, and its auth middleware looks at HTTP requests only:
            # refused (a close before the accept is a 403 handshake answer).
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http" and self._left_open(scope["path"]) and not await self._logged_in(scope):
            await _unauthorized(send)
            return
        await self.app(scope, receive, send)

    def _left_open(self, path: str) -> bool:
        return self.auth.is_unprotected_route(path) and self.auth._strip_static_prefix(path) not in ANONYMOUS_PATHS

    async def _logged_in(self, scope: dict) -> bool:
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request

        if not any(name == b"authorization" for name, _ in scope.get("headers", [])):
            return False
        # MLflow's own check for its FastAPI routes (the password hash, its cache); it queries the
        # users' database, so it runs in a thread, off the event loop.
        user = await run_in_threadpool(self.auth._authenticate_fastapi_request, Request(scope))
        return user is not None


async def _unauthorized(send: Any) -> None:
    body = b"You are not authenticated: log in (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Basic realm="mlflow"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bootstrap() -> int:
    """`python -m simpsons.server_app`, run by the wrapper before the server: the users' tables and
    the admin user, as `mlflow server` sets them up for its own basic-auth app; one line on failure."""
    try:
        auth = import_mlflow_auth(os.environ[CONFIG_VARIABLE])
        auth.bootstrap_admin_user()
    except Exception as error:  # MLflow's and the database driver's errors alike: the first line
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"error: cannot set up the users' database: {lines[0].split('[SQL', 1)[0].strip()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(bootstrap())
