"""A config Hydra composed with the settings' schema, as frozen settings, and back as plain data."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simpsons.errors import ConfigError
from simpsons.settings.rules import listed, one_line


def from_config(kind: type, cfg: DictConfig) -> Any:
    """`kind` (TrainSettings, EnsembleSettings) from the config Hydra composed with its schema; a key
    no setting has, and an interpolation that does not resolve, raise ConfigError."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as error:
        raise ConfigError(f"the config does not resolve: {one_line(error)}") from error
    return _instance(kind, cfg, values, "")


def _instance(kind: type, node: DictConfig, values: dict[str, Any], prefix: str) -> Any:
    """`kind` from the resolved `values` of `node`; a nested node of a structured type becomes its class."""
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = [key for key in values if key not in names]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown key {prefix + unknown[0]!r}; {where} takes: {listed(sorted(names))}")
    fields = {}
    for name in names:
        value = values.get(name, MISSING)
        child = OmegaConf.get_type(node, name) if isinstance(value, dict) else None
        if child is not None and dataclasses.is_dataclass(child):
            value = _instance(child, node[name], value, f"{prefix}{name}.")
        fields[name] = value
    return kind(**fields)


def container(settings: Any) -> dict[str, Any]:
    """The settings as plain data, as OmegaConf resolves the composed config: nested dicts, in the
    classes' (hence the YAML files') key order."""
    return dataclasses.asdict(settings)
