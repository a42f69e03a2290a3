"""Scoring a trained model on a split: softmax outputs, loss, accuracy, macro F1, and their plots."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, classification_report, f1_score

from simpsons.data import Split


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


EAGER_ROWS = 4096


def evaluate(model: keras.Model, inputs: tf.data.Dataset | np.ndarray, split: Split, name: str) -> Evaluation:
    """Softmax outputs of `model` on `inputs`, which must hold `split` in order, unshuffled.

    An array (a head's cached features) goes through the model in eager calls of EAGER_ROWS rows:
    tracing a predict function would cost more than the head's whole pass.
    """
    if isinstance(inputs, np.ndarray):
        starts = range(0, len(inputs), EAGER_ROWS)
        chunks = [model(inputs[start : start + EAGER_ROWS], training=False) for start in starts]
        probabilities = np.concatenate([keras.ops.convert_to_numpy(chunk) for chunk in chunks])
    else:
        probabilities = model.predict(inputs, verbose=0)
    return Evaluation(name, split.names, split.labels, probabilities.astype(np.float32))


def report_text(evaluation: Evaluation, class_names: list[str]) -> str:
    return classification_report(
        evaluation.labels,
        evaluation.predicted,
        labels=evaluation.scored_classes,
        target_names=[class_names[i] for i in evaluation.scored_classes],
        digits=4,
        zero_division=0,
    )


def confusion_matrix_figure(evaluation: Evaluation, class_names: list[str]) -> Figure:
    """Counts per (true, predicted) class, with margins sized to the longest class name; empty cells blank.

    Drawing text is most of the cost of this figure: writing only the non-zero counts (about one
    per class for a useful model, instead of classes squared) and fixed margins instead of a layout
    engine keep it well under a second for 20 classes on a 2-core CPU.
    """
    label_inches = 0.08 * max(map(len, class_names)) + 0.7
    side = max(5.0, 0.45 * len(class_names) + label_inches)
    figure = Figure(figsize=(side, side))
    figure.subplots_adjust(left=label_inches / side, bottom=label_inches / side, right=0.97, top=1 - 0.5 / side)
    axes = figure.subplots()
    display = ConfusionMatrixDisplay.from_predictions(
        evaluation.labels,
        evaluation.predicted,
        labels=list(range(len(class_names))),
        display_labels=class_names,
        xticks_rotation="vertical",
        colorbar=False,
        include_values=False,
        ax=axes,
    )
    counts = display.confusion_matrix
    dark_above = counts.max() / 2  # white text on dark cells, as ConfusionMatrixDisplay does
    for true, predicted in zip(*np.nonzero(counts), strict=True):
        count = counts[true, predicted]
        color = "white" if count > dark_above else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", color=color)
    axes.set_title(f"{evaluation.split} confusion matrix")
    return figure
