"""The `next:` lines name the interpreter, or the console script, that the user ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from simpsons import commands


def test_a_module_run_names_its_interpreter_relative_to_the_working_directory(tmp_path, monkeypatch):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(sys, "argv", ["/somewhere/simpsons/train.py"])
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path)
    assert commands.command("ensemble") == "venv/bin/python -m simpsons.ensemble"
    monkeypatch.chdir("/")
    assert commands.command("report") == f"{python} -m simpsons.report"


def test_an_interpreter_that_path_finds_is_named_alone(tmp_path, monkeypatch):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setenv("PATH", f"{python.parent}{os.pathsep}/usr/bin")
    assert commands.command("predict") == "python -m simpsons.predict"


def test_a_console_script_run_names_its_sibling_script(tmp_path, monkeypatch):
    script = tmp_path / ".venv" / "bin" / "simpsons-train"
    script.parent.mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", [str(script), "-m", "experiment=demo"])
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path)
    assert commands.command("ensemble") == str(Path(".venv/bin/simpsons-ensemble"))


def test_mlflow_is_the_one_beside_the_interpreter(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mlflow").write_text("")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path)
    assert commands.mlflow_command() == "bin/mlflow"
    monkeypatch.setattr(sys, "executable", "/nowhere/python")
    assert commands.mlflow_command() == "mlflow"
