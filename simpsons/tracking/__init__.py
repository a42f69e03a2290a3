"""Everything MLflow, split at its seams; data flows one way, from the store to the writer or reader.

- `schema`: tag names, run types and artifact paths, the one place that names them;
- `store`: the tracking URI, the store's setup under an inter-process lock, experiments,
  provenance (git, code version); no TensorFlow;
- `races`: the writes that several processes make at the same instant (a data set, an experiment,
  an alias, ending a dead run): under the store's lock, or tried again on a clash; no TensorFlow;
- `connection`: a tracking server that stops answering: MLflow's retries bounded by
  `tracking.retry_seconds`, one warning line, and one error line (`ServerLost`); no TensorFlow;
- `lifecycle`: a run from start to end (never left RUNNING), its process identity and heartbeat,
  ending runs whose process is gone, and the look-ups that reuse or resume a config; no TensorFlow;
- `writer`: what a training run logs (config, data and its dataset inputs, evaluations, the Keras model);
  imports TensorFlow;
- `reader`: reading runs back (sweeps, outputs, models); no TensorFlow;
- `sweeps`: a sweep's outcome, read from its jobs' runs, logged on its parent and shown in the
  terminal; no TensorFlow.
"""
