"""Where the project lives and its config groups, and the OmegaConf resolvers its configs use."""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
SWEEP_ID_VARIABLE = "SIMPSONS_SWEEP_ID"  # conf/train.yaml sets it for every job of a multirun


def default_tracking_uri() -> str:
    """SQLite store at the project root: the one a plain `mlflow ui` there opens."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri_from_environment() -> str:
    """What conf/tracking/default.yaml resolves to: MLFLOW_TRACKING_URI, else the default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def add_tracking_uri_argument(parser: argparse.ArgumentParser) -> None:
    """--tracking-uri, as every command that reads the store (report, predict, reproduce, gc) takes it."""
    parser.add_argument(
        "--tracking-uri",
        default=tracking_uri_from_environment(),
        help="MLflow store: a sqlite:/// path or a server URL (default: $MLFLOW_TRACKING_URI, else the "
        "project's mlflow.db)",
    )


def new_invocation_id() -> str:
    return uuid.uuid4().hex[:8]


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("default_tracking_uri", default_tracking_uri, replace=True)
    # One id per command: cached in the config, and Hydra copies a multirun's cache into every
    # job's config (as it does for ${now:}), so the driver and all jobs, under any launcher, see
    # the same id. It names the sweep and keeps output folders of commands started together apart.
    OmegaConf.register_new_resolver("invocation_id", new_invocation_id, use_cache=True, replace=True)
    # A value as it is typed on the command line (true, null), for the --help text.
    OmegaConf.register_new_resolver("typed", as_typed, replace=True)


def as_typed(value: object) -> str:
    """How a config value is written in an override: true/false/null, not Python's True/None."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def group_options(group: str) -> list[str]:
    """The choices of a config group, e.g. group_options("backbone") -> ["convnext_tiny", ...]."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`optimizer.lr`): what a run logs as params; an empty dict stays a value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
