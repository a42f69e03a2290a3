"""conf/train.yaml and its groups as settings: one training job's keys, their rules, and the
decisions a job takes from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING, DictConfig

from simpsons import config
from simpsons.settings import convert
from simpsons.settings.rules import (
    A_SEED,
    BACKENDS,
    CLASS_WEIGHTS,
    KERAS_OPTIMIZERS,
    MONITORS,
    PRECISIONS,
    TEST_LAYOUTS,
    TRUE_OR_FALSE,
    TTA_MODES,
    XLA_NEEDS_NO_DETERMINISM,
    Rule,
    choice_error,
    gpu_may_be_visible,
    image_size_error,
    is_auto_or_boolean,
    is_boolean,
    is_fraction_below_one,
    is_name,
    is_number,
    is_positive,
    is_seed,
    is_whole,
    judged,
    listed,
    missing_errors,
    weights_error,
)

# Where data and results lie, and whether to reuse: not what the results are (the data
# fingerprint stands for the data's content wherever it lies).
# Nor which GPU computes them, nor how its memory is mapped (gpu.*).
# Nor how many of a sweep's models are kept once it ends (keep_models).
# Nor which search trial a run is (trial.*): a trial whose config already finished reuses that run.
# Nor the user's own run tags (`+tags.purpose=baseline`): a label to filter by, not a setting; the
# same config tagged otherwise is the same run (reused, resumed), whose tags are then this job's.
NOT_IDENTITY = (
    "tracking", "cache_dir", "reuse", "keep_models", "data.dir", "data.root", "data.test_root", "gpu.", "trial.",
    "tags",
)  # fmt: skip
RESERVED_TAG_PREFIXES = ("mlflow.", "simpsons.")  # MLflow's and this project's own tags


def are_user_tags(tags: Any) -> bool:
    """`tags`: names (none of MLflow's or this project's own) to plain values."""
    if not isinstance(tags, dict):
        return False
    plain = (str, int, float, bool)
    return all(
        isinstance(key, str) and key and not key.startswith(RESERVED_TAG_PREFIXES) and isinstance(value, plain)
        for key, value in tags.items()
    )


@dataclass(frozen=True)
class BackboneSettings:
    """conf/backbone/<name>.yaml: a keras.applications constructor (simpsons/backbones.py builds it)."""

    name: str = MISSING
    constructor: str = MISSING
    preprocess: str = MISSING  # the module whose preprocess_input the model bakes in
    weights: str | None = MISSING  # imagenet | null (random init) | path to a weights file
    min_image_size: int = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments, passed on as given

    RULES: ClassVar[tuple[Rule, ...]] = (Rule("min_image_size", lambda v: is_whole(v) and v >= 1, "an integer >= 1"),)

    def errors(self, prefix: str = "backbone.") -> list[str]:
        return [choice_error("backbone", self.name), *judged(self, prefix, self.RULES), weights_error(self.weights)]


@dataclass(frozen=True)
class OptimizerSettings:
    """conf/optimizer/<name>.yaml: keras.optimizers.<keras_class>(learning_rate=lr, **kwargs)."""

    name: str = MISSING
    keras_class: str = MISSING
    lr: Any = MISSING
    weight_decay: Any = MISSING  # decoupled: each step, every trainable weight shrinks by lr * weight_decay of itself
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments, passed on as given

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("lr", is_positive, "a positive number"),
        Rule("weight_decay", lambda v: is_number(v) and v >= 0, "a number >= 0 (0: off)"),
    )

    def errors(self, prefix: str = "optimizer.") -> list[str]:
        errors = [choice_error("optimizer", self.name), *judged(self, prefix, self.RULES)]
        if self.keras_class not in KERAS_OPTIMIZERS:
            accepted = listed(KERAS_OPTIMIZERS)
            errors.append(
                f"{prefix}keras_class={self.keras_class!r} is not a keras.optimizers class; use one of: {accepted}"
            )
        if "weight_decay" in self.kwargs:  # Keras would take it twice and fail only once the job has started
            errors.append(f"{prefix}kwargs.weight_decay is set; set {prefix}weight_decay instead")
        return errors


class DataSettings:
    """What every option of conf/data/ has, and the rules on it.

    Not a dataclass: each option's class below carries its own fields, in its YAML file's order,
    which a base class's fields would come before.
    """

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("val_split", lambda v: is_number(v) and 0 < v < 1, "a fraction in (0, 1)"),
        Rule("split_seed", is_seed, A_SEED),
        Rule("min_images_per_class", lambda v: is_whole(v) and v >= 2, "an integer >= 2"),
    )

    def errors(self, prefix: str = "data.") -> list[str]:
        errors = judged(self, prefix, self.RULES)
        layout = self.test_layout  # type: ignore[attr-defined]
        if layout not in TEST_LAYOUTS:
            errors.append(f"{prefix}test_layout={layout!r} is unknown; use one of: {listed(TEST_LAYOUTS)}")
        return errors

    @property
    def folder(self) -> str | None:
        """data.dir, for the options that have one: where the data set lies as a whole."""
        return getattr(self, "dir", None)

    @property
    def generation(self) -> DemoGeneration | None:
        """How the job generates the data on first use (data=demo); None: the data is given."""
        return getattr(self, "generate", None)


@dataclass(frozen=True)
class FolderData(DataSettings):
    """conf/data/folder.yaml: any <root>/<class>/<image> tree."""

    name: str = MISSING
    root: str | None = MISSING
    test_root: str | None = MISSING
    test_layout: str = MISSING  # folders: <class>/<file>; flat: <class>_<n>.<ext>
    val_split: Any = MISSING
    split_seed: int = MISSING
    min_images_per_class: int = MISSING


@dataclass(frozen=True)
class KaggleData(DataSettings):
    """conf/data/simpsons.yaml: the Kaggle data set's layout under one folder, `dir`."""

    name: str = MISSING
    dir: str = MISSING
    root: str | None = MISSING
    test_root: str | None = MISSING
    test_layout: str = MISSING
    val_split: Any = MISSING
    split_seed: int = MISSING
    min_images_per_class: int = MISSING


@dataclass(frozen=True)
class DemoGeneration:
    """How simpsons/demo_data.py draws the demo images (data.generate)."""

    train_per_class: int = MISSING
    test_per_class: int = MISSING
    size: int = MISSING
    seed: int = MISSING


@dataclass(frozen=True)
class DemoData(KaggleData):
    """conf/data/demo.yaml: generated on first use."""

    generate: DemoGeneration = field(default_factory=DemoGeneration)


class AugmentSettings:
    """What every option of conf/augment/ has (its name), and the rule on it."""

    def errors(self, prefix: str = "augment.") -> list[str]:
        options = config.group_options("augment")
        name = self.name  # type: ignore[attr-defined]
        return [] if name in options else [f"augment={name!r} is unknown; use one of: {listed(options)}"]


@dataclass(frozen=True)
class NoAugment(AugmentSettings):
    """conf/augment/none.yaml."""

    name: str = MISSING


@dataclass(frozen=True)
class LightAugment(AugmentSettings):
    """conf/augment/light.yaml: flips, shifts and zooms, active only in training (simpsons/model.py)."""

    name: str = MISSING
    horizontal_flip: bool = MISSING
    shift: Any = MISSING  # fraction of the image, either way, in both directions
    zoom: Any = MISSING


class ScheduleSettings:
    """What every option of conf/scheduler/ has (its name), and the rules on it (simpsons/training/schedules.py)."""

    RULES: ClassVar[tuple[Rule, ...]] = ()

    def errors(self, prefix: str = "scheduler.") -> list[str]:
        return [choice_error("scheduler", self.name), *judged(self, prefix, self.RULES)]  # type: ignore[attr-defined]

    @property
    def watches(self) -> str | None:
        """The validation curve the scheduler acts on (plateau's monitor): a resumed phase replays it."""
        return None


@dataclass(frozen=True)
class ConstantSchedule(ScheduleSettings):
    """conf/scheduler/constant.yaml."""

    name: str = MISSING


@dataclass(frozen=True)
class CosineSchedule(ScheduleSettings):
    """conf/scheduler/cosine.yaml: keras.optimizers.schedules.CosineDecay over each phase."""

    name: str = MISSING
    alpha: Any = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (Rule("alpha", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),)


@dataclass(frozen=True)
class PlateauSchedule(ScheduleSettings):
    """conf/scheduler/plateau.yaml: keras.callbacks.ReduceLROnPlateau in each phase."""

    name: str = MISSING
    monitor: str = MISSING
    factor: Any = MISSING
    patience: int = MISSING
    min_delta: Any = MISSING
    cooldown: int = MISSING
    min_lr: Any = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (
        # The validation curves a resumed run reads back, to count its patience on.
        Rule("monitor", lambda v: v in MONITORS, f"one of {listed(list(MONITORS))}"),
        Rule("factor", lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
        Rule("patience", lambda v: is_whole(v) and v >= 0, "an integer >= 0"),
        Rule("min_delta", lambda v: is_number(v) and v >= 0, "a number >= 0"),
        Rule("cooldown", lambda v: is_whole(v) and v >= 0, "an integer >= 0"),
        Rule("min_lr", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    )

    @property
    def watches(self) -> str | None:
        return self.monitor


@dataclass(frozen=True)
class TrackingSettings:
    """conf/tracking/default.yaml: the MLflow store and experiment, shared by training and ensembles."""

    uri: str = MISSING  # checked by simpsons/preflight.py: a store this process can use
    experiment: str = MISSING
    heartbeat_seconds: Any = MISSING
    stale_after: Any = MISSING
    retry_seconds: Any = MISSING  # a server that answers nothing for this long is lost (tracking/connection.py)
    system_metrics_seconds: Any = MISSING  # a training run's system metrics sampling interval; 0: off

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("experiment", is_name, "a non-empty name"),
        Rule("heartbeat_seconds", is_positive, "a positive number"),
        Rule("stale_after", is_positive, "a positive number"),
        Rule("system_metrics_seconds", lambda v: is_number(v) and v >= 0, "a number of seconds, 0 for off"),
        # MLflow's backoff factor is a whole number of seconds (>= 5 s with 2 retries), and it takes at
        # most 10 retries of at most 120 s each (simpsons/tracking/connection.py).
        Rule("retry_seconds", lambda v: is_whole(v) and 5 <= v <= 900, "an integer from 5 to 900"),
    )

    def errors(self, prefix: str = "tracking.") -> list[str]:
        return [*judged(self, prefix, self.RULES), self._liveness_error(prefix)]

    def _liveness_error(self, prefix: str) -> str | None:
        """A run on another host is ended KILLED after stale_after seconds without a heartbeat: a
        limit within two beats would end live runs."""
        heartbeat, stale_after = self.heartbeat_seconds, self.stale_after
        if not (is_number(heartbeat) and is_number(stale_after)) or stale_after > 2 * heartbeat:
            return None  # each key's own range is judged by its rule
        return (
            f"{prefix}stale_after={stale_after} is within two heartbeats ({prefix}heartbeat_seconds={heartbeat}); "
            "use a stale_after above twice the heartbeat"
        )


@dataclass(frozen=True)
class FinetuneSettings:
    layers: int = MISSING  # > 0: a second phase with the top N backbone layers unfrozen
    lr: Any = MISSING  # null: optimizer.lr / 10
    epochs: int = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("layers", lambda v: is_whole(v) and v >= 0, "an integer >= 0"),
        Rule("lr", lambda v: v is None or is_positive(v), "null or a positive number"),
        Rule("epochs", lambda v: is_whole(v) and v >= 1, "an integer >= 1"),
    )

    def errors(self, prefix: str = "finetune.") -> list[str]:
        return judged(self, prefix, self.RULES)


@dataclass(frozen=True)
class EarlyStoppingSettings:
    patience: int | None = MISSING  # null: off
    monitor: str | None = MISSING  # null: the run's monitor
    min_delta: Any = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("patience", lambda v: v is None or (is_whole(v) and v >= 0), "null (off) or an integer >= 0"),
        Rule("monitor", lambda v: v is None or v in MONITORS, f"null (monitor's), {listed(list(MONITORS))}"),
        Rule("min_delta", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    )

    def errors(self, prefix: str = "early_stopping.") -> list[str]:
        return judged(self, prefix, self.RULES)


@dataclass(frozen=True)
class GpuSettings:
    memory_growth: bool = MISSING
    one_per_job: bool = MISSING

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("memory_growth", is_boolean, TRUE_OR_FALSE),
        Rule("one_per_job", is_boolean, TRUE_OR_FALSE),
    )

    def errors(self, prefix: str = "gpu.") -> list[str]:
        return judged(self, prefix, self.RULES)


@dataclass(frozen=True)
class TrialSettings:
    """Which trial of which Optuna study a job trains: set by hydra/sweeper=optuna (simpsons/search.py)
    for each of its jobs; null otherwise, and then left out of the params and the config hash."""

    number: int | None = None
    study: str | None = None
    storage: str | None = None  # the study's database (no password: checked before the search starts)

    def errors(self, prefix: str = "trial.") -> list[str]:
        if self.number is None:
            return []
        if self.study is None or self.storage is None:
            needs = f"{prefix}study and {prefix}storage"
            return [f"{prefix}number={self.number} needs {needs} (hydra/sweeper=optuna sets all three)"]
        return []


@dataclass(frozen=True)
class TrainSettings:
    """conf/train.yaml: one training job's settings (`python -m simpsons.train`)."""

    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    data: Any = MISSING  # FolderData | KaggleData | DemoData: each option of conf/data/ names its class
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    augment: Any = MISSING  # NoAugment | LightAugment
    scheduler: Any = MISSING  # ConstantSchedule | CosineSchedule | PlateauSchedule
    dropout: Any = MISSING
    image_size: int = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    deterministic: Any = MISSING  # auto | true | false
    precision: str = MISSING
    jit_compile: Any = MISSING  # auto | true | false
    class_weight: str = MISSING
    label_smoothing: Any = MISSING
    cache: bool = MISSING
    cache_dir: str = MISSING
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    monitor: str = MISSING
    early_stopping: EarlyStoppingSettings = field(default_factory=EarlyStoppingSettings)
    tta: str = MISSING
    gpu: GpuSettings = field(default_factory=GpuSettings)
    reuse: bool = MISSING
    keep_models: Any = MISSING  # all | N >= 1: a sweep's best N runs by monitor keep their model files
    backend: str = MISSING  # Keras's backend: tensorflow | jax
    trial: TrialSettings = field(default_factory=TrialSettings)
    # A label that conf/variant/ presets set (report --group-by variant). Without one it is null,
    # and left out of the params and the config hash, where it never was.
    variant: str | None = None
    # The user's tags for the run (`+tags.purpose=baseline`): set as MLflow run tags, to filter by.
    tags: Any = field(default_factory=dict)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule("dropout", is_fraction_below_one, "a number in [0, 1)"),
        Rule("image_size", lambda v: is_whole(v) and v > 0, "a positive integer"),
        Rule("epochs", lambda v: is_whole(v) and v >= 1, "an integer >= 1"),
        Rule("batch_size", lambda v: is_whole(v) and v >= 1, "an integer >= 1"),
        Rule("seed", is_seed, A_SEED),
        Rule("deterministic", is_auto_or_boolean, "auto, true or false"),
        Rule("precision", lambda v: v in PRECISIONS, f"one of {listed(PRECISIONS)}"),
        Rule("jit_compile", is_auto_or_boolean, "auto, true or false"),
        Rule("class_weight", lambda v: v in CLASS_WEIGHTS, " or ".join(CLASS_WEIGHTS)),
        Rule("label_smoothing", is_fraction_below_one, "a number in [0, 1)"),
        Rule("cache", is_boolean, TRUE_OR_FALSE),
        Rule("monitor", lambda v: v in MONITORS, f"one of {listed(list(MONITORS))}"),
        Rule("reuse", is_boolean, TRUE_OR_FALSE),
        Rule("keep_models", lambda v: v == "all" or (is_whole(v) and v >= 1), "all or an integer >= 1"),
        Rule("tags", are_user_tags, "a name and a value, e.g. +tags.purpose=baseline; not mlflow.* or simpsons.*"),
        Rule("backend", lambda v: v in BACKENDS, f"one of {listed(BACKENDS)}"),
    )
    GROUPS: ClassVar[tuple[str, ...]] = (
        "backbone",
        "optimizer",
        "data",
        "tracking",
        "augment",
        "scheduler",
        "finetune",
        "early_stopping",
        "gpu",
        "trial",
    )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSettings:
        """The job's config (composed with conf/train.yaml) as settings; its values are not judged
        here (errors() does that), but a key no setting has, and an interpolation that does not
        resolve, raise ConfigError."""
        return convert.from_config(cls, cfg)

    def errors(self) -> list[str]:
        """One message per bad value and per broken rule across keys; empty if the job can start."""
        errors = missing_errors(self)
        errors += judged(self, "", self.RULES)
        for group in self.GROUPS:
            errors += getattr(self, group).errors(f"{group}.")
        errors += [self._image_size_error(), self._tta_error(), self._xla_error()]
        return list(dict.fromkeys(error for error in errors if error))

    def _image_size_error(self) -> str | None:
        if not (is_whole(self.image_size) and is_whole(self.backbone.min_image_size)):
            return None  # their rules said so already
        return image_size_error(str(self.backbone.name), self.backbone.min_image_size, self.image_size)

    def _tta_error(self) -> str | None:
        return None if self.tta in TTA_MODES else f"tta={self.tta!r} is unknown; use one of: {listed(TTA_MODES)}"

    def _xla_error(self) -> str | None:
        if self.jit_compile is not True or self.backend == "jax":  # JAX compiles with XLA, determinism or not
            return None
        if self.deterministic is True:
            return XLA_NEEDS_NO_DETERMINISM
        if self.deterministic == "auto" and not gpu_may_be_visible():
            return f"{XLA_NEEDS_NO_DETERMINISM}; deterministic=auto turns it on here: no GPU is visible"
        return None

    # Derived decisions: what a job does, given these settings.

    @property
    def cached_head(self) -> bool:
        """Whether the head (first) phase trains on cached features: the backbone is frozen in it,
        and there is no augmentation to make every epoch's images differ."""
        return self.cache and self.augment.name == "none"

    @property
    def resumable(self) -> bool:
        """Whether images pass through the backbone in training (fine-tuning, augmentation or
        cache=false): epochs that cost minutes, so every epoch is backed up and a killed run resumes.
        A run on cached features alone takes seconds, and simply trains again."""
        return not (self.cached_head and self.finetune.layers == 0)

    @property
    def resumes_killed_runs(self) -> bool:
        """Whether the job goes on with a killed run of its config: reuse=false trains everything again."""
        return self.reuse and self.resumable

    @property
    def shares_backbone(self) -> bool:
        """Whether the backbone stays frozen for good, so that the jobs of a sweep in one process share it."""
        return not self.resumable

    @property
    def models_kept(self) -> int | None:
        """How many of a sweep's runs keep their model files when it ends, best first; None: all."""
        return None if self.keep_models == "all" else self.keep_models

    @property
    def checkpoints(self) -> Path:
        """Keras BackupAndRestore folders of resumable runs, one per MLflow run, beside the cache."""
        return Path(self.cache_dir) / "checkpoints"

    @property
    def finetunes(self) -> bool:
        """Whether a fine-tuning phase follows the head's."""
        return self.finetune.layers > 0

    @property
    def finetune_lr(self) -> float:
        return self.finetune.lr or self.optimizer.lr / 10

    @property
    def early_stopping_monitor(self) -> str:
        return self.early_stopping.monitor or self.monitor

    @property
    def in_search(self) -> bool:
        """Whether this job is a trial of an Optuna study (hydra/sweeper=optuna)."""
        return self.trial.number is not None

    @property
    def class_weighted(self) -> bool:
        return self.class_weight == "balanced"

    def run_tags(self) -> dict[str, str]:
        """The user's tags as MLflow run tags: every value as text."""
        return {str(key): str(value) for key, value in self.tags.items()}

    def container(self) -> dict[str, Any]:
        """The settings as plain data, as OmegaConf resolves the composed config: the params and
        config.yaml a run logs. Without a variant, no `variant` key, as before there was a schema."""
        resolved = convert.container(self)
        if self.variant is None:
            del resolved["variant"]
        if self.trial.number is None:
            del resolved["trial"]
        if not self.tags:  # no `tags` param, as before there were any
            del resolved["tags"]
        return resolved

    def identity(self) -> dict[str, Any]:
        """The dotted keys that decide a run's results (NOT_IDENTITY left out): what the config hash
        is taken over, with `auto` determinism and XLA resolved by the job."""
        flat = config.flatten(self.container())
        return {key: value for key, value in flat.items() if not key.startswith(NOT_IDENTITY)}
