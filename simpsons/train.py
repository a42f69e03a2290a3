"""`python -m simpsons.train`: the Hydra app; each job is one tracked run (simpsons/job.py).

`-m` sweeps a grid with Hydra's multirun; simpsons.sweep nests every job's run under one parent.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from simpsons import checks, config
from simpsons.errors import ConfigError, SimpsonsError

log = logging.getLogger("simpsons.train")
config.register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    # Imported here, so that `--help` and bad group choices answer without loading TensorFlow.
    from simpsons.job import JobContext, train

    job = JobContext.from_hydra()
    try:
        train(cfg, job)
    except SimpsonsError as error:
        log.error("error: %s", error)
        if job.sweep_dir is None:
            sys.exit(2)
        raise  # in a sweep: this job is FAILED, the others go on


def check_group_overrides(args: list[str]) -> None:
    """Reject unknown config-group choices (backbone=foo) before Hydra composes: the first one."""
    errors = checks.group_choice_errors(args)
    if errors:
        raise ConfigError(errors[0])


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # Unknown group choices and keys, before Hydra composes (it would say so in several lines);
    # every value of every job is checked next, before anything starts, by the sweep callback.
    checks.exit_on_bad_command_line(sys.argv[1:])
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # Slurm and `kill` end runs as KILLED too
    try:
        hydra_main()
    except KeyboardInterrupt:
        from simpsons import sweep  # loaded already when a sweep is running

        sweep.note_interrupted()
        raise


if __name__ == "__main__":
    main()
