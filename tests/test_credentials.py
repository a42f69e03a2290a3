"""No credential in a URI: every spelling of a password is found, and the redacted URI never holds it."""

from __future__ import annotations

import pytest

from simpsons import credentials

PW = "Sentinel-Pw-7f3a"  # nothing else in these URIs contains it

WITH_PASSWORD = [
    f"postgresql://mlflow:{PW}@db:5432/mlflow",  # userinfo
    f"postgresql://mlflow@db/mlflow?password={PW}",  # libpq's query keyword
    f"postgresql://mlflow@db/mlflow?sslmode=require&PASSWORD={PW}",  # any case, after another key
    f"postgresql://mlflow@db/mlflow?sslpassword={PW}",  # the client key's password
    f"postgresql://db/mlflow?dbname=host%3Ddb%20password%3D{PW}",  # libpq expands a dbname conninfo
    f"postgresql://db/mlflow?pass%2577ord={PW}",  # a key %-encoded twice
    f"postgresql://db/mlflow?x%3Dpassword={PW}",  # a key that hides `password=` in itself
    f"postgresql://db/host=db%20password={PW}",  # a database name that is a conninfo
    f"postgresql://mlflow@db/mlflow?a=1;password={PW}",  # `;` as a separator
    f"mysql://mlflow@db/mlflow?passwd={PW}",  # MySQL drivers' spelling
    f"mssql+pyodbc:///?odbc_connect=DRIVER%3Dx%3BPWD%3D{PW}",  # ODBC's
    f"http://alice:{PW}@127.0.0.1:5000",
    f"https://127.0.0.1:5000/?password={PW}",
    f"http://127.0.0.1:5000/#password={PW}",
    f"sqlite:////tmp/mlflow.db?password={PW}",
]
WITHOUT = [
    "postgresql://mlflow@db:5432/mlflow",
    "postgresql://mlflow@db/mlflow?sslmode=require&passfile=/home/me/.pgpass",
    "sqlite:////tmp/mlflow.db",
    "sqlite:///relative.db",
    "http://127.0.0.1:5000",
    "http://[::1]:5000/",
    "mssql+pyodbc:///?odbc_connect=DRIVER%3Dx",
]


@pytest.mark.parametrize("uri", WITH_PASSWORD)
def test_every_spelling_of_a_password_is_found_and_redacted_away(uri):
    assert credentials.has_password(uri)
    redacted = credentials.redact_uri(uri)
    assert PW not in credentials.fully_unquoted(redacted)
    assert "***" in redacted
    assert credentials.redact_uri(redacted) == redacted  # redacting twice changes nothing more


@pytest.mark.parametrize("uri", WITHOUT)
def test_a_uri_without_a_password_passes_unchanged(uri):
    assert not credentials.has_password(uri)
    assert credentials.redact_uri(uri) == uri
    assert credentials.password_error("tracking.uri", uri) is None


def test_the_error_names_the_redacted_uri_and_where_the_password_goes_instead():
    assert credentials.password_error("tracking.uri", f"postgresql://m@db/m?sslmode=require&password={PW}") == (
        "tracking.uri=postgresql://m@db/m?sslmode=require&password=*** has a password in it; leave it out and "
        "give it to the database's client instead (PostgreSQL: PGPASSWORD or ~/.pgpass)"
    )
    assert credentials.password_error("tracking.uri", f"http://alice:{PW}@h:5000") == (
        "tracking.uri=http://alice:***@h:5000 has a password in it; leave it out and "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    )


def test_command_line_values_and_the_environment_are_checked(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = f"tracking.uri=postgresql://m@db/m?password={PW},sqlite:////tmp/x.db"
    error = credentials.arguments_error(["-m", "dropout=0.2,0.4", sweep])
    assert error is not None and error.startswith("tracking.uri=postgresql://m@db/m?password=***")
    assert PW not in error
    assert credentials.arguments_error(["-m", "dropout=0.2", "tracking.uri=sqlite:////tmp/x.db"]) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{PW}@h:5000")
    error = credentials.arguments_error(["dropout=0.2"])
    assert error is not None and error.startswith("MLFLOW_TRACKING_URI=http://bob:***@h:5000 has a password")


@pytest.mark.parametrize(
    "value",
    [
        f"'postgresql://m:{PW}@db/m'",  # Hydra's quotes, which it strips before the value is used
        f'"postgresql://m@db/m?password={PW}"',
        f"'postgresql://m:p,{PW}@db/m','sqlite:////tmp/x.db'",  # a sweep; a comma inside the password
    ],
)
def test_a_quoted_or_swept_value_is_seen_through(monkeypatch, value):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    error = credentials.arguments_error([f"tracking.uri={value}"])
    assert error is not None and " has a password in it; " in error
    assert PW not in credentials.fully_unquoted(error)
