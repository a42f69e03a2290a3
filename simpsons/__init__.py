"""Reproducible transfer-learning experiments on The Simpsons characters (Keras + Hydra + MLflow)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter (no GPU found, ...)

__version__ = "0.1.0"
