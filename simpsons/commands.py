"""How to run this project's other commands the way the user ran this one: the `next:` lines.

A user who typed `.venv/bin/python -m simpsons.train` without activating the venv gets
`.venv/bin/python -m simpsons.ensemble ...` back, not a `python` that may lack the project (or be
another Python); one who ran the console script `simpsons-train` gets `simpsons-ensemble`. No
TensorFlow or MLflow here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CONSOLE_SCRIPT_PREFIX = "simpsons-"  # pyproject.toml's [project.scripts]: simpsons-train, simpsons-ensemble, ...


def command(name: str) -> str:
    """How to run `simpsons.<name>` (train, ensemble, report, predict): through the console script when
    this process runs one, else `<this interpreter> -m simpsons.<name>`."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name.startswith(CONSOLE_SCRIPT_PREFIX):
        return shown(script.with_name(f"{CONSOLE_SCRIPT_PREFIX}{name}"))
    return f"{shown(Path(sys.executable))} -m simpsons.{name}"


def mlflow_command() -> str:
    """MLflow's CLI beside this interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("mlflow")
    return shown(beside) if beside.is_file() else "mlflow"


def shown(path: Path) -> str:
    """A program as short as still runs this one: its bare name when PATH finds this very file (an
    activated venv), else its path relative to the working directory when below it (but /), else absolute."""
    found = shutil.which(path.name)
    if found is not None and os.path.abspath(found) == os.path.abspath(path):
        return path.name
    absolute = Path(os.path.abspath(path))  # not resolved: a venv's python is a link to the system's
    below = Path.cwd() != Path(Path.cwd().anchor) and absolute.is_relative_to(Path.cwd())
    return str(absolute.relative_to(Path.cwd())) if below else str(absolute)
