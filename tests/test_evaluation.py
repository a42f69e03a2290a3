"""Scoring a split: metrics and the per-class report agree."""

from __future__ import annotations

import numpy as np
import pytest

from simpsons.evaluation import Evaluation, report_text


def test_macro_f1_and_the_report_average_over_the_same_classes():
    labels = np.array([0, 0, 1, 1])  # a test set without class 2, which training had
    probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]], dtype=np.float32)
    evaluation = Evaluation("test", ["a", "b", "c", "d"], labels, probabilities)
    macro_f1 = evaluation.metrics()["test_macro_f1"]
    report = report_text(evaluation, ["bart", "lisa", "maggie"])
    assert "maggie" not in report
    [macro_line] = [line for line in report.splitlines() if "macro avg" in line]
    assert float(macro_line.split()[4]) == pytest.approx(macro_f1, abs=1e-4)
    assert evaluation.metrics()["test_accuracy"] == 0.75
