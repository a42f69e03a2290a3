"""Reproducible transfer-learning experiments on The Simpsons characters (Keras + Hydra + MLflow)."""

import os

# TensorFlow's C++ start-up chatter; without an NVIDIA device also its failed CUDA probe ("cuInit").
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded CSV

# ...which TensorFlow 2.21 logs at load time, twice, whatever TF_CPP_MIN_LOG_LEVEL says: filtered.
from simpsons import tfstartup  # noqa: E402  (after the variables it reads)

tfstartup.install()

__version__ = "0.1.0"
