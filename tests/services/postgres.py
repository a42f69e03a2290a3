"""The session's PostgreSQL: one real cluster per test process, shared by every test that needs one
(tests/test_server.py, tests/test_races.py, tests/test_lost_server.py); registered in conftest.py.

A test that must not see the others' rows (users, experiments) asks the cluster for a database of
its own (`PostgresCluster.database`), set up as docs/scaling-out.md says for the team's one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import leftovers
import pytest

POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
# Fresh per test session: whatever leaks is found by its value, which nothing else could contain.
DATABASE_PASSWORD = "database-" + secrets.token_hex(12)
ROLE = "mlflow"  # the login role the servers connect as, with DATABASE_PASSWORD; it owns every database
RUN = {"check": True, "capture_output": True, "text": True, "timeout": 120}


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster on 127.0.0.1:`port`, its socket in `folder`; commands run as its owner."""

    binaries: Path
    folder: Path
    port: int
    as_owner: tuple[str, ...]  # `runuser -u postgres --` as root (initdb refuses root), else nothing

    def connection(self) -> list[str]:
        return ["-h", str(self.folder), "-p", str(self.port), "-U", "postgres"]

    def psql(self, sql: str) -> list[str]:
        options = ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]
        return [str(self.binaries / "psql"), *self.connection(), *options]

    def run(self, command: list[str]) -> None:
        subprocess.run([*self.as_owner, *command], **RUN)

    def database(self, name: str) -> str:
        """A new database `name` owned by ROLE, the only role that may connect to it; its URI (no password)."""
        self.run([str(self.binaries / "createdb"), *self.connection(), f"--owner={ROLE}", name])
        self.run(self.psql(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC"))
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL in a temporary folder, on 127.0.0.1 and a free port, with the login role
    ROLE (password DATABASE_PASSWORD, no other privilege) that docs/scaling-out.md creates.

    initdb refuses to run as root: as root, the cluster belongs to Debian's `postgres` user.
    """
    from conftest import free_port  # here: conftest imports this module

    if not POSTGRES_BINARIES:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    binaries = POSTGRES_BINARIES[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="simpsons-postgres-"))  # short: the socket path has a length limit
    as_owner: tuple[str, ...] = ()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ("runuser", "-u", "postgres", "--")
    cluster = PostgresCluster(binaries, folder, free_port(), as_owner)
    data = folder / "data"
    cluster.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust"]
        + ["--auth-host=scram-sha-256"]
    )
    options = f"-p {cluster.port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_owner, str(binaries / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-l", str(folder / "postgres.log"), "-w", "-t", "120", "-o", options, "start"], **RUN)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    with leftovers.recorded(postmaster, leftovers.POSTMASTER, folder):  # until it is stopped
        try:
            # docs/scaling-out.md's role; the password set by SQL here, where the docs have createuser
            # prompt for it (--pwprompt).
            cluster.run(
                [str(binaries / "createuser"), *cluster.connection(), "--login", "--no-superuser", "--no-createdb"]
                + ["--no-createrole", ROLE]
            )
            cluster.run(cluster.psql(f"ALTER ROLE {ROLE} PASSWORD '{DATABASE_PASSWORD}'"))
            yield cluster
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(postgres_cluster: PostgresCluster) -> str:
    """The database `mlflow` of the session's PostgreSQL, owned by the user `mlflow` whose password is
    DATABASE_PASSWORD, set up as the docs say; its URI (no password). Shared: the team server's
    tests, and the races' tests (each in a fresh schema of it)."""
    return postgres_cluster.database("mlflow")
