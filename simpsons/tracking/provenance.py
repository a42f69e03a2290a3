"""Where a run's results come from: the code (its git commit and diff, and a hash of the package's
sources and computing libraries) and the config (as flat params). No TensorFlow here."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import subprocess
from typing import Any

from simpsons.config import PROJECT_ROOT, flatten
from simpsons.tracking import schema

# Their versions are part of the code version, those installed: a JAX machine may have no TensorFlow.
CODE_PACKAGES = ("tensorflow", "keras", "numpy", "jax", "jaxlib")


def git_tags() -> dict[str, str]:
    """The project's git commit and whether tracked files differ from it ('unknown' outside git)."""
    commit = git("rev-parse", "HEAD").strip()
    if not commit:
        return {schema.GIT_COMMIT: "unknown", schema.GIT_DIRTY: "unknown"}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    return {schema.GIT_COMMIT: commit, schema.GIT_DIRTY: str(dirty).lower(), schema.MLFLOW_GIT_COMMIT: commit}


def git_diff() -> str:
    """Uncommitted changes to tracked files: with the commit tag, they reproduce the code."""
    return git("diff", "HEAD")


def git(*args: str) -> str:
    """git's output in the project folder; empty where git or the repository is missing."""
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


@functools.cache
def code_version() -> str:
    """SHA-256 over the package's Python sources and the versions of the libraries that compute.

    What decides whether an earlier run of the same config can stand for a new one: unlike the
    git commit, it ignores edits to docs and tests, and it works without git.
    """
    digest = hashlib.sha256()
    package = PROJECT_ROOT / "simpsons"
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package)}\n".encode())
        digest.update(path.read_bytes())
    versions = {name: _version(name) for name in CODE_PACKAGES}
    digest.update(json.dumps(versions, sort_keys=True).encode())
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def params(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (plain data) as a run's params: its dotted keys (`optimizer.lr`).

    The flattening itself is simpsons.config.flatten: the settings take their identity (what the
    config hash covers) from the same keys."""
    return flatten(config)
