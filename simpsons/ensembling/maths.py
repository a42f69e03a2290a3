"""How an ensemble combines its members' softmax outputs (weighted means, greedy selection), and how
well calibrated they are: the expected calibration error, and temperature scaling."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, log_loss


def weighted_mean(probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_i w_i * p_i with the weights normalised to sum to 1."""
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return np.tensordot(weights, np.stack(probabilities).astype(np.float64), axes=1).astype(np.float32)


def greedy_weights(probabilities: list[np.ndarray], labels: np.ndarray, max_rounds: int = 100) -> np.ndarray:
    """Forward selection with replacement on validation outputs (Caruana et al., 2004).

    Each round adds the candidate whose inclusion gives the best (accuracy, then lowest log loss);
    it stops when that is no better than the ensemble so far. The first round picks the best
    single candidate, so the result is never below it on validation. Returns normalised weights
    (how often each candidate was picked; 0 for the ones never picked, which are no members).
    """
    counts = np.zeros(len(probabilities))
    total = np.zeros_like(probabilities[0], dtype=np.float64)
    best = (-np.inf, -np.inf)
    classes = np.arange(probabilities[0].shape[1])
    for _ in range(max_rounds):
        scores = [_score((total + p) / (counts.sum() + 1), labels, classes) for p in probabilities]
        pick = max(range(len(scores)), key=scores.__getitem__)
        if scores[pick] <= best:
            break
        counts[pick] += 1
        total += probabilities[pick]
        best = scores[pick]
    return counts / counts.sum()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose most probable class is the label."""
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def _score(probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    accuracy = accuracy_score(labels, probabilities.argmax(axis=1))
    # float32 softmax rows sum to 1 only within about 1e-7, beyond what log_loss's check allows: it
    # warned for every candidate in every round. Renormalised in float64; log_loss clips zeros itself.
    rows = probabilities.astype(np.float64)
    return accuracy, -log_loss(labels, rows / rows.sum(axis=1, keepdims=True), labels=classes)


# Calibration. A temperature T turns softmax outputs p into softmax(log(p) / T): T > 1 softens
# overconfident outputs, T < 1 sharpens underconfident ones; the order of the classes, hence the
# argmax and the accuracy, stays. served_model.py applies the same formula to the averaged outputs.
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017), "On calibration of modern neural networks"
TEMPERATURE_BOUNDS = (0.05, 20.0)  # far beyond the temperatures real networks need (about 0.5 to 5)
# log(0) has no temperature. The floor lies above float32's subnormals, whose few digits would scale
# differently in the logged (float32) outputs and the served (float64) ones; far below anything that matters.
PROBABILITY_FLOOR = 1e-30


def temperature_scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row, as float32."""
    logits = np.log(np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, None)) / temperature
    return softmax(logits, axis=1).astype(np.float32)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean of -log p(label): what temperature scaling minimises on validation."""
    truth = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.mean(np.log(np.clip(truth, PROBABILITY_FLOOR, None))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T within TEMPERATURE_BOUNDS that minimises the negative log likelihood of softmax(log(p) / T).

    Searched on log T: the loss is convex in 1/T, hence unimodal in log T, so a bounded scalar search
    finds its minimum (to its tolerance, 1e-5 in log T).
    """
    logits = np.log(np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, None))
    rows = np.arange(len(labels))

    def loss(log_temperature: float) -> float:
        return float(-np.mean(log_softmax(logits / np.exp(log_temperature), axis=1)[rows, labels]))

    low, high = np.log(TEMPERATURE_BOUNDS)
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over bins of (share of rows in the bin) * |accuracy - mean confidence| in the bin.

    The confidence is a row's largest probability; bin b holds confidences in (b/bins, (b+1)/bins].
    """
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    which = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], confidence, side="left")
    gaps = np.bincount(which, weights=correct, minlength=bins) - np.bincount(which, weights=confidence, minlength=bins)
    return float(np.abs(gaps).sum() / len(labels))
