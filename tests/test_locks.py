"""simpsons/locks.py: the PostgreSQL advisory lock, on a real PostgreSQL (the session's cluster)."""

from __future__ import annotations

import secrets

import pytest
from services.postgres import DATABASE_PASSWORD

from simpsons import locks


@pytest.fixture
def database(postgres_cluster, monkeypatch) -> str:
    monkeypatch.setenv("PGPASSWORD", DATABASE_PASSWORD)  # from the environment, never in the URI
    return postgres_cluster.database(f"locks_{secrets.token_hex(4)}")


@pytest.mark.slow  # the session's PostgreSQL
def test_a_held_advisory_lock_makes_another_wait_out_its_deadline_then_is_free_once_released(database):
    """A holder that never lets go (a stopped process) fails the next one in one error, not forever;
    a lock of another name, and the same lock once released, are taken at once."""
    with locks.postgres_advisory(database, "schema"):
        held = "another process held the database's lock 'schema' for 1 s"
        with pytest.raises(TimeoutError, match=held), locks.postgres_advisory(database, "schema", wait_seconds=1):
            pytest.fail("the lock was taken twice")
        with locks.postgres_advisory(database, "another", wait_seconds=0):
            pass
    with locks.postgres_advisory(database, "schema", wait_seconds=0):
        pass


@pytest.mark.slow
def test_the_block_s_own_error_comes_out_and_frees_the_lock(database):
    with pytest.raises(KeyError), locks.postgres_advisory(database, "schema"):
        raise KeyError("the block's")
    with locks.postgres_advisory(database, "schema", wait_seconds=0):
        pass
