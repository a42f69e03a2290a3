"""The settings' classes as Hydra's schema: stored in its ConfigStore under the names conf/*.yaml
list first in their defaults."""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from simpsons import config
from simpsons.settings.ensemble import EnsembleSettings
from simpsons.settings.train import (
    ConstantSchedule,
    CosineSchedule,
    DemoData,
    FolderData,
    KaggleData,
    LightAugment,
    NoAugment,
    PlateauSchedule,
    TrainSettings,
)

# The schemas by the names conf/*.yaml list in their defaults (`- /<name>@_here_` in a group's options).
SCHEMAS: dict[str, type] = {
    "train_schema": TrainSettings,
    "ensemble_schema": EnsembleSettings,
    "folder_data_schema": FolderData,
    "kaggle_data_schema": KaggleData,
    "demo_data_schema": DemoData,
    "no_augment_schema": NoAugment,
    "light_augment_schema": LightAugment,
    "constant_schedule_schema": ConstantSchedule,
    "cosine_schedule_schema": CosineSchedule,
    "plateau_schedule_schema": PlateauSchedule,
}


def register() -> None:
    """Everything conf/ needs to compose: its resolvers, and these schemas in Hydra's ConfigStore.

    Not groups of their own: a group of schemas would be listed among the config groups in --help.
    Idempotent; every command and every test process that composes calls it first.
    """
    config.register_resolvers()
    store = ConfigStore.instance()
    for name, kind in SCHEMAS.items():
        store.store(name=name, node=_writable(OmegaConf.structured(kind)))


def _writable(node: Any) -> Any:
    """The schema without the read-only flags OmegaConf sets on a frozen dataclass's config, which
    no YAML file or override could then fill in. Its nested classes are there from the start
    (default_factory), so composing creates no node that would be read-only again."""
    node._set_flag("readonly", None)
    if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
        for key in node:
            _writable(node._get_node(key))
    return node
