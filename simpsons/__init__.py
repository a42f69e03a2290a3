"""Reproducible transfer-learning experiments on The Simpsons characters (Keras + Hydra + MLflow).

Importing the package changes nothing in the process: the commands prepare it (simpsons/startup.py).
"""

__version__ = "0.1.0"
