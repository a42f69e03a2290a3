"""A training run's figures, drawn in a worker process while the run saves its model.

Drawing is the slow part of a figure, not computing it: rendering the glyphs of 40 class names
takes about 0.2 s of a 2-core CPU for a 20-class confusion matrix, and a run draws two. In a
cached grid a run costs about 2 s all told, so a worker process that draws them while the job
process saves and logs the model cuts a fifth of it.

The worker is `python -m simpsons.plots`, a plain subprocess fed pickled requests on its stdin:
not a multiprocessing pool, whose children re-import the job's main module and take its start
method (a joblib job's is loky's, which multiprocessing does not know). It ends when its stdin
closes, the job process gone, kill -9 included. No TensorFlow here.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def confusion_matrix_figure(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], split: str) -> Figure:
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
        labels,
        predicted,
        labels=list(range(len(class_names))),
        display_labels=class_names,
        xticks_rotation="vertical",
        colorbar=False,
        include_values=False,
        ax=axes,
    )
    counts = display.confusion_matrix
    dark_above = counts.max() / 2  # white text on dark cells, as ConfusionMatrixDisplay does
    for true, predicted_class in zip(*np.nonzero(counts), strict=True):
        count = counts[true, predicted_class]
        color = "white" if count > dark_above else "black"
        axes.text(predicted_class, true, str(count), ha="center", va="center", color=color)
    axes.set_title(f"{split} confusion matrix")
    return figure


def confusion_matrix_png(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], split: str) -> bytes:
    return png(confusion_matrix_figure(labels, predicted, class_names, split))


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


class WorkerGone(Exception):
    """The figure worker exited or was killed before answering."""


@dataclass(frozen=True)
class Drawing:
    """A figure being drawn in the worker; `png()` waits for it, or draws it here if the worker is gone."""

    name: str
    args: tuple
    future: Future[bytes] | None

    def png(self) -> bytes:
        if self.future is not None:
            try:
                return self.future.result()
            except WorkerGone:  # the OOM killer, a stray kill: the figure is still logged
                _workers.clear()
        return DRAWERS[self.name](*self.args)


def draw_meanwhile(name: str, *args: object) -> Drawing:
    """DRAWERS[name](*args), started in this process's figure worker."""
    try:
        return Drawing(name, args, _worker().submit(name, args))
    except WorkerGone:
        _workers.clear()
        return Drawing(name, args, None)


def start_worker() -> None:
    """Start the figure worker now, so that it has imported matplotlib before the first figure."""
    draw_meanwhile("nothing")


class _Worker:
    """The parent's end: requests go to the worker's stdin, a thread turns its answers into futures."""

    def __init__(self) -> None:
        command = [sys.executable, "-m", "simpsons.plots"]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._ids = itertools.count()
        self._pending: dict[int, Future[bytes]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read_answers, name="figure-worker", daemon=True).start()

    def submit(self, name: str, args: tuple) -> Future[bytes]:
        future: Future[bytes] = Future()
        with self._lock:
            if self._process.poll() is not None:
                raise WorkerGone
            request = next(self._ids)
            self._pending[request] = future
        try:
            pickle.dump((request, name, args), self._process.stdin)
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError) as error:  # ValueError: the pipe was closed
            raise WorkerGone from error
        return future

    def _read_answers(self) -> None:
        while True:
            try:
                request, png_bytes, error = pickle.load(self._process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self._lock:
                future = self._pending.pop(request)
            if error is None:
                future.set_result(png_bytes)
            else:
                future.set_exception(RuntimeError(f"figure worker: {error}"))
        with self._lock:
            for future in self._pending.values():
                future.set_exception(WorkerGone())
            self._pending.clear()


_workers: list[_Worker] = []  # this process's worker, started at the first figure


def _worker() -> _Worker:
    if not _workers:
        try:
            _workers.append(_Worker())
        except OSError as error:
            raise WorkerGone from error
    return _workers[0]


def _nothing() -> bytes:
    return b""


DRAWERS: dict[str, Callable[..., bytes]] = {"confusion_matrix": confusion_matrix_png, "nothing": _nothing}


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: one answer per request, (id, png, None) or (id, None, the error's text)."""
    while True:
        try:
            request, name, args = pickle.load(requests)
        except EOFError:  # the job process closed its end, or is gone
            return
        try:
            answer = (request, DRAWERS[name](*args), None)
        except Exception as error:  # sent back: the job process raises it, with the figure's name
            answer = (request, None, f"{name}: {type(error).__name__}: {error}")
        try:
            pickle.dump(answer, answers)
            answers.flush()
        except BrokenPipeError:
            return


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the job process ends its run, then this worker (its
    # stdin closes). Answers go to a copy of stdout; anything a library prints goes to stderr.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, answers)
