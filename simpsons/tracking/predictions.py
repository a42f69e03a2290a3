"""The predictions/<split>.csv format: one row per image, its true label, the predicted class,
whether it is right, and the softmax output.

Written by the training and ensemble runs, read back by the ensemble job; numpy only, so the
read side loads no TensorFlow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Outputs:
    """The softmax outputs a run logged for one split, with the file names and true labels."""

    names: list[str]
    labels: list[str]
    probabilities: np.ndarray


LEADING = ["file", "label", "predicted", "correct"]  # the columns before the classes'
EARLIER_LEADING = ["file", "label"]  # files logged before `predicted` and `correct` existed


def to_csv(names: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, class_names: list[str]) -> str:
    """file, label, predicted (the most probable class), correct (1 or 0), then the probability
    of each class (float32-exact)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*LEADING, *class_names])
    for name, label, row in zip(names, labels, probabilities, strict=True):
        predicted = class_names[int(np.argmax(row))]
        writer.writerow([name, label, predicted, int(predicted == label), *(format(p, ".9g") for p in row)])
    return buffer.getvalue()


def from_csv(text: str) -> Outputs:
    """The outputs in a predictions CSV, of either layout (with or without predicted and correct)."""
    header, *rows = csv.reader(io.StringIO(text))
    first = len(LEADING) if header[: len(LEADING)] == LEADING else len(EARLIER_LEADING)
    probabilities = np.array([[float(p) for p in row[first:]] for row in rows], dtype=np.float32)
    return Outputs([row[0] for row in rows], [row[1] for row in rows], probabilities)
