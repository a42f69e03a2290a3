"""Weighted means and greedy forward selection of softmax outputs; calibration error and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from simpsons.ensembling.maths import (
    ECE_BINS,
    accuracy,
    expected_calibration_error,
    fit_temperature,
    greedy_weights,
    negative_log_likelihood,
    temperature_scaled,
    weighted_mean,
)


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


def rows(confidence: float, right: int, wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-class outputs, all with the given confidence in class 0; `right` of them labelled 0."""
    probabilities = np.tile([confidence, 1 - confidence], (right + wrong, 1))
    return probabilities, np.array([0] * right + [1] * wrong)


def stacked(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p for p, _ in parts]), np.concatenate([labels for _, labels in parts])


def test_outputs_as_confident_as_they_are_right_have_no_calibration_error():
    assert ECE_BINS == 15
    assert expected_calibration_error(*stacked(rows(0.6, 3, 2), rows(0.9, 9, 1))) == pytest.approx(0)
    assert expected_calibration_error(*rows(1.0, 4, 0)) == pytest.approx(0)


def test_the_calibration_error_of_overconfident_outputs_is_the_share_weighted_gap_per_bin():
    assert expected_calibration_error(*rows(0.9, 5, 5)) == pytest.approx(0.4)
    # 4 rows at 1.0, half right (gap 0.5), and 6 at 0.7, all right (gap 0.3): 0.4 * 0.5 + 0.6 * 0.3
    assert expected_calibration_error(*stacked(rows(1.0, 2, 2), rows(0.7, 6, 0))) == pytest.approx(0.38)


def test_confidences_in_one_fifteenth_share_a_bin_and_the_next_fifteenth_is_another():
    # 0.81 and 0.85 both lie in (12/15, 13/15]: one bin of accuracy 0.5 and confidence 0.83
    assert expected_calibration_error(*stacked(rows(0.81, 1, 0), rows(0.85, 0, 1))) == pytest.approx(0.33)
    # 0.75 in (11/15, 12/15], 0.85 in (12/15, 13/15]: two bins, gaps 0.25 and 0.85
    assert expected_calibration_error(*stacked(rows(0.75, 1, 0), rows(0.85, 0, 1))) == pytest.approx(0.55)


def sampled(sharpness: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (so those outputs are calibrated), and the outputs softmax(sharpness * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(4000, 5))
    calibrated = softmax(logits, axis=1)
    labels = np.array([rng.choice(5, p=row) for row in calibrated])
    return softmax(sharpness * logits, axis=1).astype(np.float32), labels


def test_overconfident_outputs_get_a_temperature_above_one_that_lowers_the_loss_and_the_error():
    probabilities, labels = sampled(sharpness=3.0)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)  # it undoes the sharpening
    scaled = temperature_scaled(probabilities, temperature)
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(probabilities, labels) - 0.1
    assert expected_calibration_error(scaled, labels) < 0.03 < 0.1 < expected_calibration_error(probabilities, labels)
    assert (scaled.argmax(1) == probabilities.argmax(1)).all()
    np.testing.assert_allclose(scaled.sum(1), 1, atol=1e-6)


def test_underconfident_outputs_get_a_temperature_below_one():
    probabilities, labels = sampled(sharpness=0.5)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(0.5, rel=0.1)
    scaled = temperature_scaled(probabilities, temperature)
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(probabilities, labels)


def test_calibrated_outputs_keep_about_temperature_one_and_a_zero_output_still_scales():
    probabilities, labels = sampled(sharpness=1.0)
    assert fit_temperature(probabilities, labels) == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(temperature_scaled(probabilities, 1.0), probabilities, atol=1e-6)
    certain = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)  # float32 softmax can round a class to 0
    scaled = temperature_scaled(certain, 2.0)
    assert np.isfinite(scaled).all() and scaled.argmax() == 0
