"""`python -m simpsons.ensemble`: the best finished training runs' softmax outputs, averaged, as a new run.

This is the Hydra app only; the work is in simpsons/ensembling/. `--help` (the help template in
conf/ensemble.yaml) and bad values answer without importing MLflow or TensorFlow.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from simpsons import credentials, startup
from simpsons.config import CONF_DIR, register_resolvers
from simpsons.ensembling.options import check_options
from simpsons.errors import ServerLost, SimpsonsError

log = logging.getLogger("simpsons.ensemble")
register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ensemble")  # absolute: see train.py
def hydra_main(cfg: DictConfig) -> None:
    startup.prepare_process()
    try:
        check_options(cfg)
        from simpsons.ensembling.command import ensemble  # MLflow and TensorFlow, once there is work to do
        from simpsons.tracking import connection

        with connection.lost_server():  # a request given up: one line, exit 1 (connection.py)
            ensemble(cfg)
    except ServerLost as error:
        log.error("error: %s", error)
        sys.exit(1)
    except SimpsonsError as error:
        log.error("error: %s", error)
        sys.exit(2)


def main() -> None:
    """`simpsons-ensemble` and `python -m simpsons.ensemble`."""
    # Before Hydra, which writes the command line into outputs/.../.hydra/ before the app starts.
    credentials.exit_if_in_arguments(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
