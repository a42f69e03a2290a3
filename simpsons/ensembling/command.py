"""One ensemble, from its config to its run: select the candidates, combine, score, log, register, print."""

from __future__ import annotations

import logging
from datetime import datetime

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from simpsons import naming
from simpsons.config import default_tracking_uri
from simpsons.ensembling import console, registry, scoring, writer
from simpsons.ensembling.registry import Registration
from simpsons.ensembling.scoring import Ensemble
from simpsons.ensembling.selection import select_candidates
from simpsons.errors import SimpsonsError
from simpsons.settings import EnsembleSettings
from simpsons.tracking import lifecycle, provenance, reader, schema, store
from simpsons.tracking.sweep_outcome import DEFAULT_EXPERIMENT

log = logging.getLogger("simpsons.ensemble")


def ensemble(cfg: EnsembleSettings, top_n_given: bool = True) -> str:
    """Select, combine, score, log and register one ensemble; prints what it did; returns its run id.

    `top_n_given`: whether the user set top_n. The default top_n is a ceiling: fewer eligible runs are
    no surprise then, and only a number the user asked for is worth a warning.
    """
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
        say = log.warning if top_n_given else log.debug  # the default: every eligible run, said quietly
        say("only %d eligible run(s) for top_n=%d: using %d", len(candidates), cfg.top_n, len(candidates))
    class_names = reader.class_names(candidates[0].run)
    result = scoring.combine(candidates, cfg, class_names)
    sweep_run = client.get_run(sweep) if sweep else None
    source = f"sweep '{sweep_run.info.run_name}'" if sweep_run else f"experiment '{cfg.tracking.experiment}'"
    name = ensemble_name(cfg, len(candidates), sweep_run.info.start_time if sweep_run else None)
    provenance = _provenance(result, class_names)
    if cfg.register:  # a model of other classes: one line, before anything is logged
        registry.check_fits(client, cfg.registered_model, provenance)
    tags = _tags(result, sweep, provenance.val_files)
    # An ensemble of a sweep is nested under the sweep's parent run, beside its members.
    with lifecycle.tracked_run(experiment, name, sweep, tags, heartbeat_seconds=cfg.tracking.heartbeat_seconds) as run:
        writer.log_params(cfg, result, sweep)
        datasets = writer.log_dataset_inputs(client, run.info.run_id, result)
        metrics = writer.log_results(result, class_names, f"{name} of {source}: members vs ensemble")
        members = writer.member_rows(result, cfg.metric)
        writer.log_members(members)
        mlflow.set_tag(MLFLOW_RUN_NOTE, _description(result, cfg, source, metrics, members))
        model = writer.log_model(result, class_names, naming.MODEL_NAME_FORBIDDEN.sub("_", name))
        writer.log_metrics(client, run.info.run_id, metrics, model.model_id, datasets)
        registration = _register(client, cfg, run, model, metrics, provenance) if cfg.register else None
    _print(cfg, result, client.get_run(run.info.run_id), model, registration)
    return run.info.run_id


def ensemble_name(cfg: EnsembleSettings, num_candidates: int, sweep_started_ms: int | None = None) -> str:
    """What the ensemble is, in naming.py's scheme and width: 'ens mean top5', 'ens wmean top5'
    (weighted by validation accuracy), 'ens greedy top3 cal' (calibrate=true); for an ensemble of a
    sweep, then its sweep's start ('ens mean top5 11-28 12:40'), which tells apart the ensembles of
    different sweeps where the sweep is not shown (the Models tab), when it fits."""
    method = "wmean" if cfg.weighs_by_accuracy else cfg.method
    name = f"ens {method} top{num_candidates}{' cal' if cfg.calibrate else ''}"
    if sweep_started_ms is None:
        return name
    stamped = f"{name} {datetime.fromtimestamp(sweep_started_ms / 1000):%m-%d %H:%M}"
    return stamped if len(stamped) <= naming.MAX_NAME else name


def _provenance(result: Ensemble, class_names: list[str]) -> registry.Provenance:
    """What the candidates were trained and scored on (they share it: selection.py)."""
    first = result.candidates[0].run
    validation = result.candidates[0].outputs["val"]
    fingerprint = first.data.tags.get(schema.DATA_FINGERPRINT, "")
    return registry.Provenance(
        data_name=first.data.params.get("data.name", "?"),
        fingerprint=fingerprint,
        class_names=tuple(class_names),
        val_files=registry.validation_files_digest(fingerprint, validation.names, validation.labels),
        val_count=len(validation.names),
    )


def _tags(result: Ensemble, sweep: str | None, val_files: str) -> dict[str, str]:
    first = result.candidates[0].run
    return {
        schema.RUN_TYPE: schema.ENSEMBLE,
        schema.ENSEMBLE_SWEEP: sweep or "",
        schema.CLASS_NAMES: first.data.tags.get(schema.CLASS_NAMES, "[]"),
        schema.DATA_FINGERPRINT: first.data.tags.get(schema.DATA_FINGERPRINT, ""),
        schema.DATA_NAME: first.data.params.get("data.name", "?"),
        schema.CANDIDATES: ",".join(c.run_id for c in result.candidates),
        schema.MEMBERS: ",".join(member.run_id for member, _ in result.members),
        schema.VAL_FILES: val_files,
        schema.CODE_VERSION: provenance.code_version(),  # what simpsons-reproduce checks
        **provenance.git_tags(),
    }


def _description(
    result: Ensemble, cfg: EnsembleSettings, source: str, metrics: dict[str, float], members: list[dict]
) -> str:
    """Markdown (the UI renders it): what the ensemble is, its scores and calibration, and a table of its
    members, each linked to its run."""
    scores = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("val_accuracy", "test_accuracy") if key in metrics)
    how = {"mean": "the mean", "greedy": "greedy forward selection (on validation)"}[cfg.method]
    weighted = " weighted by validation accuracy" if cfg.weighs_by_accuracy else ""
    described = (
        f"Ensemble of {len(result.members)} member(s), by {how}{weighted} of the softmax outputs of the best "
        f"{len(result.candidates)} training run(s) by {cfg.metric} ({cfg.direction}) of {source}: {scores}."
    )
    calibration = result.calibration
    if calibration.temperature is not None:
        errors = ", ".join(
            f"{split} {calibration.ece[split]:.4f} to {calibration.ece_calibrated[split]:.4f}"
            for split in result.splits
        )
        described += (
            f" Calibrated by the temperature {calibration.temperature:.4f}, fitted on validation: "
            f"expected calibration error {errors}."
        )
    return f"{described}\n\n{_members_markdown(members, cfg.metric, result.splits)}"


def _members_markdown(members: list[dict], metric: str, splits: list[str]) -> str:
    """The members table (also logged as members.csv and members.json)."""
    columns = [metric, *(f"{split}_accuracy" for split in splits if f"{split}_accuracy" != metric)]
    lines = [f"| member | run id | weight | {' | '.join(columns)} |", "|---|---|---|" + "---|" * len(columns)]
    for row in members:
        values = " | ".join("-" if row.get(key) is None else f"{row[key]:.4f}" for key in columns)
        lines.append(f"| [{row['run_name']}]({row['ui']}) | {row['run_id']} | {row['weight']:.4f} | {values} |")
    return "\n".join(lines)


def _register(
    client: MlflowClient,
    cfg: EnsembleSettings,
    run: Run,
    model: ModelInfo,
    metrics: dict[str, float],
    provenance: registry.Provenance,
) -> Registration:
    metric, direction = registry.comparison_metric(cfg.metric, cfg.direction, metrics)
    score = registry.Score(metric, direction, metrics[metric], provenance.val_files)
    description = f"{run.info.run_name} (run {run.info.run_id})"
    try:
        registration = registry.register(
            client, cfg.registered_model, model.model_id, run.info.run_id, score, description, provenance
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
    sweep = run.data.tags.get(schema.ENSEMBLE_SWEEP)
    report = f"--sweep {sweep}" if sweep else ""
    if cfg.tracking.experiment != DEFAULT_EXPERIMENT:
        report = f"--experiment {cfg.tracking.experiment} {report}".strip()
    print(console.table(rows))
    print()
    print(
        console.next_steps(
            run.info.run_id, run.info.run_name, model.model_uri, serve_uri, registered, named_uri, calibrated, report
        )
    )
