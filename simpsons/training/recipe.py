"""One training job, top to bottom: settings -> data -> model -> fit -> evaluate -> log, in one MLflow run.

Each step is one call; its parts are beside this file: runs.py (which run), runtime.py (seeds,
precision, XLA, GPUs), phases.py (the fits), backup.py (resuming), callbacks.py, schedules.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import mlflow
from mlflow.tracking import MlflowClient

from simpsons import naming, plots, preflight
from simpsons.backbones import BackboneSpec
from simpsons.data import load_dataset
from simpsons.evaluation import evaluate
from simpsons.images import load_image
from simpsons.model import build_classifier, with_tta
from simpsons.optimizers import build_optimizer
from simpsons.settings import TrainSettings
from simpsons.stopwatch import Stopwatch
from simpsons.tracking import schema, writer
from simpsons.training import phases, runs, runtime
from simpsons.training.runs import JobContext
from simpsons.trials import JobTrial

log = logging.getLogger("simpsons.train")

# The logged model's input example: a validation image at this size. The model resizes any size,
# and MLflow writes the example as JSON twice: at 150 px that was 2 x 67,500 numbers a run.
EXAMPLE_SIZE = 32
# The kept epoch's curve values logged as best_<name> (its val_accuracy is best_val_accuracy, of its logged outputs).
KEPT_CURVES = ("val_loss", "loss", "accuracy")  # schema.kept(name): best_val_loss, ...


def train(settings: TrainSettings, job: JobContext) -> str:
    """Run one training job as configured; returns the MLflow run id that holds its results.

    That is a new run; or, when the same config already FINISHED with the same data and code
    (and `reuse` is on), the earlier run, which this sweep then lists as REUSED; or a killed
    end-to-end run of the same config, resumed at the epoch after its last backup.
    """
    # Every check that needs no data first: a bad value creates nothing (no store, experiment or run).
    backbone, optimizer = _checked_parts(settings)
    # A single run's unusable data creates nothing either; a sweep's job records it as a FAILED run.
    single_run_data = load_dataset(settings.data) if job.sweep_id is None else None
    with runs.connected(settings.tracking, in_sweep=job.sweep_id is not None) as uri:
        plan = runs.plan(uri, settings, job, single_run_data)
        trial = runs.trial_of(settings)  # a search's job: the study hears of every epoch and of the end
        if plan.finished is not None:  # the same config, data and code already FINISHED
            run_id = runs.reuse(plan)
            runs.tell_trial(trial, plan, run_id, settings.monitor)
            return run_id
        with runs.started(plan, settings) as run:
            runs.attach_trial(trial, run.id)
            _fit_and_log(settings, job, plan, backbone, optimizer, run, trial)
            run.backup.delete()  # logged: nothing is left to resume
        runs.tell_trial(trial, plan, run.id, settings.monitor)  # once the run is FINISHED: a kill before is retried
        return run.id


def _fit_and_log(
    settings: TrainSettings,
    job: JobContext,
    plan: runs.Plan,
    backbone: BackboneSpec,
    optimizer: keras.optimizers.Optimizer,
    run: runs.TrainingRun,
    trial: JobTrial | None = None,
) -> None:
    """Inside the active run: config and data, then model -> fit -> evaluate -> log.

    The run keeps its best epoch (by `monitor`, over all phases): the model, the outputs and the
    test metrics are that epoch's. Its headline metrics are all that epoch's, under one prefix,
    `best_` (best_epoch counted from 1, best_val_accuracy of its logged outputs, best_val_loss,
    best_loss, best_accuracy of its curves), beside val_macro_f1 and test_*: a run's latest
    `val_accuracy` is its last epoch's, which need not be the one it kept. They are logged once the
    model is, linked to it at the kept epoch's step, so that the Models tab shows them beside that
    epoch's curves; `report`, the sweep summary and `ensemble` read the same names.
    Each step's wall seconds are logged too (timings.json): what a run of a grid costs, and where.
    """
    stopwatch, data = Stopwatch(), plan.data
    plots.start_worker()  # it starts while the model is built and trained
    with stopwatch.phase("log_config"):
        writer.log_config(settings.container(), job.hydra_dir)
        process = runtime.set_up(settings)
        mlflow.set_tags(settings.run_tags() | process.tags())  # the user's, where no tag of ours has the name
        runs.describe(plan, settings, job)
    with stopwatch.phase("build_model"):
        model = build_classifier(
            backbone,
            settings.image_size,
            len(data.class_names),
            settings.dropout,
            settings.augment,
            seed=settings.seed,
            share_backbone=settings.shares_backbone,
        )
        writer.log_param_counts(model)
    scored, best = phases.train(model, backbone, optimizer, data, settings, process.xla, run.backup, stopwatch, trial)
    if trial is not None and trial.pruned_at is not None:
        mlflow.set_tag(schema.PRUNED, str(trial.pruned_at))  # its last epoch; it still logs as any run
    with stopwatch.phase("evaluate"):
        scores, figures = _evaluate_and_log(scored, plan)
        # What the run keeps, hence what ranks it: the kept epoch's logged validation outputs.
        final = {"best_val_accuracy": scores.pop("val_accuracy"), **kept_epoch_metrics(best.epoch), **scores}
    with stopwatch.phase("log_model"):
        example = load_image(data.val.paths[0], EXAMPLE_SIZE)[None]
        model_name = naming.model_name(job.overrides, plan.swept_keys, settings.backbone.name)
        kept_step = writer.epoch_step(best.epoch)
        model_id = writer.log_model(with_tta(model, settings.tta), example, data.class_names, model_name, kept_step)
        mlflow.log_metrics(final, model_id=model_id)
    with stopwatch.phase("figures"):  # drawn in the figure worker while the model was saved
        writer.log_figures(figures)
    writer.log_timings(stopwatch.timings())  # an artifact: as metrics, they crowded out the curves


def kept_epoch_metrics(epoch: int) -> dict[str, float]:
    """best_epoch (counted from 1, as Keras prints it) and the kept epoch's loss, accuracy and val_loss
    as best_*: read back from the run's curves, which hold the epochs a resumed run trained before its kill too."""
    client, run_id, step = MlflowClient(), mlflow.active_run().info.run_id, writer.epoch_step(epoch)
    kept: dict[str, float] = {"best_epoch": step}
    for name in KEPT_CURVES:
        # An epoch logged twice (by a version that logged before its backup) counts with its last value.
        history = client.get_metric_history(run_id, schema.curve(name))
        values = sorted((m for m in history if m.step == step), key=lambda m: m.timestamp)
        if values:
            kept[schema.kept(name)] = values[-1].value
    return kept


def _checked_parts(settings: TrainSettings) -> tuple[BackboneSpec, keras.optimizers.Optimizer]:
    """Every check that needs no data: simpsons/preflight.py's, then what only TensorFlow and Keras can say.

    The GPUs are set up in between: after the gpu.* values are checked, before anything (an
    optimizer's variables) starts TensorFlow's runtime, after which they can no longer be set."""
    preflight.raise_errors(settings)
    runtime.configure_gpus(settings.gpu.memory_growth, settings.gpu.one_per_job, Path(settings.cache_dir))
    runtime.use_xla(settings.jit_compile, runtime.resolve_deterministic(settings.deterministic))  # a GPU visible?
    return BackboneSpec.from_settings(settings.backbone), build_optimizer(settings.optimizer)


def _evaluate_and_log(scored: phases.Scored, plan: runs.Plan) -> tuple[dict[str, float], dict[str, plots.Drawing]]:
    """Softmax outputs of each split from the model (or head) that scores it, in file order, with
    their report; returns the metrics to log (the test split's, and of the validation split's its
    accuracy and macro F1: its loss and accuracy per epoch are the curves) and the figures still
    being drawn, by artifact path."""
    metrics: dict[str, float] = {}
    figures: dict[str, plots.Drawing] = {}
    for name, (model, batches) in scored.items():
        split = plan.data.val if name == "val" else plan.data.test
        evaluation = evaluate(model, batches, split.names, split.labels, name)
        writer.log_evaluation(evaluation, plan.data.class_names, figures, with_metrics=False)
        scores = evaluation.metrics()
        metrics |= {key: scores[key] for key in ("val_accuracy", "val_macro_f1")} if name == "val" else scores
        log.info("%s: %s", name, {k: round(v, 4) for k, v in scores.items()})
    return metrics, figures
