"""TensorFlow's start-up lines once and as TF_CPP_MIN_LOG_LEVEL asks; other output untouched."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from simpsons import tfstartup

ONEDNN = "oneDNN custom operations are on"
CUDA = "Could not find cuda drivers"
NOTICE = "All log messages before absl::InitializeLog() is called"


def import_tensorflow(level: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    prepared = "from simpsons import startup; startup.prepare_process()"
    code = f"{prepared}; import tensorflow as tf; print(int(tf.constant(2) * 3))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # TensorFlow in a subprocess
def test_importing_tensorflow_shows_no_start_up_notes_at_the_default_level():
    """TensorFlow 2.21 prints them twice, whatever the level (simpsons sets 3 without a GPU, 2 with one)."""
    result = import_tensorflow(None)
    assert result.returncode == 0 and result.stdout == "6\n", result.stderr[-3000:]
    assert not [note for note in (ONEDNN, CUDA, NOTICE) if note in result.stderr], result.stderr


@pytest.mark.slow  # TensorFlow in a subprocess
def test_asked_for_its_informational_lines_tensorflow_shows_each_once():
    result = import_tensorflow("0")
    assert result.returncode == 0 and result.stdout == "6\n", result.stderr[-3000:]
    counts = [result.stderr.count(note) for note in (ONEDNN, CUDA, NOTICE)]  # which ones: the build's and machine's
    assert max(counts) == 1, result.stderr


def test_the_filter_drops_informational_repeats_and_passes_everything_else_at_once(capfd):
    lines = [
        b"W0000 00:00:1795869547.658022    5227 some.cc:1] a warning\n",
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1795869547.658022    5227 port.cc:153] oneDNN custom operations are on.\n",
        b"E0000 00:00:1795869550.590285    5227 other.cc:9] a real error\n",
        b"plain output\n",
        b"I0000 00:00:1795869550.590285    5227 port.cc:153] oneDNN custom operations are on.\n",
        b"W0000 00:00:1795869550.590285    5227 some.cc:1] a warning\n",
        b"a last line without newline",
    ]
    for level, expected in [
        (3, [lines[0], lines[3], lines[4], lines[7]]),
        (0, [lines[0], lines[1], lines[2], lines[3], lines[4], lines[7]]),
    ]:
        with tfstartup.filtered_stderr(tfstartup.line_filter(level)):
            for line in lines:
                os.write(2, line)
        assert capfd.readouterr().err.encode() == b"".join(expected)


def test_keras_step_retracing_warnings_are_filtered_and_others_are_not():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    keras_step = (
        "5 out of the last 5 calls to <function TensorFlowTrainer.make_predict_function.<locals>."
        "one_step_on_data_distributed at 0x7f86> triggered tf.function retracing. Tracing is expensive"
    )
    own = "5 out of the last 5 calls to <function extract at 0x7f86> triggered tf.function retracing."
    assert not tfstartup.keras_retracing(record(keras_step))
    assert tfstartup.keras_retracing(record(own)) and tfstartup.keras_retracing(record("another warning"))
