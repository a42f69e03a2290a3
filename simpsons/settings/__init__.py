"""The training and ensemble configs as typed, frozen settings, with every rule on their values.

`register()` stores these classes in Hydra's ConfigStore, and conf/train.yaml, conf/ensemble.yaml
and each option of conf/data/, conf/augment/ and conf/scheduler/ name theirs first in their
defaults list: Hydra itself then refuses a key that no class has, and a value of the wrong type
(2.5 for an integer). Each class mirrors its YAML file key for key and in its order, so the
composed config, and the config.yaml a run logs, keep that order. The values live in the YAML
files; here they are MISSING.

A task function converts its config once (`TrainSettings.from_config`); nothing below it receives
a DictConfig. `errors()` judges every value and every rule across keys, in one line each that
names the value and what is accepted. Before a sweep the Hydra callback runs it on every job
(simpsons/hydra_jobs.py), and each job runs it again before it creates anything
(simpsons/preflight.py, which adds the checks of files and servers). Derived decisions
(`cached_head`, `resumable`, `identity`, ...) are properties of the settings, beside the keys
they come from.

Types: `Any` where OmegaConf's type would change a valid value (a float key would turn 1 into 1.0,
which changes a run's params and config hash) or where a key takes `auto` or a boolean; their
rules judge them. Nothing here imports TensorFlow, Keras or MLflow: the check side needs it.

- `rules`: the tests of values and their messages, shared;
- `train`: conf/train.yaml and its groups (TrainSettings), and the decisions a job takes from them;
- `ensemble`: conf/ensemble.yaml (EnsembleSettings);
- `schema`: the classes as Hydra's schema (`register`);
- `convert`: a composed config as settings, and settings as plain data.
"""

from simpsons.settings.ensemble import EnsembleSettings
from simpsons.settings.rules import (
    BACKENDS,
    CLASS_WEIGHTS,
    KERAS_OPTIMIZERS,
    MONITORS,
    PRECISIONS,
    TEST_LAYOUTS,
    TTA_MODES,
    XLA_NEEDS_NO_DETERMINISM,
    accepted,
    choice_error,
    one_line,
)
from simpsons.settings.schema import SCHEMAS, register
from simpsons.settings.train import (
    NOT_IDENTITY,
    AugmentSettings,
    BackboneSettings,
    ConstantSchedule,
    CosineSchedule,
    DataSettings,
    DemoData,
    DemoGeneration,
    EarlyStoppingSettings,
    FinetuneSettings,
    FolderData,
    GpuSettings,
    KaggleData,
    LightAugment,
    NoAugment,
    OptimizerSettings,
    PlateauSchedule,
    ScheduleSettings,
    TrackingSettings,
    TrainSettings,
)

__all__ = [
    "BACKENDS",
    "CLASS_WEIGHTS",
    "KERAS_OPTIMIZERS",
    "MONITORS",
    "NOT_IDENTITY",
    "PRECISIONS",
    "SCHEMAS",
    "TEST_LAYOUTS",
    "TTA_MODES",
    "XLA_NEEDS_NO_DETERMINISM",
    "AugmentSettings",
    "BackboneSettings",
    "ConstantSchedule",
    "CosineSchedule",
    "DataSettings",
    "DemoData",
    "DemoGeneration",
    "EarlyStoppingSettings",
    "EnsembleSettings",
    "FinetuneSettings",
    "FolderData",
    "GpuSettings",
    "KaggleData",
    "LightAugment",
    "NoAugment",
    "OptimizerSettings",
    "PlateauSchedule",
    "ScheduleSettings",
    "TrackingSettings",
    "TrainSettings",
    "accepted",
    "choice_error",
    "one_line",
    "register",
]
