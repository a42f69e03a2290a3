"""One ensemble, from its config to its run: select the candidates, combine, score, log, register, print."""

from __future__ import annotations

import logging
import re

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from simpsons.config import default_tracking_uri
from simpsons.ensembling import console, registry, scoring, writer
from simpsons.ensembling.registry import Registration
from simpsons.ensembling.scoring import Ensemble
from simpsons.ensembling.selection import select_candidates
from simpsons.errors import SimpsonsError
from simpsons.settings import EnsembleSettings
from simpsons.tracking import lifecycle, provenance, reader, schema, store

log = logging.getLogger("simpsons.ensemble")


def ensemble(cfg: EnsembleSettings) -> str:
    """Select, combine, score, log and register one ensemble; prints what it did; returns its run id."""
    cfg.check()
    client = MlflowClient(store.configure(cfg.tracking.uri, cfg.tracking.retry_seconds))
    experiment = reader.experiment_id(client, cfg.tracking.experiment)
    # Another user's experiment or model is read-only to this one on a team server: say so now,
    # in one line, rather than with HTTP 403 once the ensemble is computed.
    store.check_can_write(client.tracking_uri, "experiment", cfg.tracking.experiment, experiment)
    if cfg.register:
        store.check_can_register(client, cfg.registered_model)
    sweep = reader.resolve_sweep(client, experiment, cfg.sweep)
    lifecycle.end_dead_runs(client, [experiment], cfg.tracking.stale_after)
    runs, superseded = reader.training_runs(client, reader.search(client, experiment, sweep, cfg.filter))
    if superseded:
        log.info("counted each config once (its latest finished run): left out %d older run(s)", len(superseded))
    candidates = select_candidates(runs, cfg)
    if len(candidates) < cfg.top_n:
        log.warning("only %d eligible run(s) for top_n=%d: using %d", len(candidates), cfg.top_n, len(candidates))
    class_names = reader.class_names(candidates[0].run)
    result = scoring.combine(candidates, cfg, class_names)
    source = client.get_run(sweep).info.run_name if sweep else cfg.tracking.experiment
    name = ensemble_name(cfg, len(candidates), source)
    val_files = _validation_files(result)
    tags = _tags(result, sweep, val_files)
    with lifecycle.tracked_run(experiment, name, None, tags, heartbeat_seconds=cfg.tracking.heartbeat_seconds) as run:
        writer.log_params(cfg, result, sweep)
        metrics = writer.log_results(result, class_names, f"{name}: members vs ensemble")
        mlflow.set_tag(MLFLOW_RUN_NOTE, _description(result, cfg, source, metrics))
        model = writer.log_model(result, class_names, name)
        registration = _register(client, cfg, run, model, metrics, val_files) if cfg.register else None
    _print(cfg, result, client.get_run(run.info.run_id), model, registration)
    return run.info.run_id


def ensemble_name(cfg: EnsembleSettings, num_candidates: int, source: str) -> str:
    """What the ensemble is, for its run and its logged model: `ensemble-mean-top5-<sweep or experiment>`,
    `ensemble-mean-top5-calibrated-<...>` with calibrate=true.

    Written in the characters MLflow accepts in a logged model's name (no / : . % " ').
    """
    method = "weighted-mean" if cfg.weighs_by_accuracy else cfg.method
    calibrated = "-calibrated" if cfg.calibrate else ""
    name = f"ensemble-{method}-top{num_candidates}{calibrated}-{source}"
    return re.sub(r"-{2,}", "-", re.sub(r"[\s/:%\"']", "-", name).replace(".", "_")).strip("-")


def _validation_files(result: Ensemble) -> str:
    validation = result.candidates[0].outputs["val"]
    fingerprint = result.candidates[0].run.data.tags.get(schema.DATA_FINGERPRINT, "")
    return registry.validation_files_digest(fingerprint, validation.names, validation.labels)


def _tags(result: Ensemble, sweep: str | None, val_files: str) -> dict[str, str]:
    first = result.candidates[0].run
    return {
        schema.RUN_TYPE: schema.ENSEMBLE,
        schema.ENSEMBLE_SWEEP: sweep or "",
        schema.CLASS_NAMES: first.data.tags.get(schema.CLASS_NAMES, "[]"),
        schema.DATA_FINGERPRINT: first.data.tags.get(schema.DATA_FINGERPRINT, ""),
        schema.CANDIDATES: ",".join(c.run_id for c in result.candidates),
        schema.MEMBERS: ",".join(member.run_id for member, _ in result.members),
        schema.VAL_FILES: val_files,
        **provenance.git_tags(),
    }


def _description(result: Ensemble, cfg: EnsembleSettings, source: str, metrics: dict[str, float]) -> str:
    scores = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("val_accuracy", "test_accuracy") if key in metrics)
    how = {"mean": "the mean", "greedy": "greedy forward selection (on validation)"}[cfg.method]
    weighted = " weighted by validation accuracy" if cfg.weighs_by_accuracy else ""
    described = (
        f"Ensemble of {len(result.members)} member(s), by {how}{weighted} of the softmax outputs of the best "
        f"{len(result.candidates)} training run(s) by {cfg.metric} ({cfg.direction}) of {source}: {scores}."
    )
    calibration = result.calibration
    if calibration.temperature is None:
        return described
    errors = ", ".join(
        f"{split} {calibration.ece[split]:.4f} to {calibration.ece_calibrated[split]:.4f}" for split in result.splits
    )
    return (
        f"{described} Calibrated by the temperature {calibration.temperature:.4f}, fitted on validation: "
        f"expected calibration error {errors}."
    )


def _register(
    client: MlflowClient, cfg: EnsembleSettings, run: Run, model: ModelInfo, metrics: dict[str, float], val_files: str
) -> Registration:
    metric, direction = registry.comparison_metric(cfg.metric, cfg.direction, metrics)
    score = registry.Score(metric, direction, metrics[metric], val_files)
    description = f"{run.info.run_name} (run {run.info.run_id})"
    try:
        registration = registry.register(
            client, cfg.registered_model, model.model_id, run.info.run_id, score, description
        )
    except MlflowException as error:  # e.g. a team server that lets this user log runs, not register models
        raise SimpsonsError(
            f"registered_model={cfg.registered_model!r} could not take the model {model.model_uri}: "
            f"{str(error).splitlines()[0]}; register it by hand, or run with register=false"
        ) from error
    mlflow.set_tags(
        {
            schema.REGISTERED_VERSION: f"{registration.name}/{registration.version}",
            schema.CHAMPION_DECISION: registration.reason,
        }
    )
    return registration


def _print(
    cfg: EnsembleSettings, result: Ensemble, run: Run, model: ModelInfo, registration: Registration | None
) -> None:
    rows = [
        console.Row(c.label, c.run.info.run_name, float(w), {s: result.accuracies[s][i] for s in result.splits})
        for i, (c, w) in enumerate(zip(result.candidates, result.weights, strict=True))
    ]
    rows.append(
        console.Row(f"ensemble ({cfg.method})", run.info.run_name, 1.0, {s: result.accuracy(s) for s in result.splits})
    )
    if registration is None:
        serve_uri, registered = model.model_uri, None
    else:
        champion = registration.champion == registration.version
        serve_uri = f"models:/{registration.name}@{schema.CHAMPION}" if champion else registration.uri
        registered = f"{registration.name} version {registration.version}; {registration.reason}"
    # The commands name the store unless it is the project's default one. (MLFLOW_TRACKING_URI cannot
    # tell: mlflow.set_tracking_uri sets it in this process.)
    uri = mlflow.get_tracking_uri()
    named_uri = None if uri == store.absolute_sqlite_uri(default_tracking_uri()) else store.redact_uri(uri)
    calibration = result.calibration
    calibrated = console.calibration(calibration.temperature, calibration.ece, calibration.ece_calibrated)
    print(console.table(rows))
    print()
    print(
        console.next_steps(
            run.info.run_id, run.info.run_name, model.model_uri, serve_uri, registered, named_uri, calibrated
        )
    )
