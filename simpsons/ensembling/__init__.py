"""Ensembles of training runs, split at their seams; the command is `python -m simpsons.ensemble`.

Two words, used in one sense each: an ensemble's *candidates* are the best `top_n` training runs
that can be averaged together; its *members* are the candidates whose softmax outputs it averages
(weight > 0). With method=mean every candidate is a member; greedy selection may leave some out.

- `selection`: the candidates, best first, and why every other run is left out; no TensorFlow;
- `maths`: weighted means and greedy forward selection of softmax outputs, the expected calibration
  error, temperature scaling; numpy, scipy and scikit-learn;
- `scoring`: the ensemble's weights and outputs, calibrated or not, and every model's scores;
- `command`: one ensemble, from its config to its run: select, combine, score, log, register, print;
- `writer`: what an ensemble run logs to MLflow: tags, params, metrics, tables, chart, model;
- `charts`: the members-vs-ensemble bar chart;
- `console`: what the command prints: the members table, the run id, how to predict and serve;
- `registry`: the Model Registry: a version per ensemble, and the `champion` alias; no TensorFlow;
- `served_model`: the model that `mlflow models serve` and `mlflow.pyfunc.load_model` run. MLflow
  stores that file with the model ("model from code"), so it imports nothing from this package.

Nothing is imported here: `python -m simpsons.ensemble --help` loads none of it.
"""
