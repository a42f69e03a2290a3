"""Scoring a trained model on a split: softmax outputs, loss, accuracy, macro F1 (figures: simpsons.plots)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from sklearn.metrics import accuracy_score, classification_report, f1_score


@dataclass(frozen=True)
class Evaluation:
    split: str
    names: list[str]
    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def scored_classes(self) -> np.ndarray:
        """Classes that occur in the split or its predictions: the ones macro averages run over.

        A test set may hold fewer classes than training (Kaggle's does); classes absent from
        both would add meaningless zeros.
        """
        return np.union1d(self.labels, self.predicted)

    def metrics(self) -> dict[str, float]:
        loss = keras.losses.sparse_categorical_crossentropy(self.labels, self.probabilities)
        return {
            f"{self.split}_loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
            f"{self.split}_accuracy": float(accuracy_score(self.labels, self.predicted)),
            f"{self.split}_macro_f1": float(
                f1_score(self.labels, self.predicted, labels=self.scored_classes, average="macro", zero_division=0)
            ),
        }

    def report(self, class_names: list[str]) -> str:
        """Precision, recall and F1 per class (report.txt)."""
        return report_text(self, class_names)


EAGER_ROWS = 4096

Inputs = Any  # batches of images (simpsons/pipeline.py), or an array of cached features


def evaluate(
    model: keras.Model, inputs: Inputs | tuple[Inputs, ...], names: list[str], labels: np.ndarray, split: str
) -> Evaluation:
    """Softmax outputs of `model` on `inputs`, which must hold the files `names` (with their `labels`)
    of the split named `split`, in order, unshuffled.

    A tuple holds views of the same images, e.g. the cached features of the images and of their
    mirror images (tta=flip): the outputs are the mean of the views' softmax outputs, as the
    logged model's Average layer computes them (simpsons.model.with_flip_tta).
    """
    views = inputs if isinstance(inputs, tuple) else (inputs,)
    probabilities = np.mean([softmax(model, view) for view in views], axis=0, dtype=np.float32)
    return Evaluation(split, names, labels, probabilities)


def softmax(model: keras.Model, inputs: Inputs) -> np.ndarray:
    """`model`'s float32 outputs on `inputs`, in order.

    An array (a head's cached features) goes through the model in eager calls of EAGER_ROWS rows:
    tracing a predict function would cost more than the head's whole pass.
    """
    if isinstance(inputs, np.ndarray):
        starts = range(0, len(inputs), EAGER_ROWS)
        chunks = [model(inputs[start : start + EAGER_ROWS], training=False) for start in starts]
        probabilities = np.concatenate([keras.ops.convert_to_numpy(chunk) for chunk in chunks])
    else:
        probabilities = model.predict(inputs, verbose=0)
    return probabilities.astype(np.float32)


def report_text(evaluation: Evaluation, class_names: list[str]) -> str:
    return classification_report(
        evaluation.labels,
        evaluation.predicted,
        labels=evaluation.scored_classes,
        target_names=[class_names[i] for i in evaluation.scored_classes],
        digits=4,
        zero_division=0,
    )
