"""How an ensemble combines its members' softmax outputs: weighted means, and greedy selection."""

from __future__ import annotations

import numpy as np
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
    return accuracy, -log_loss(labels, np.clip(probabilities, 1e-7, 1), labels=classes)
