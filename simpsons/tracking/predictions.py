"""The predictions/<split>.csv format: one row per image, its true label and softmax output.

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


def to_csv(names: Sequence[str], labels: Sequence[str], probabilities: np.ndarray, class_names: list[str]) -> str:
    """file, label, then the probability of each class (float32-exact)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", *class_names])
    for name, label, row in zip(names, labels, probabilities, strict=True):
        writer.writerow([name, label, *(format(p, ".9g") for p in row)])
    return buffer.getvalue()


def from_csv(text: str) -> Outputs:
    rows = list(csv.reader(io.StringIO(text)))[1:]
    probabilities = np.array([[float(p) for p in row[2:]] for row in rows], dtype=np.float32)
    return Outputs([row[0] for row in rows], [row[1] for row in rows], probabilities)
