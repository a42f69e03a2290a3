"""hydra/sweeper=optuna, the driver's side: continue the study, ask it for trials, launch them as
jobs through whichever launcher the command chose, and record the study's best on the sweep's parent.

Each trial is a job like a grid's (its run nested under the sweep's parent run, reused when its
config already finished); the job itself reports each epoch to the study and tells it the run's
outcome (simpsons/trials.py), so that pruning and the outcome hold under joblib, Slurm and Ray,
and for jobs that outlive a killed driver. Trials run `n_jobs` at a time: each batch is asked,
launched, and waited for, then the next is asked with what the study knows by then.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hydra.types import HydraContext, TaskFunction
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from simpsons import sweep_callback, trials
from simpsons.tracking import schema, store
from simpsons.tracking.sqlite import store_lock

log = logging.getLogger("simpsons.search")

# hydra.launcher keys that say how many jobs run at once: joblib's, submitit's (Slurm), none (basic, Ray).
PARALLELISM_KEYS = ("n_jobs", "array_parallelism")


def run(sweeper: DictConfig, config: DictConfig, launcher: Any) -> None:
    """The search of `config` (the multirun's config), launching its trials' jobs with `launcher`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the job lines and the summary say it all
    plan = trials.SearchPlan.of(config)
    uri = store.configure(config.tracking.uri, config.tracking.retry_seconds)
    study = _study(plan, sweeper)
    client = MlflowClient(uri)
    retried = recover(study, client, plan.monitor)
    if retried:
        log.info("retrying %d trial(s) whose run was killed or never started: %s", len(retried), retried)
    batch = sweeper.get("n_jobs") or _parallelism(config)
    distributions = {d.key: d.distribution() for d in plan.dimensions}
    budget = plan.n_trials - _settled(study)  # asks this command may make: a failing trial is not retried here
    job_index = 0
    while budget > 0 and (wanted := plan.n_trials - _settled(study)) > 0:
        asked = [study.ask(distributions) for _ in range(min(batch, wanted, budget))]
        budget -= len(asked)
        jobs = [plan.trial_overrides(trial.number, trial.params) for trial in asked]
        for trial, job in zip(asked, jobs, strict=True):
            trial.set_user_attr(trials.OVERRIDES_ATTR, job[len(plan.fixed) : len(plan.fixed) + len(plan.dimensions)])
        log.info("trials %s of study %s", ", ".join(f"#{t.number}" for t in asked), plan.study)
        launcher.launch(jobs, initial_job_idx=job_index)
        job_index += len(jobs)
        for trial in asked:  # a job that raised, or was killed, left its trial RUNNING
            _settle(study, trial.number, client, plan.monitor)
    _record_best(study, plan, client)


def _study(plan: trials.SearchPlan, sweeper: DictConfig) -> Any:
    """The study, created or continued; its pruner's settings stored for the jobs to read."""
    import optuna

    with store_lock(plan.storage):  # SQLite: one process creates the tables and the study
        storage = trials.open_storage(plan.storage, create=True)
        study = optuna.create_study(
            study_name=plan.study, storage=storage, direction=plan.direction, load_if_exists=True
        )
    # Seeded by the seed and the trials so far: a continued study draws new values, where the same
    # seed again would draw the first command's values again (and reuse their runs).
    seed = None if sweeper.get("seed") is None else sweeper.seed + len(study.trials)
    study.sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, sweeper.n_startup_trials))
        if sweeper.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    pruner = {"kind": sweeper.pruner, "n_startup_trials": sweeper.n_startup_trials}
    study.set_user_attr(trials.PRUNER_ATTR, pruner | {"n_warmup_steps": sweeper.n_warmup_steps})
    return study


def _parallelism(config: DictConfig) -> int:
    """How many jobs the launcher runs at once: each batch of trials is that many."""
    launcher = config.hydra.launcher
    for key in PARALLELISM_KEYS:
        value = launcher.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 1


def _settled(study: Any) -> int:
    """Trials that count toward n_trials: finished (COMPLETE or PRUNED) or still running live."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def recover(study: Any, client: MlflowClient, monitor: str) -> list[int]:
    """Trials left RUNNING by an earlier command (its driver or job killed): a trial whose run
    FINISHED gets that run's outcome (it was killed just before telling); one whose run was ended
    (KILLED, FAILED) or never started is marked FAIL and its values queued to run again. A run still
    RUNNING (a Slurm job of a killed driver) is left to tell its trial itself. Runs of dead processes
    were ended before this (the sweep callback's end_dead_runs). Returns the retried trials' numbers."""
    from optuna.trial import TrialState

    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        status = _run_status(client, trial.user_attrs.get(trials.RUN_ATTR))
        if status == "RUNNING":
            continue
        if status == "FINISHED":
            trials.tell(study, trial.number, *trials.run_outcome(client, trial.user_attrs[trials.RUN_ATTR], monitor))
            continue
        trials.tell(study, trial.number, None, pruned=False)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        retried.append(trial.number)
    return retried


def _settle(study: Any, number: int, client: MlflowClient, monitor: str) -> None:
    """After its job returned: a trial still RUNNING is FAIL (the job raised or was killed), unless
    its run FINISHED (then its outcome) or still runs elsewhere (a Slurm job of a killed driver)."""
    from optuna.trial import TrialState

    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.RUNNING:
        return
    run_id = trial.user_attrs.get(trials.RUN_ATTR)
    status = _run_status(client, run_id)
    if status == "FINISHED":
        trials.tell(study, number, *trials.run_outcome(client, run_id, monitor))
    elif status != "RUNNING":
        trials.tell(study, number, None, pruned=False)


def _run_status(client: MlflowClient, run_id: str | None) -> str | None:
    if run_id is None:
        return None
    try:
        return client.get_run(run_id).info.status
    except MlflowException:  # deleted
        return None


def _record_best(study: Any, plan: trials.SearchPlan, client: MlflowClient) -> None:
    """On the sweep's parent run: the study's name, storage and counts, and its best trial (number,
    value, params, run); in the terminal, one line that says the same."""
    from optuna.trial import TrialState

    counts = {
        state: len(study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    summary = (
        f"study {plan.study}: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed trial(s)"
    )
    tags = {schema.STUDY: plan.study, schema.STUDY_STORAGE: store.redact_uri(plan.storage or "")}
    metrics = {
        "trials_complete": counts[TrialState.COMPLETE],
        "trials_pruned": counts[TrialState.PRUNED],
        "trials_failed": counts[TrialState.FAIL],
    }
    if complete:
        best = study.best_trial
        run_id = best.user_attrs.get(trials.RUN_ATTR, "")
        described = {
            "number": best.number,
            "value": best.value,
            "run_id": run_id,
            "overrides": best.user_attrs.get(trials.OVERRIDES_ATTR, []),
        }
        tags[schema.BEST_TRIAL] = json.dumps(described)
        metrics["study_best_value"] = best.value
        summary += f"; best trial #{best.number}: {plan.monitor} {best.value:.4f}, run {run_id}, " + " ".join(
            described["overrides"]
        )
    print(summary, flush=True)
    parent = sweep_callback.parent_run_id()
    if parent is None:
        return
    import time

    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def setup_launcher(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> Any:
    """The launcher the command chose (basic, parallel, slurm, ray_jobs), as Hydra's basic sweeper sets it up."""
    from hydra.core.plugins import Plugins

    return Plugins.instance().instantiate_launcher(
        hydra_context=hydra_context, task_function=task_function, config=config
    )
