"""A plain MLflow adapter, split at its seams; data flows one way, from the store to the writer or reader.

It takes plain values (or objects with the attributes writer.py's protocols name) and imports
nothing of the data, the model, the evaluation or training (pyproject.toml's import contracts).

- `schema`: tag names, run types and artifact paths, the one place that names them;
- `store`: the tracking URI, the store's setup under an inter-process lock, experiments; no TensorFlow;
- `sqlite`: a SQLite store's file and its inter-process lock; no MLflow;
- `provenance`: where results come from: the git commit and diff, the code version, the config as
  params; no TensorFlow;
- `races`: the writes that several processes make at the same instant (a data set, an experiment,
  an alias, ending a dead run): under the store's lock, or tried again on a clash; no TensorFlow;
- `connection`: a tracking server that stops answering: MLflow's retries bounded by
  `tracking.retry_seconds`, one warning line, and one error line (`ServerLost`); no TensorFlow;
- `lifecycle`: a run from start to end (never left RUNNING), its process identity and heartbeat,
  ending runs whose process is gone, and the look-ups that reuse or resume a config; no TensorFlow;
- `writer`: what a training run logs (config, data and its dataset inputs, epochs, the feature cache,
  evaluations, the Keras model); imports TensorFlow;
- `reader`: reading runs back (sweeps, outputs, models); no TensorFlow;
- `sweep_outcome`: a sweep's outcome, read from its jobs' runs, logged on its parent and shown in the
  terminal; no TensorFlow.
"""
