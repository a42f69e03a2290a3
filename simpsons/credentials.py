"""No credential in a URI: finding a password in a store or server URI, and redacting it.

A URI reaches places a password must not: `ps` (a server's command line), Hydra's `.hydra/*.yaml`
and the `hydra.overrides` tag, the `tracking.uri` param, logs and the console. So every command
refuses one with a password in it, and names it redacted. Passwords come from the environment
instead: MLFLOW_TRACKING_USERNAME/PASSWORD for a server, PGPASSWORD or ~/.pgpass for PostgreSQL.

A password hides in more than the userinfo (`user:PW@`): libpq takes `?password=PW` (and
`sslpassword`, the client key's) in the query, and expands a `dbname` that holds `key=value`
pairs (`?dbname=host%3Dh%20password%3DPW`) as a whole connection string; ODBC strings spell it
`PWD=`, MySQL drivers `passwd=`. Any of these names followed by `=`, anywhere after the host,
after undoing any number of %-encodings, counts. Light on purpose: the commands check their
arguments with it before Hydra or MLflow load.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

# `password`, `sslpassword`, `passwd`, `pwd`, in any case, followed by `=`: libpq's, MySQL's, ODBC's.
SECRET_KEY = re.compile(r"(password|passwd|pwd)\s*=", re.IGNORECASE)
SECRET_VALUE = re.compile(r"(?:password|passwd|pwd)\s*=\s*([^&;\s'\"]*)", re.IGNORECASE)
SECRET_NAME = re.compile(r"^\s*(ssl)?(password|passwd|pwd)\s*$", re.IGNORECASE)
HIDDEN = "***"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"


def fully_unquoted(text: str) -> str:
    """`text` with %-escapes undone until none is left (`%2570` -> `%70` -> `p`)."""
    for _ in range(10):  # each round shortens the text; ten nested encodings is past any real one
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def has_password(uri: str) -> bool:
    """A password in the userinfo, or a password key anywhere in the path, query or fragment."""
    parts = _split(uri)
    if parts is None:
        return bool(SECRET_KEY.search(fully_unquoted(uri)))
    if parts.password is not None:
        return True
    return bool(SECRET_KEY.search(fully_unquoted(uri[len(parts.scheme) + 3 + len(parts.netloc) :])))


def redact_uri(uri: str) -> str:
    """The URI with every password replaced by *** (`postgresql://u:***@h/db?password=***`).

    A query value is hidden whole when its key is a password's, or when the value itself holds
    one (a libpq `dbname` or ODBC connection string); a path that holds one is hidden whole.
    """
    parts = _split(uri)
    if not has_password(uri):
        return uri
    if parts is None:
        return HIDDEN
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.rpartition("@")[0].split(":", 1)[0] + f":{HIDDEN}@" + netloc.rpartition("@")[2]
    path = "/" + HIDDEN if SECRET_KEY.search(fully_unquoted(parts.path)) else parts.path
    query = parts.query
    if SECRET_KEY.search(fully_unquoted(query)):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, _hidden_value(key, value)) for key, value in pairs], safe="*/:@,")
        if SECRET_KEY.search(fully_unquoted(query)) and not _only_hidden(query):  # e.g. a key with = in it
            query = HIDDEN
    fragment = HIDDEN if SECRET_KEY.search(fully_unquoted(parts.fragment)) else parts.fragment
    # Joined by hand: urlunsplit drops the empty netloc of sqlite:////path and mssql:///?...
    redacted = (
        f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    )
    return _checked(redacted, _secrets(uri))


def _secrets(uri: str) -> list[str]:
    """The passwords themselves, as found in `uri` (raw and decoded): what a redaction must not show."""
    parts = _split(uri)
    found = [parts.password, fully_unquoted(parts.password)] if parts is not None and parts.password else []
    found += [match.group(1) for match in SECRET_VALUE.finditer(fully_unquoted(uri))]
    return [secret for secret in found if secret and secret != HIDDEN]


def _checked(redacted: str, secrets: list[str]) -> str:
    """`redacted`, unless a password still shows in it (a spelling redact_uri did not foresee): ***."""
    shown = (redacted, fully_unquoted(redacted))
    return HIDDEN if any(secret in text for secret in secrets for text in shown) else redacted


def password_error(name: str | None, uri: str) -> str | None:
    """One line, the password hidden, or None when `uri` holds none."""
    if not has_password(uri):
        return None
    named = f"{name}={redact_uri(uri)}" if name else redact_uri(uri)
    return f"{named} has a password in it; leave it out and {password_source(uri)}"


def password_source(uri: str) -> str:
    """Where the password for `uri` comes from instead, as the end of a one-line error."""
    if uri.split("://", 1)[0].split("+")[0].lower() in ("http", "https"):
        return "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
    return "give it to the database's client instead (PostgreSQL: PGPASSWORD or ~/.pgpass)"


def arguments_error(args: Iterable[str]) -> str | None:
    """The first command-line `key=value` (or bare value), or MLFLOW_TRACKING_URI, that holds a
    URI with a password, as one line; checked before Hydra writes its overrides anywhere."""
    for arg in args:
        key, separator, value = arg.partition("=")
        name, value = (key.lstrip("+~"), value) if separator and "://" not in key else (None, arg)
        # Hydra's quoting ('...'), and its sweeps (a,b), around one or more URIs: each is looked at.
        candidates = [value, value.strip("'\" "), *re.split(r"[\s,'\"]+", value)]
        if "://" in value and any(has_password(candidate) for candidate in candidates):
            stripped = value.strip("'\" ")
            shown = _checked(redact_uri(stripped), [secret for c in candidates for secret in _secrets(c)])
            named = f"{name}={shown}" if name else shown
            return f"{named} has a password in it; leave it out and {password_source(stripped)}"
    environment = os.environ.get(TRACKING_URI_VARIABLE, "")
    return password_error(TRACKING_URI_VARIABLE, environment) if environment else None


def _split(uri: str):
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError for a malformed netloc)
    except ValueError:
        return None
    return parts if parts.scheme and "://" in uri else None  # ('postgresql://...', quoted for Hydra: none)


def _hidden_value(key: str, value: str) -> str:
    key, value = fully_unquoted(key), fully_unquoted(value)
    return HIDDEN if SECRET_NAME.match(key) or SECRET_KEY.search(value) else value


def _only_hidden(query: str) -> bool:
    """Every password key in the query has *** for its value."""
    text = fully_unquoted(query)
    return all(text[match.end() :].startswith(HIDDEN) for match in SECRET_KEY.finditer(text))


def exit_if_in_arguments(args: list[str]) -> None:
    """Exit 2 with one line if a command-line value or MLFLOW_TRACKING_URI holds a password: before
    Hydra composes, which writes the overrides into `.hydra/` and, in a run, the overrides tag."""
    error = arguments_error(args)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
