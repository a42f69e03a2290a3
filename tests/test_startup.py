"""Importing the package changes nothing; each command prepares its own process; the console scripts."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import os, sys
before = (list(sys.meta_path), dict(os.environ), os.fstat(2).st_ino)
import simpsons, simpsons.config, simpsons.errors, simpsons.tracking.schema
after = (list(sys.meta_path), dict(os.environ), os.fstat(2).st_ino)
print(before == after)
from simpsons import startup
startup.prepare_process()
print(len(sys.meta_path) - len(before[0]), os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"])
"""


def test_importing_the_package_has_no_side_effects_and_prepare_process_does_its_part():
    set_by_startup = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    env = {k: v for k, v in os.environ.items() if k not in set_by_startup}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1", "false"]


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("simpsons-train", "python -m simpsons.train"),
        ("simpsons-ensemble", "python -m simpsons.ensemble"),
        ("simpsons-report", "--sweep"),
        ("simpsons-predict", "--run"),
        ("simpsons-server", "--backend-store-uri"),
    ],
)
def test_each_console_script_is_installed_and_answers_help(script, says):
    """Installed by `pip install -e .` from pyproject.toml's [project.scripts], beside the interpreter."""
    scripts = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get(script) == f"simpsons.{script.removeprefix('simpsons-')}:main"
    path = Path(sys.executable).parent / script
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert says in result.stdout
