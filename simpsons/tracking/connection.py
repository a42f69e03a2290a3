"""A tracking server that stops answering: a bounded retry, one warning line, then one error line.

MLflow's client retries a request that fails (connection refused or reset, timed out, HTTP 429 or
5xx) with exponential backoff, through urllib3's Retry: after the k-th failure (k >= 2) it sleeps
backoff_factor * 2**(k-1) s plus up to backoff_jitter s, each sleep at most 120 s; then it raises.
MLflow's defaults (7 retries, factor 2, 120 s per try) wait about 4 minutes per request, and a job
that fails sends several more (its error, its end, the heartbeat): a server killed mid-sweep left
jobs retrying for 8 to 12 minutes, with a urllib3 warning for every retry. Here:

- `configure(uri, seconds)` (every command, before its first request) sets MLflow's
  MLFLOW_HTTP_REQUEST_* variables from `tracking.retry_seconds`, so that a request the server
  refuses or answers with errors is given up within `seconds`, and each try waits at most
  `seconds` for an answer. MLflow reads them at every request (its session is cached per value
  and per process), so each job process sets them itself.
- urllib3's per-retry warnings become one line per outage (`QuietRetries`).
- `lost(error)` tells a request given up from any other error, and `give_up()` makes what the
  process still sends (the run's error and its end) a single quick try: the server is gone.

No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator

from simpsons.errors import ServerLost

log = logging.getLogger(__name__)

SERVER_SCHEMES = ("http", "https")
MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_FACTOR = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
BACKOFF_JITTER = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
JITTER_SECONDS = 1  # MLflow's default: jobs that lost the server together do not all try again at once
RETRIES_LIMIT = 10  # MLflow refuses more (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)
FACTOR_LIMIT = 120  # and a larger factor (_MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT)
SLEEP_LIMIT = 120  # urllib3's longest sleep between two tries (Retry.DEFAULT_BACKOFF_MAX)
GIVE_UP_SECONDS = 5  # once the server is lost: each of the few requests left waits this long, once


class _State:
    """This process's server and retry time, and whether the current outage was already said."""

    def __init__(self) -> None:
        self.uri: str | None = None
        self.seconds = 0
        self.warned = False
        self.lock = threading.Lock()


_state = _State()


def retry_policy(seconds: int) -> dict[str, str]:
    """MLflow's retry variables for a request given up within `seconds`.

    The most retries whose sleeps (jitter included, at most `seconds` in all) can still fill three
    quarters of `seconds` with a whole backoff factor, with the largest such factor: many short
    sleeps first, so that a short outage is over soon. 60 s: 4 retries, factor 4, so tries at 0,
    0, 8, 24 and 56 s (plus jitter), then the request fails; 10 s: 3 retries, factor 1.
    """
    for retries in range(RETRIES_LIMIT, 1, -1):
        factor = max((f for f in range(1, FACTOR_LIMIT + 1) if worst_wait(retries, f) <= seconds), default=0)
        if factor and (worst_wait(retries, factor) >= 0.75 * seconds or retries == 2):
            break
    return {
        MAX_RETRIES: str(retries),
        BACKOFF_FACTOR: str(max(factor, 1)),
        BACKOFF_JITTER: str(JITTER_SECONDS),
        TIMEOUT: str(seconds),
    }


def worst_wait(retries: int, factor: int, jitter: float = JITTER_SECONDS) -> float:
    """The longest that urllib3 sleeps over `retries` retries: none after the first failure, then
    factor * 2**(k-1) plus jitter after the k-th, each at most SLEEP_LIMIT."""
    return sum(min(SLEEP_LIMIT, factor * 2 ** (k - 1) + jitter) for k in range(2, retries + 1))


def configure(uri: str, seconds: int) -> None:
    """Before this process's first request to `uri`: the retry policy for `seconds`, and one warning
    line per outage instead of urllib3's one per retry. Nothing for stores other than a server."""
    if uri.split("://")[0].split("+")[0] not in SERVER_SCHEMES:
        return
    with _state.lock:
        _state.uri, _state.seconds, _state.warned = uri, seconds, False
    os.environ.update(retry_policy(seconds))
    retries = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(existing, QuietRetries) for existing in retries.filters):
        retries.addFilter(QuietRetries())


class QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying (Retry(total=...)) after connection broken by ..." warnings, and
    says the first of an outage as one line of ours. An outage ends when a heartbeat gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Retrying"):
            return True
        with _state.lock:
            first, _state.warned = not _state.warned, True
        if first and _state.uri is not None:
            log.warning(
                "the tracking server at %s does not answer; retrying for up to %d s (tracking.retry_seconds)",
                _state.uri,
                _state.seconds,
            )
        return False


def answered() -> None:
    """A request got through (the heartbeat's): the next failure is a new outage, said again."""
    with _state.lock:
        _state.warned = False


def lost(error: BaseException | None) -> bool:
    """Whether `error` is a request to the tracking server given up after its retries: no
    connection, no answer in time, or error answers only. Not an answer that refuses (HTTP 4xx)."""
    if error is None or _state.uri is None:
        return False
    import requests  # MLflow's own dependency; imported once a server is configured
    import urllib3

    given_up = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)
    return any(isinstance(link, (*given_up, urllib3.exceptions.MaxRetryError)) for link in _chain(error))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def reason(error: BaseException) -> str:
    """What the last try met, in a few words: 'Connection refused', 'timed out', ..."""
    text = " ".join(str(link) for link in _chain(error))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    found = re.search(r"too many (\d{3}) error responses", text)
    return f"HTTP {found.group(1)} answers only" if found else "the connection broke"


def give_up() -> None:
    """The server is lost: the requests this process still sends (the run's error, its end) are
    tried once each, for GIVE_UP_SECONDS at most, until configure() sets the policy again."""
    os.environ.update({MAX_RETRIES: "0", TIMEOUT: str(GIVE_UP_SECONDS)})


def server_lost(error: BaseException, left: str = "", waited: bool = True) -> ServerLost:
    """The one line a command ends with when it lost the server; `left` says what it leaves, and
    `waited`, whether it retried for tracking.retry_seconds first (not after its jobs did)."""
    waited_for = f" for {_state.seconds} s" if waited else ""
    return ServerLost(
        f"lost the tracking server at {_state.uri}: no answer{waited_for} ({reason(error)}); "
        f"{left}run the same command again once it answers"
    )


@contextlib.contextmanager
def lost_server(left: str = "") -> Iterator[None]:
    """Around what a command does with the store: a request given up raises ServerLost (one line)."""
    try:
        yield
    except Exception as error:
        if not lost(error):
            raise
        give_up()
        raise server_lost(error, left) from None
