"""Figures: what the confusion matrix writes, and drawing in the worker process."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
from PIL import Image

from simpsons import plots

LABELS, PREDICTED = np.array([0, 1, 1]), np.array([0, 1, 0])


def test_the_confusion_matrix_writes_every_non_zero_count_and_no_zero():
    labels = np.array([0, 0, 0, 1, 2, 2])
    predicted = np.array([0, 0, 1, 1, 2, 0])
    [axes] = plots.confusion_matrix_figure(labels, predicted, ["bart", "lisa", "maggie"], "test").axes
    written = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axes.texts}
    assert written == {(0, 0): "2", (0, 1): "1", (1, 1): "1", (2, 2): "1", (2, 0): "1"}  # (true, predicted)


def worker_pid() -> int:
    plots.start_worker()
    return plots._workers[0]._process.pid


def test_figures_are_drawn_in_a_worker_process_and_come_back_as_the_same_png():
    drawing = plots.draw_meanwhile("confusion_matrix", LABELS, PREDICTED, ["bart", "lisa"], "val")
    assert drawing.future is not None and worker_pid() != os.getpid()
    png = drawing.png()
    assert png == plots.confusion_matrix_png(LABELS, PREDICTED, ["bart", "lisa"], "val")
    assert Image.open(io.BytesIO(png)).size == (500, 500)


def test_an_error_in_the_worker_names_the_figure():
    drawing = plots.draw_meanwhile("confusion_matrix", LABELS, PREDICTED, [], "val")  # no class names
    with pytest.raises(RuntimeError, match="figure worker: confusion_matrix: ValueError"):
        drawing.png()


def test_a_killed_worker_costs_no_figure_and_is_replaced():
    killed = worker_pid()
    os.kill(killed, signal.SIGKILL)
    drawing = plots.draw_meanwhile("confusion_matrix", LABELS, PREDICTED, ["bart", "lisa"], "test")
    assert Image.open(io.BytesIO(drawing.png())).format == "PNG"  # drawn here, once the worker is found gone
    assert worker_pid() not in (killed, os.getpid())
