"""An ensemble of candidates: the weights, its evaluation on each split, each candidate's accuracy, and
how well calibrated each one is (with calibrate=true, the ensemble's outputs are temperature-scaled).

Scores come from the outputs each candidate logged (predictions/<split>.csv): no model is reloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from simpsons.ensembling.maths import (
    accuracy,
    expected_calibration_error,
    fit_temperature,
    greedy_weights,
    temperature_scaled,
    weighted_mean,
)
from simpsons.ensembling.selection import Candidate
from simpsons.evaluation import Evaluation
from simpsons.settings import EnsembleSettings
from simpsons.tracking import reader, schema

log = logging.getLogger("simpsons.ensemble")


@dataclass(frozen=True)
class Calibration:
    """How well one model's outputs are calibrated, per split: before, and after its own temperature."""

    ece: dict[str, float]  # split -> expected calibration error of the outputs as they were logged
    temperature: float | None = None  # fitted on validation; None without calibrate=true
    ece_calibrated: dict[str, float] = field(default_factory=dict)  # split -> ECE after the temperature

    def metrics(self) -> dict[str, float]:
        """`val_ece`, `test_ece`; calibrated, also `val_ece_calibrated`, `test_ece_calibrated`, `temperature`."""
        found = {f"{split}_ece": value for split, value in self.ece.items()}
        found |= {f"{split}_ece_calibrated": value for split, value in self.ece_calibrated.items()}
        return found if self.temperature is None else found | {"temperature": self.temperature}


@dataclass(frozen=True)
class Ensemble:
    candidates: list[Candidate]  # best first
    weights: np.ndarray  # one per candidate, summing to 1; 0 for a candidate that is no member
    evaluations: dict[str, Evaluation]  # "val", and "test" where the candidates had a test set
    accuracies: dict[str, list[float]]  # split -> each candidate's accuracy
    method: str
    # The ensemble's: its `ece` is that of the plain weighted mean; with a temperature, `evaluations`
    # hold the temperature-scaled outputs (what its model serves).
    calibration: Calibration
    calibrations: list[Calibration]  # each candidate's, with its own temperature

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


def combine(candidates: list[Candidate], cfg: EnsembleSettings, class_names: list[str]) -> Ensemble:
    first = candidates[0].outputs
    if "test" not in first:
        log.warning("the candidates have no test set: the ensemble is scored on validation only")
    labels = {split: _label_indices(outputs, class_names) for split, outputs in first.items()}
    weights = candidate_weights(candidates, cfg, labels["val"])
    averaged = {split: weighted_mean([c.outputs[split].probabilities for c in candidates], weights) for split in first}
    calibration, outputs = calibrated(averaged, labels, cfg.calibrate)
    evaluations = {split: Evaluation(split, first[split].names, labels[split], outputs[split]) for split in first}
    accuracies = {
        split: [accuracy(c.outputs[split].probabilities, labels[split]) for c in candidates] for split in first
    }
    calibrations = [
        calibrated({split: c.outputs[split].probabilities for split in first}, labels, cfg.calibrate)[0]
        for c in candidates
    ]
    return Ensemble(candidates, weights, evaluations, accuracies, cfg.method, calibration, calibrations)


def calibrated(
    outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray], calibrate: bool
) -> tuple[Calibration, dict[str, np.ndarray]]:
    """The ECE of `outputs` on each split; with `calibrate`, also a temperature fitted on the validation
    outputs, and the ECE after it. Returns that, and the outputs (temperature-scaled with `calibrate`)."""
    ece = {split: expected_calibration_error(found, labels[split]) for split, found in outputs.items()}
    if not calibrate:
        return Calibration(ece), outputs
    temperature = fit_temperature(outputs["val"], labels["val"])
    scaled = {split: temperature_scaled(found, temperature) for split, found in outputs.items()}
    after = {split: expected_calibration_error(found, labels[split]) for split, found in scaled.items()}
    return Calibration(ece, temperature, after), scaled


def candidate_weights(candidates: list[Candidate], cfg: EnsembleSettings, val_labels: np.ndarray) -> np.ndarray:
    """Weights summing to 1: greedy selection counts, validation accuracies (best_val_accuracy), or equal."""
    if cfg.method == "greedy":
        weights = greedy_weights([c.outputs["val"].probabilities for c in candidates], val_labels)
    elif cfg.weights == "val_accuracy":
        # The kept epoch's (the model the run logged), not the run's latest val_accuracy, its last epoch's.
        weights = np.array([c.run.data.metrics[schema.KEPT_VAL_ACCURACY] for c in candidates])
    else:
        weights = np.ones(len(candidates))
    return weights / weights.sum()


def _label_indices(outputs: reader.Outputs, class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in outputs.labels], dtype=np.int32)
