"""conf/ensemble.yaml as settings: one ensemble's keys and their rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING, DictConfig

from simpsons.errors import ConfigError
from simpsons.settings import convert
from simpsons.settings.rules import TRUE_OR_FALSE, Rule, is_boolean, is_name, is_whole, judged, listed, missing_errors
from simpsons.settings.train import TrackingSettings

# The ensemble's choices, and what MLflow refuses in a registered model's name.
CHOICES = {"method": ("mean", "greedy"), "weights": ("equal", "val_accuracy"), "direction": ("max", "min")}
BAD_NAME_CHARACTERS = ("/", ":")


@dataclass(frozen=True)
class EnsembleSettings:
    """conf/ensemble.yaml: one ensemble's settings (`python -m simpsons.ensemble`)."""

    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    top_n: int = MISSING
    metric: str = MISSING  # any metric the training runs logged
    direction: str = MISSING  # max | min
    sweep: str | None = MISSING  # a sweep's parent run id, latest, or null (the whole experiment)
    filter: str | None = MISSING  # an MLflow search filter
    one_per_backbone: bool = MISSING
    include_pruned: bool = MISSING  # runs a search's pruner stopped (tag simpsons.pruned): left out unless true
    method: str = MISSING  # mean | greedy
    weights: str = MISSING  # with method=mean: equal | val_accuracy
    calibrate: bool = MISSING
    register: bool = MISSING
    registered_model: str = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("top_n", lambda v: is_whole(v) and v >= 1, "an integer >= 1"),
        Rule("one_per_backbone", is_boolean, TRUE_OR_FALSE),
        Rule("include_pruned", is_boolean, TRUE_OR_FALSE),
        Rule("register", is_boolean, TRUE_OR_FALSE),
        Rule("calibrate", is_boolean, TRUE_OR_FALSE),
        Rule(
            "registered_model",
            lambda v: is_name(v) and not any(c in v for c in BAD_NAME_CHARACTERS),
            "a non-empty name without '/' or ':'",
        ),
    )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EnsembleSettings:
        """The config composed with conf/ensemble.yaml as settings (see TrainSettings.from_config)."""
        return convert.from_config(cls, cfg)

    def errors(self) -> list[str]:
        """One message per bad value: the choices first, then the other keys, then tracking's."""
        errors = missing_errors(self)
        for key, accepted in CHOICES.items():
            value = getattr(self, key)
            if value not in accepted:
                errors.append(f"{key}={value!r} is unknown; use one of: {listed(accepted)}")
        errors += judged(self, "", self.RULES) + self.tracking.errors()
        return [error for error in errors if error]

    def check(self) -> None:
        """Raise ConfigError naming the first bad value and what would be accepted."""
        errors = self.errors()
        if errors:
            raise ConfigError(errors[0])

    @property
    def weighs_by_accuracy(self) -> bool:
        """A mean weighted by each member's validation accuracy (method=mean weights=val_accuracy)."""
        return self.method == "mean" and self.weights == "val_accuracy"

    def container(self) -> dict[str, Any]:
        return convert.container(self)
