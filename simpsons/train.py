"""`python -m simpsons.train`: the Hydra app; each job is one tracked run (simpsons/job.py).

`-m` sweeps a grid with Hydra's multirun; simpsons.sweep nests every job's run under one parent.
"""

from __future__ import annotations

import logging
import signal
import sys

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig

from simpsons import config
from simpsons.errors import SimpsonsError

log = logging.getLogger("simpsons.train")
config.register_resolvers()
CHECKED_GROUPS = ("backbone", "optimizer", "data", "experiment")


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
    """Reject unknown config-group choices (backbone=foo) in one line, before Hydra composes."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:
        return  # Hydra reports malformed overrides itself
    for override in overrides:
        group = override.key_or_group
        if group not in CHECKED_GROUPS or override.is_delete():
            continue
        if isinstance(override.value(), Glob):
            continue  # glob(...) matches existing options only
        choices = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for choice in choices:
            if isinstance(choice, str):
                config.check_choice(group, choice)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    try:
        check_group_overrides(sys.argv[1:])
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # Slurm and `kill` end runs as KILLED too
    try:
        hydra_main()
    except KeyboardInterrupt:
        from simpsons import sweep  # loaded already when a sweep is running

        sweep.note_interrupted()
        raise


if __name__ == "__main__":
    main()
