"""Store writes that other processes may make at the same instant: each holds, whoever comes first.

Every parallel launcher starts its jobs together, on the same data, into the same experiment and
registered model. Several MLflow 3.17.2 writes read, then insert, without a lock: two processes
that both read "not there" both insert, and the second fails on the table's unique key. MLflow
raises that as an MlflowException whose message carries the database's error, on a direct store
and over HTTP alike (the server answers BAD_REQUEST with the same message):

- `log_inputs` (`_log_inputs_impl`): the experiment's dataset row, keyed by (experiment, name,
  digest): `UNIQUE constraint failed: datasets...` (SQLite), `UniqueViolation ... "dataset_pk"`
  (PostgreSQL). Used by writer.log_dataset_inputs and lifecycle.record_reuse;
- `set_tag` (a `session.merge`) on the same run: every command ends the dead runs it finds
  (lifecycle.end_dead_runs), and the jobs of a sweep start together;
- `set_registered_model_alias` (a `session.merge`) on the same alias (ensembling.registry);
- `create_experiment`: RESOURCE_ALREADY_EXISTS (store.ensure_experiment).

`shared_write` makes such a write safe. On a SQLite store it runs under the store's lock file, so
no two of our processes interleave their check and insert. Elsewhere (a server, PostgreSQL), and
against writers that do not take our lock, a unique-key clash means that another process has just
written the same row: the write is tried again, and finds that row. Each write passed to it must
therefore be idempotent: a retry reads again what it decides on.

Safe without it: a new store's schema (store.configure: under the lock file on SQLite, an
advisory lock on PostgreSQL), `create_registered_model` (registry takes RESOURCE_ALREADY_EXISTS
as "there"), model versions (MLflow numbers them under a row lock on the registered model, and
retries a clash itself), logged models (each has a new random id), and a run's own params,
metrics and tags, written by its one process. tests/test_races.py races 8 processes through all
of these on SQLite, PostgreSQL and a server.

No TensorFlow here.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from simpsons.tracking.sqlite import store_lock

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5
BACKOFF_SECONDS = 0.05  # at most this many times the attempt, at random: clashing writers fall out of step
# A unique key that another transaction has just taken, as each database words it (through MLflow's
# message, on a direct store and over HTTP): SQLite, PostgreSQL, MySQL.
UNIQUE_CLASH = re.compile(
    r"UNIQUE constraint failed|UniqueViolation|duplicate key value violates unique constraint|Duplicate entry",
    re.IGNORECASE,
)


def shared_write(uri: str, write: Callable[[], T], what: str) -> T:
    """`write()`'s result; under the store's lock on SQLite, tried again on a clash with another process.

    `what` names the write in the debug line of a retry. Any other error is raised as it is; so is
    a clash that persists for ATTEMPTS tries (then it is no race).
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with store_lock(uri):
                return write()
        except MlflowException as error:
            if attempt == ATTEMPTS or not clashed(error):
                raise
            log.debug("%s: another process wrote the same row first (%s); trying again", what, _first_line(error))
        time.sleep(random.uniform(0, BACKOFF_SECONDS * attempt))
    raise AssertionError("unreachable")


def clashed(error: MlflowException) -> bool:
    """Whether `error` says that the row was written meanwhile by someone else."""
    return error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS) or bool(UNIQUE_CLASH.search(str(error)))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
