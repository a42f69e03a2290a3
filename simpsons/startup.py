"""What every command does first in its own process, before TensorFlow or MLflow can start.

Importing the package does nothing; each entry point (train, ensemble, predict, report, server, and a
launcher's job process, which starts in the task function rather than in main) calls `prepare_process()`:

- TensorFlow's C++ start-up chatter is hidden (TF_CPP_MIN_LOG_LEVEL; without an NVIDIA device also its
  failed CUDA probe, "cuInit"), and the lines TensorFlow 2.21 logs twice at load time whatever that level
  says are filtered (simpsons/tfstartup.py);
- MLflow draws no progress bar per downloaded artifact (a sweep's CSVs would each get one).

A variable the user set wins: only defaults are set.
"""

from __future__ import annotations

import os

from simpsons import tfstartup


def prepare_process() -> None:
    """Idempotent: a job process of a sweep calls it again, harmlessly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tfstartup.install()
