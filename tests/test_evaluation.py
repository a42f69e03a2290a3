"""Scoring a split: metrics and the per-class report agree; several views of a split are averaged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from simpsons.evaluation import Evaluation, evaluate


def test_macro_f1_and_the_report_average_over_the_same_classes():
    labels = np.array([0, 0, 1, 1])  # a test set without class 2, which training had
    probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]], dtype=np.float32)
    evaluation = Evaluation("test", ["a", "b", "c", "d"], labels, probabilities)
    macro_f1 = evaluation.metrics()["test_macro_f1"]
    report = evaluation.report(["bart", "lisa", "maggie"])
    assert "maggie" not in report
    [macro_line] = [line for line in report.splitlines() if "macro avg" in line]
    assert float(macro_line.split()[4]) == pytest.approx(macro_f1, abs=1e-4)
    assert evaluation.metrics()["test_accuracy"] == 0.75


def test_the_outputs_of_several_views_are_the_mean_of_their_softmax_outputs():
    """tta=flip with the feature cache: the head scores the images' features and their mirror images'."""
    layer = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    model = keras.Sequential([keras.Input(shape=(4,)), layer])
    rng = np.random.default_rng(0)
    features, mirrored = rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=(5, 4)).astype("float32")
    names = [f"{i}.jpg" for i in range(5)]
    labels = np.array([0, 1, 2, 0, 1])
    alone, other = model(features).numpy(), model(mirrored).numpy()

    assert np.array_equal(evaluate(model, features, names, labels, "val").probabilities, alone)
    averaged = evaluate(model, (features, mirrored), names, labels, "val").probabilities
    assert averaged.dtype == np.float32
    np.testing.assert_allclose(averaged, (alone + other) / 2, atol=1e-7)
    assert np.abs(averaged - alone).max() > 1e-3
