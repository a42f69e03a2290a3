"""TensorFlow's start-up lines, as TF_CPP_MIN_LOG_LEVEL asks, and each once; no retracing warnings for Keras steps.

TensorFlow 2.21 logs through Abseil. Two of its shared objects, loaded by `import tensorflow`
(the core, and the profiler plugin that the `tf.profiler` API loads), each carry their own copy of
TensorFlow's logging and of the static initialisers that log the oneDNN and CUDA notes. They log
while the library loads, before anything can call absl::InitializeLog(), and Abseil then writes
every message to stderr whatever the level: TF_CPP_MIN_LOG_LEVEL cannot hide them, and they
come twice, each after Abseil's own "All log messages before absl::InitializeLog()" warning.

So while TensorFlow is first imported, this process's stderr (file descriptor 2, which C++
writes to) passes through a filter: INFO lines are dropped when TF_CPP_MIN_LOG_LEVEL is 1 or more
(simpsons/__init__.py sets it), with Abseil's notice, and any such line seen before is dropped. Warnings and errors, and
everything else, pass unchanged and at once, so a crash during the import still shows its cause.

Once imported, TensorFlow's Python logger drops one warning: that a Keras model's train, test or
predict step "triggered tf.function retracing". TensorFlow counts traces by the step's code, which
every Keras model shares, so each new model that runs (a sweep's jobs in one process, an
ensemble's members) adds to one count, and a new image size adds a trace per model: expected
traces, each once per model and shape, that it reports as a mistake from the fifth on.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

# Abseil's line: severity letter, date (0000 before initialisation), time (then 00:00:<Unix seconds>),
# thread id, file:line] message.
ABSL_LINE = re.compile(rb"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] (?P<message>.*)$")
ABSL_NOT_INITIALISED = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
KERAS_STEP_RETRACING = re.compile(
    r"TensorFlowTrainer\.make_(train|test|predict)_function\..*triggered tf\.function retracing"
)


def install() -> None:
    """Filter stderr during the first `import tensorflow` of this process (a no-op once it is imported)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())


def keras_retracing(record: logging.LogRecord) -> bool:
    """A logging filter: False for TensorFlow's warning that a Keras step function was traced again."""
    return KERAS_STEP_RETRACING.search(record.getMessage()) is None


def line_filter(min_log_level: int) -> Callable[[bytes], bool]:
    """Whether to keep a line of stderr: not an INFO line below the level, nor Abseil's notice, nor
    a log line or notice seen before."""
    seen: set[bytes] = set()

    def keep(line: bytes) -> bool:
        text = line.rstrip(b"\r\n")
        match = ABSL_LINE.match(text)
        if match is None and text != ABSL_NOT_INITIALISED:
            return True
        informational = match is None or match["severity"] == b"I"  # Abseil's notice says nothing of the program
        if informational and min_log_level >= 1:
            return False
        key = match["message"] if match is not None else text
        if key in seen:
            return False
        seen.add(key)
        return True

    return keep


@contextmanager
def filtered_stderr(keep: Callable[[bytes], bool]) -> Iterator[None]:
    """File descriptor 2 through `keep`, line by line, until the block ends (unfiltered where the
    process has no file descriptor 2)."""
    _flush(sys.stderr)
    try:
        restore = os.dup(2)
    except OSError:
        yield
        return
    forward_to = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, forward_to, keep), name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        _flush(sys.stderr)
        os.dup2(restore, 2)  # the pipe's last writer is gone: the forwarder reads to its end
        os.close(restore)
        # A process started meanwhile may still hold the pipe: its lines keep flowing, but this
        # thread is not waited for beyond a moment.
        forwarder.join(timeout=5)


def _flush(stream: object) -> None:
    """Python's buffered stderr out before file descriptor 2 changes (None in some daemons)."""
    if stream is not None:
        stream.flush()


def _forward(read_end: int, forward_to: int, keep: Callable[[bytes], bool]) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            _write(forward_to, [line + b"\n" for line in lines], keep)
    _write(forward_to, [pending] if pending else [], keep)
    os.close(forward_to)


def _write(fd: int, lines: Sequence[bytes], keep: Callable[[bytes], bool]) -> None:
    data = b"".join(line for line in lines if keep(line))
    while data:
        data = data[os.write(fd, data) :]


def _min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would, and runs its import with stderr filtered; then steps aside."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with filtered_stderr(line_filter(_min_log_level())):
                execute(module)
            logging.getLogger("tensorflow").addFilter(keras_retracing)  # the logger TensorFlow's warnings use

        spec.loader.exec_module = exec_module
        return spec
