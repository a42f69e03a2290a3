"""hydra/sweeper=optuna: an Optuna search (Optuna >= 4) whose trials are this project's sweep jobs."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Asks the study for trials and launches them with the command's launcher (simpsons.search)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # hydra.sweeper's keys; the search reads them from the config itself
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from simpsons import search

        self.config = config
        self.launcher = search.setup_launcher(hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> None:
        from simpsons import search

        search.run(self.config.hydra.sweeper, self.config, self.launcher)
