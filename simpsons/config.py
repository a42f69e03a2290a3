"""Where the project lives, the OmegaConf resolvers its configs use, and checks on plain keys."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simpsons.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def default_tracking_uri() -> str:
    """SQLite store at the project root: the one a plain `mlflow ui` there opens."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("default_tracking_uri", default_tracking_uri, replace=True)


def group_options(group: str) -> list[str]:
    """The choices of a config group, e.g. group_options("backbone") -> ["convnext_tiny", ...]."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def check_choice(group: str, choice: str) -> None:
    options = group_options(group)
    if choice not in options:
        raise ConfigError(f"unknown {group} {choice!r}; choose one of: {', '.join(options)}")


def check_training_keys(cfg: DictConfig) -> None:
    """Range checks on the plain keys of conf/train.yaml, before any data is read."""
    checks = [
        ("dropout", 0 <= cfg.dropout < 1, "a number in [0, 1)"),
        ("image_size", isinstance(cfg.image_size, int) and cfg.image_size > 0, "a positive integer"),
        ("epochs", isinstance(cfg.epochs, int) and cfg.epochs >= 1, "an integer >= 1"),
        ("batch_size", isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "an integer >= 1"),
        ("data.val_split", 0 < cfg.data.val_split < 1, "a fraction in (0, 1)"),
        ("data.min_images_per_class", cfg.data.min_images_per_class >= 2, "an integer >= 2"),
        ("deterministic", cfg.deterministic in ("auto", True, False), "auto, true or false"),
    ]
    for key, ok, accepted in checks:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is invalid; expected {accepted}")
