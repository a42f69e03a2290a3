"""Which MLflow run a training job is: a new one, a killed one it resumes, or an earlier FINISHED one
it reuses; and what the run says of itself (its name, tags, data and description).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from simpsons import naming, trials
from simpsons.data import DataSet, load_dataset
from simpsons.errors import DataError, ServerLost
from simpsons.settings import TrackingSettings, TrainSettings
from simpsons.tracking import connection, lifecycle, provenance, schema, store, writer
from simpsons.training import runtime
from simpsons.training.backup import Backup
from simpsons.training.phases import class_weights
from simpsons.trials import JobTrial

log = logging.getLogger("simpsons.train")


@dataclass(frozen=True)
class JobContext:
    """What a run needs from Hydra's runtime (simpsons/train.py reads it): its overrides, .hydra
    folder, and sweep."""

    overrides: list[str]
    hydra_dir: Path | None = None
    sweep_dir: Path | None = None
    sweep_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # more tags for its run, e.g. simpsons-reproduce's


@dataclass(frozen=True)
class Plan:
    """A job's run before it starts: where, named what, tagged how, on which data; and the FINISHED
    run of the same config, data and code that stands for it, if there is one (and `reuse` is on)."""

    client: MlflowClient
    uri: str
    experiment_id: str
    name: str
    parent: str | None
    swept_keys: list[str] | None
    tags: dict[str, str]
    data: DataSet
    identity: str
    finished: Run | None


@dataclass(frozen=True)
class TrainingRun:
    id: str
    backup: Backup  # what it resumes from after a kill (resumable runs)


@contextlib.contextmanager
def connected(tracking: TrackingSettings, in_sweep: bool) -> Iterator[str]:
    """The store set up; inside, a request that the server gives up on mid-run ends the job in one
    line, not a traceback (connection.py)."""
    try:
        uri = store.configure(tracking.uri, tracking.retry_seconds)
    except store.ServerUnreachable as error:
        if not in_sweep:
            raise  # a single run: tracking.uri names no server
        raise ServerLost(f"{error}; the sweep started with it: run the same command again once it answers") from None
    with connection.lost_server():
        yield uri


def plan(uri: str, settings: TrainSettings, job: JobContext, data: DataSet | None) -> Plan:
    """The job's run, before it starts. `data`: a single run's, loaded before the store was touched;
    a sweep's job loads its own here (unusable: a FAILED run beside the others of the sweep)."""
    experiment_id = store.ensure_experiment(uri, settings.tracking.experiment, settings.data.name)
    client = MlflowClient(uri)
    lifecycle.end_dead_runs(client, [experiment_id], settings.tracking.stale_after)
    parent, swept_keys = _sweep_parent(client, experiment_id, job)
    name = naming.run_name(job.overrides, swept_keys, settings.backbone.name)
    tags = {schema.RUN_TYPE: schema.TRAIN, schema.HYDRA_OVERRIDES: " ".join(job.overrides), **provenance.git_tags()}
    if job.sweep_id:
        tags[schema.SWEEP_ID] = job.sweep_id
    tags |= job.tags
    if settings.in_search:
        tags |= {schema.TRIAL: str(settings.trial.number), schema.STUDY: str(settings.trial.study)}
    if data is None:
        data = _load_sweep_job_data(settings, job, experiment_id, name, parent, tags)
    identity = lifecycle.config_hash(training_config(settings), data.fingerprint, provenance.code_version())
    tags |= {schema.CONFIG_HASH: identity, schema.CODE_VERSION: provenance.code_version()}
    finished = lifecycle.finished_run(client, experiment_id, identity) if settings.reuse else None
    return Plan(client, uri, experiment_id, name, parent, swept_keys, tags, data, identity, finished)


def reuse(plan: Plan) -> str:
    """Record in this sweep a REUSED run that stands for the FINISHED one; returns the FINISHED run's id."""
    done = plan.finished
    lifecycle.record_reuse(plan.client, plan.experiment_id, plan.name, plan.parent, done, plan.tags)
    why = "this config already finished with the same data and code"
    log.info("reused run %s (%s): %s", done.info.run_id, plan.name, why)
    return done.info.run_id


@contextlib.contextmanager
def started(plan: Plan, settings: TrainSettings) -> Iterator[TrainingRun]:
    """The active MLflow run the job trains in: a killed run of the same config resumed from its
    backup (settings.resumes_killed_runs), else a new one. It ends FINISHED, or FAILED or KILLED
    with the error (lifecycle.tracked_run); a resumable run's backup is held under its lock meanwhile."""
    with contextlib.ExitStack() as stack:
        resumed = _claim_resumable(plan, settings.checkpoints, stack) if settings.resumes_killed_runs else None
        resume_id = resumed.info.run_id if resumed else None
        heartbeat, sampled = settings.tracking.heartbeat_seconds, settings.tracking.system_metrics_seconds
        run = stack.enter_context(
            lifecycle.tracked_run(plan.experiment_id, plan.name, plan.parent, plan.tags, resume_id, heartbeat, sampled)
        )
        backup = Backup.of(settings.checkpoints, run.info.run_id)
        if resumed is None and settings.resumable:
            stack.enter_context(backup.held())  # no two processes train (or resume) one run
        _say_started(run, plan, backup if resumed else None)
        yield TrainingRun(run.info.run_id, backup)


def trial_of(settings: TrainSettings) -> JobTrial | None:
    """The search trial this job trains (settings.trial), opened in the study's storage; None outside a search."""
    if not settings.in_search:
        return None
    trial = settings.trial
    return JobTrial(trial.study, trial.number, trial.storage)


def attach_trial(trial: JobTrial | None, run_id: str) -> None:
    if trial is not None:
        trial.attach(run_id)


def tell_trial(trial: JobTrial | None, plan: Plan, run_id: str, monitor: str) -> None:
    """Tell the study how its trial ended: the run's best monitor value, or pruned. A reused run
    (the same config already finished) gives its own; a trial is told once."""
    if trial is None:
        return
    trial.attach(run_id)
    value, pruned = trials.run_outcome(plan.client, run_id, monitor)
    trial.tell(value, pruned or trial.pruned_at is not None)
    outcome = "pruned" if pruned or trial.pruned_at is not None else f"{monitor} {value}"
    log.info("trial #%d of study %s: %s (run %s)", trial.number, trial.study.study_name, outcome, run_id)


def describe(plan: Plan, settings: TrainSettings, job: JobContext) -> None:
    """The run's data (its counts, classes, skipped files, dataset inputs), class weights and description."""
    data = plan.data
    _report(data)
    writer.log_data(data)
    if settings.class_weighted:
        writer.log_class_weights(class_weights(settings, data), data.class_names)
    writer.log_dataset_inputs(data, settings.data.name, settings.data.root, settings.data.test_root)
    mlflow.set_tag(schema.NOTE, _description(settings, data, job.overrides, plan.swept_keys))


def training_config(settings: TrainSettings) -> dict:
    """The settings that decide a run's results (settings.identity()), with `auto` determinism and XLA
    resolved: a GPU run does not stand for a CPU one."""
    deterministic = runtime.resolve_deterministic(settings.deterministic)
    xla = runtime.use_xla(settings.jit_compile, deterministic)
    return settings.identity() | {"deterministic": deterministic, "jit_compile": xla}


def _load_sweep_job_data(
    settings: TrainSettings, job: JobContext, experiment_id: str, name: str, parent: str | None, tags: dict
) -> DataSet:
    """A sweep job's data set; a job whose data cannot be used is recorded as a FAILED run with
    its config and error, beside the others of the sweep."""
    try:
        return load_dataset(settings.data)
    except DataError:
        with lifecycle.tracked_run(experiment_id, name, parent, tags):
            writer.log_config(settings.container(), job.hydra_dir)
            raise


def _claim_resumable(plan: Plan, checkpoints: Path, stack: contextlib.ExitStack) -> Run | None:
    """The newest KILLED or FAILED run of this config with a backup that no other process holds.

    Checked again once locked: the run may have been resumed and finished meanwhile by another
    process, which deletes the backup (and the lock file) when it is done."""
    for run in lifecycle.resumable_runs(plan.client, plan.experiment_id, plan.identity):
        backup = Backup.of(checkpoints, run.info.run_id)
        if not backup.exists():
            continue
        lock = backup.try_hold()
        if lock is None:
            continue  # another process is training it
        if plan.client.get_run(run.info.run_id).info.status in ("KILLED", "FAILED") and backup.exists():
            stack.callback(lock.close)
            return run
        lock.close()
    return None


def _say_started(run: Run, plan: Plan, resumed_from: Backup | None) -> None:
    if resumed_from is None:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, plan.name, store.redact_uri(plan.uri))
        return
    epoch = writer.epoch_step(resumed_from.resume_epoch())  # the first epoch it trains, counted from 1 as Keras prints
    mlflow.set_tag(schema.RESUMED_AT_EPOCH, str(epoch))
    log.info("resuming MLflow run %s (%s) at epoch %d from its last backup", run.info.run_id, plan.name, epoch)


def _sweep_parent(client: MlflowClient, experiment_id: str, job: JobContext) -> tuple[str | None, list[str] | None]:
    """The sweep's parent run id and its swept keys (which name the job); None, None for a single run."""
    if job.sweep_id is None:
        return None, None
    parent = lifecycle.find_sweep_run(client, experiment_id, job.sweep_id)
    if parent is None:
        log.warning("no MLflow sweep run found for sweep %s (tracking.* swept?): this run is not nested", job.sweep_id)
        return None, None
    return parent, json.loads(client.get_run(parent).data.tags.get(schema.SWEPT_KEYS, "[]"))


def _description(settings: TrainSettings, data: DataSet, overrides: list[str], swept_keys: list[str] | None) -> str:
    """The run's description in the MLflow UI: what it trains on what and how; in a sweep, its swept values."""
    weights = settings.backbone.weights
    weights = "random weights" if weights is None else f"{Path(str(weights)).name} weights"
    counts = f"{len(data.train)} train, {len(data.val)} validation, {len(data.test) if data.test else 0} test images"
    text = (
        f"{settings.backbone.name} ({weights}) on `{settings.data.name}`: {len(data.class_names)} classes; {counts}. "
        f"{settings.optimizer.name}, lr {settings.optimizer.lr:g}, dropout {settings.dropout:g}, "
        f"{settings.epochs} epochs at {settings.image_size} px."
    )
    if swept_keys:
        values = {key.lstrip("+~"): value for key, _, value in (o.partition("=") for o in overrides)}
        text += " A sweep's job: " + ", ".join(f"`{key}={values[key]}`" for key in swept_keys if key in values) + "."
    return text


def _report(data: DataSet) -> None:
    counts = (len(data.class_names), len(data.train), len(data.val), len(data.test) if data.test else 0)
    log.info("%d classes; %d train, %d validation, %d test images; data fingerprint %s", *counts, data.fingerprint[:12])
    if data.skipped:
        log.warning("skipped %d files that are not usable images:", len(data.skipped))
        for skipped in data.skipped:
            log.warning("  %s (%s)", skipped.path, skipped.reason)
    if data.dropped_classes:
        log.warning("dropped classes below data.min_images_per_class: %s", data.dropped_classes)
    if data.unknown_test_classes:
        log.warning("left out test classes unknown to training: %s", data.unknown_test_classes)
