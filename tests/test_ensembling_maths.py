"""Weighted means and greedy forward selection of softmax outputs."""

from __future__ import annotations

import numpy as np
import pytest

from simpsons.ensembling.maths import accuracy, greedy_weights, weighted_mean


def test_greedy_selection_combines_complementary_candidates_and_leaves_useless_ones_out():
    labels = np.array([0, 1, 2, 0])
    good_at_0_and_1 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1]])
    good_at_2 = np.array([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.3, 0.4, 0.3]])
    useless = np.full((4, 3), 1 / 3)
    weights = greedy_weights([useless, good_at_0_and_1, good_at_2], labels)
    assert weights[0] == 0 and weights[1] > 0 and weights[2] > 0
    assert weights.sum() == pytest.approx(1)
    combined = weighted_mean([useless, good_at_0_and_1, good_at_2], weights)
    assert (combined.argmax(1) == labels).all()
    assert accuracy(combined, labels) == 1.0


def test_weighted_mean_normalises_the_weights():
    first, second = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(weighted_mean([first, second], np.array([3.0, 1.0])), [[0.75, 0.25]])
    assert weighted_mean([first, second], np.array([1.0, 1.0])).dtype == np.float32
