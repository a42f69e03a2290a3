"""What the ensemble command prints: a table rounded to 4 decimals, the run, and commands that work."""

from __future__ import annotations

import re

from simpsons.ensembling.console import Row, calibration, next_steps, table


def test_the_table_rounds_to_four_decimals_and_aligns_its_columns():
    rows = [
        Row("mobilenet (3f2a9c1b)", "mobilenet-adam lr=0.001 " + "x" * 60, 0.5, {"val": 0.31874999999, "test": 1 / 3}),
        Row("vgg16 (0a1b2c3d)", "vgg16-sgd", 0.0, {"val": 0.25, "test": 0.2}),
        Row("ensemble (greedy)", "ensemble-greedy-top2-sweep", 1.0, {"val": 0.3333333, "test": 0.4}),
    ]
    lines = table(rows).splitlines()
    assert lines[0].split() == ["run", "name", "weight", "val_accuracy", "test_accuracy"]
    numbers = re.findall(r"\d+\.\d+", "\n".join(lines[2:]).replace("lr=0.001", ""))
    assert numbers and all(len(n.split(".")[1]) == 4 for n in numbers)
    assert "0.3187" in lines[2] and "0.3333" in lines[2]
    assert len({len(line) for line in lines[:2]}) == 1  # the rule is as wide as the header
    assert "…" in lines[2] and len(lines[2]) < 130  # a long run name is cut, the id tells runs apart


def test_next_steps_name_the_store_only_when_it_is_not_the_default():
    text = next_steps("abc123", "ensemble-mean-top2-x", "models:/m-1", "models:/simpsons@champion", "simpsons v1", None)
    assert "python -m simpsons.predict --run abc123 photo.jpg" in text
    assert "mlflow models serve -m models:/simpsons@champion --env-manager local" in text
    assert "--tracking-uri" not in text and "MLFLOW_TRACKING_URI" not in text
    text = next_steps("abc123", "n", "models:/m-1", "models:/m-1", None, "sqlite:////tmp/x.db")
    assert "python -m simpsons.predict --run abc123 --tracking-uri sqlite:////tmp/x.db" in text
    assert "MLFLOW_TRACKING_URI=sqlite:////tmp/x.db mlflow models serve -m models:/m-1" in text
    assert "not registered (register=false)" in text


def test_the_calibration_line_gives_the_temperature_and_the_error_before_and_after_to_four_decimals():
    line = calibration(1.83456, {"val": 0.123456, "test": 0.2}, {"val": 0.01, "test": 0.05})
    assert line == "temperature 1.8346, fitted on validation; ECE val 0.1235 -> 0.0100, test 0.2000 -> 0.0500"
    assert calibration(None, {"val": 0.1}, {}) == "not calibrated (calibrate=false); ECE val 0.1000"
    text = next_steps("abc123", "n", "models:/m-1", "models:/m-1", None, None, line)
    assert text.splitlines()[2] == f"calibration   {line}"
