"""The predictions/<split>.csv format: written with predicted and correct columns, read in either layout."""

from __future__ import annotations

import csv

import numpy as np

from simpsons.tracking.predictions import from_csv, to_csv

CLASSES = ["bart", "homer", "lisa"]
PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], dtype=np.float32)


def test_each_row_says_the_predicted_class_and_whether_it_is_right():
    text = to_csv(["a.jpg", "b.jpg", "c.jpg"], ["bart", "homer", "homer"], PROBABILITIES, CLASSES)
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["file", "label", "predicted", "correct", *CLASSES]
    assert [row[:4] for row in rows[1:]] == [
        ["a.jpg", "bart", "bart", "1"],
        ["b.jpg", "homer", "lisa", "0"],
        ["c.jpg", "homer", "homer", "1"],
    ]


def test_the_outputs_read_back_float32_exact_from_both_layouts():
    names, labels = ["a.jpg", "b.jpg", "c.jpg"], ["bart", "homer", "homer"]
    written = from_csv(to_csv(names, labels, PROBABILITIES, CLASSES))
    assert written.names == names and written.labels == labels
    np.testing.assert_array_equal(written.probabilities, PROBABILITIES)
    # a file logged before `predicted` and `correct` existed (runs an ensemble may still draw on)
    rows = zip(names, labels, PROBABILITIES, strict=True)
    earlier = "file,label,bart,homer,lisa\n" + "".join(
        f"{name},{label},{','.join(format(p, '.9g') for p in row)}\n" for name, label, row in rows
    )
    read = from_csv(earlier)
    assert read.names == names and read.labels == labels
    np.testing.assert_array_equal(read.probabilities, PROBABILITIES)
