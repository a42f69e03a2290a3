"""`python -m simpsons.ensemble`: the best finished training runs' softmax outputs, averaged, as a new run.

This is the Hydra app only; the work is in simpsons/ensembling/. `--help` (the help template in
conf/ensemble.yaml) and bad values answer without importing MLflow or TensorFlow: a value of the
wrong type or an unknown key before Hydra composes (simpsons/hydra_jobs.py), the other values in
the task function (EnsembleSettings.check).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from simpsons import credentials, hydra_jobs, settings, startup
from simpsons.config import CONF_DIR
from simpsons.errors import ServerLost, SimpsonsError
from simpsons.settings import EnsembleSettings

log = logging.getLogger("simpsons.ensemble")
settings.register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")  # absolute: see train.py
def hydra_main(cfg: DictConfig) -> None:
    startup.prepare_process()
    try:
        chosen = EnsembleSettings.from_config(cfg)
        chosen.check()
        from simpsons.ensembling.command import ensemble  # MLflow and TensorFlow, once there is work to do
        from simpsons.tracking import connection

        with connection.lost_server():  # a request given up: one line, exit 1 (connection.py)
            ensemble(chosen, top_n_given=_given("top_n"))
    except ServerLost as error:
        log.error("error: %s", error)
        sys.exit(1)
    except SimpsonsError as error:
        log.error("error: %s", error)
        sys.exit(2)


def _given(key: str) -> bool:
    """Whether the command line set `key` (else it is conf/ensemble.yaml's default)."""
    from hydra.core.hydra_config import HydraConfig

    return any(override.split("=", 1)[0].lstrip("+~") == key for override in HydraConfig.get().overrides.task)


def main() -> None:
    """`simpsons-ensemble` and `python -m simpsons.ensemble`."""
    # Before Hydra, which writes the command line into outputs/.../.hydra/ before the app starts.
    credentials.exit_if_in_arguments(sys.argv[1:])
    hydra_jobs.exit_on_bad_command_line(sys.argv[1:], config_name="ensemble")
    hydra_main()


if __name__ == "__main__":
    main()
