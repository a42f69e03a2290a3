"""Training one run: the write side's work under `python -m simpsons.train` (simpsons/train.py).

recipe.py    the run, top to bottom: settings -> data -> model -> fit -> evaluate -> log
runs.py      which MLflow run a job is (new, resumed or reused), its name, tags and description
phases.py    the fits: the head phase, then fine-tuning, sharing the best epoch and the backup
backup.py    what a killed run resumes from: its files, and how it resumes from them
callbacks.py the Keras callbacks: epoch metrics, backup, best epoch, early stopping and plateau on resume
schedules.py learning-rate schedules per phase
runtime.py   the process: GPUs, seeds and op determinism, precision, XLA
gpus.py      one GPU per job process on a box with several (no TensorFlow)

Nothing is imported here: `simpsons.training.gpus` loads without TensorFlow.
"""
