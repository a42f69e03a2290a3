"""`python -m simpsons.train`: the Hydra app; each job is one tracked run (simpsons/training/recipe.py).

`-m` sweeps a grid with Hydra's multirun; simpsons.sweep_callback nests every job's run under one parent.
SIGINT and SIGTERM end the runs KILLED, in one line (simpsons.signals).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from simpsons import config, credentials, hydra_jobs, settings, signals, startup
from simpsons.errors import ServerLost, SimpsonsError
from simpsons.settings import TrainSettings
from simpsons.tracking import connection

log = logging.getLogger("simpsons.train")
settings.register()


# An absolute path: the console script `simpsons-train` runs this module as a module, not a file, and
# Hydra would then look for a Python package named `conf`.
@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    # The task function: a launcher's job process (a loky worker, a submitit task) starts here, not in main().
    startup.prepare_process()
    with signals.job_process():
        from simpsons.training import backend  # no Keras: it chooses the backend Keras loads with

        runtime = _hydra_runtime()
        try:
            settings = TrainSettings.from_config(cfg)  # the one conversion: below here, settings
            backend.select(settings)  # KERAS_BACKEND, before anything imports Keras
            # Imported here, so that `--help` and bad group choices answer without loading TensorFlow,
            # and Keras loads on the backend just chosen.
            from simpsons.training.recipe import JobContext, train

            train(settings, JobContext(**runtime))
        except ServerLost as error:
            log.error("error: %s", error)
            if runtime["sweep_dir"] is None:
                sys.exit(1)
            # A sweep's job ends here, not by raising: that would add Hydra's traceback at the end of
            # the sweep, whose driver says in one line that the server is lost (simpsons.sweep_callback).
        except SimpsonsError as error:
            log.error("error: %s", error)
            if runtime["sweep_dir"] is None:
                sys.exit(2)
            raise  # in a sweep: this job is FAILED, the others go on


def _hydra_runtime() -> dict[str, Any]:
    """What a run needs from Hydra's runtime (simpsons.training.runs.JobContext): its overrides, .hydra
    folder, and sweep."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return {
        "overrides": list(hydra_cfg.overrides.task),
        "hydra_dir": output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None,
        "sweep_dir": Path(hydra_cfg.sweep.dir).resolve() if multirun else None,
        "sweep_id": hydra_cfg.job.env_set.get(config.SWEEP_ID_VARIABLE) if multirun else None,
    }


def main() -> None:
    """`simpsons-train` and `python -m simpsons.train`."""
    startup.prepare_process()
    signals.install(driver=True)
    credentials.exit_if_in_arguments(sys.argv[1:])  # first: Hydra would write a password into .hydra/
    # Unknown group choices and keys, and values of the wrong type, before Hydra composes (it would
    # say so in several lines); every value of every job is judged next, before anything starts, by
    # the sweep callback.
    hydra_jobs.exit_on_bad_command_line(sys.argv[1:])
    try:
        hydra_main()
    except KeyboardInterrupt:
        _exit_interrupted()


def _exit_interrupted() -> NoReturn:
    """After SIGINT or SIGTERM, the job processes gone: end the sweep KILLED, say in one line how
    the runs ended, exit 130 or 143."""
    received = signals.received() or signal.SIGINT  # a KeyboardInterrupt that no signal of ours raised
    sweep = sys.modules.get("simpsons.sweep_callback")  # loaded by Hydra, as a callback, once the app has started
    try:
        ended = sweep.end_interrupted(received.name) if sweep is not None else None
        if ended is not None:
            line = signals.summary(received, ended.killed_jobs, (ended.run_id, ended.status))
        else:
            line = signals.summary(received, _interrupted_run(), None)
    except ServerLost as lost:  # the server went away too: the line says so instead
        line = f"interrupted ({received.name}): {lost}"
    ray = sys.modules.get("ray")  # a Ray sweep's: it forwards its workers' output late, after our line
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # what its exit hook would do next; the jobs have ended already
    print(line, file=sys.stderr)
    sys.exit(signals.exit_code(received))


def _interrupted_run() -> dict[str, str]:
    """A single run's id and status, read back: it was the active run when the signal came."""
    run_id = signals.interrupted_run_id()
    if run_id is None:
        return {}
    from mlflow.tracking import MlflowClient

    with connection.lost_server():
        return {run_id: MlflowClient().get_run(run_id).info.status}


if __name__ == "__main__":
    main()
