"""An ensemble of candidates: the weights, its evaluation on each split, and each candidate's accuracy.

Scores come from the outputs each candidate logged (predictions/<split>.csv): no model is reloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from simpsons.ensembling.maths import accuracy, greedy_weights, weighted_mean
from simpsons.ensembling.selection import Candidate
from simpsons.evaluation import Evaluation
from simpsons.tracking import reader

log = logging.getLogger("simpsons.ensemble")


@dataclass(frozen=True)
class Ensemble:
    candidates: list[Candidate]  # best first
    weights: np.ndarray  # one per candidate, summing to 1; 0 for a candidate that is no member
    evaluations: dict[str, Evaluation]  # "val", and "test" where the candidates had a test set
    accuracies: dict[str, list[float]]  # split -> each candidate's accuracy
    method: str

    @property
    def members(self) -> list[tuple[Candidate, float]]:
        """The candidates whose outputs are averaged, with their weights, best-ranked first."""
        return [(c, float(w)) for c, w in zip(self.candidates, self.weights, strict=True) if w > 0]

    @property
    def splits(self) -> list[str]:
        return list(self.evaluations)

    @property
    def chart_split(self) -> str:
        return "test" if "test" in self.evaluations else "val"

    def accuracy(self, split: str) -> float:
        return self.evaluations[split].metrics()[f"{split}_accuracy"]

    def gain(self, split: str) -> float:
        """Over the best single candidate on the split: what averaging bought."""
        return self.accuracy(split) - max(self.accuracies[split])


def combine(candidates: list[Candidate], cfg: DictConfig, class_names: list[str]) -> Ensemble:
    first = candidates[0].outputs
    if "test" not in first:
        log.warning("the candidates have no test set: the ensemble is scored on validation only")
    labels = {split: _label_indices(outputs, class_names) for split, outputs in first.items()}
    weights = candidate_weights(candidates, cfg, labels["val"])
    evaluations = {
        split: Evaluation(
            split,
            outputs.names,
            labels[split],
            weighted_mean([c.outputs[split].probabilities for c in candidates], weights),
        )
        for split, outputs in first.items()
    }
    accuracies = {
        split: [accuracy(c.outputs[split].probabilities, labels[split]) for c in candidates] for split in first
    }
    return Ensemble(candidates, weights, evaluations, accuracies, cfg.method)


def candidate_weights(candidates: list[Candidate], cfg: DictConfig, val_labels: np.ndarray) -> np.ndarray:
    """Weights summing to 1: greedy selection counts, validation accuracies, or equal."""
    if cfg.method == "greedy":
        weights = greedy_weights([c.outputs["val"].probabilities for c in candidates], val_labels)
    elif cfg.weights == "val_accuracy":
        weights = np.array([c.run.data.metrics["val_accuracy"] for c in candidates])
    else:
        weights = np.ones(len(candidates))
    return weights / weights.sum()


def _label_indices(outputs: reader.Outputs, class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in outputs.labels], dtype=np.int32)
