"""The typed settings (simpsons/settings/): Hydra composes onto them, every value rule and rule
across keys is theirs, in one line each, and the decisions a job takes from them are theirs too."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import compose_train, train_settings
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from simpsons import settings
from simpsons.config import CONF_DIR, flatten, group_options
from simpsons.errors import ConfigError
from simpsons.settings import (
    NOT_IDENTITY,
    DemoData,
    EnsembleSettings,
    FolderData,
    KaggleData,
    LightAugment,
    NoAugment,
    PlateauSchedule,
    TrainSettings,
)


def composed_ensemble(*overrides: str) -> EnsembleSettings:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return EnsembleSettings.from_config(compose(config_name="ensemble", overrides=list(overrides)))


# The schema: Hydra composes onto the settings' classes.


@pytest.mark.parametrize(
    "overrides,kinds",
    [
        ([], (KaggleData, NoAugment)),
        (["data=demo"], (DemoData, NoAugment)),
        (["data=folder", "data.root=/images", "augment=light", "scheduler=plateau"], (FolderData, LightAugment)),
    ],
)
def test_each_groups_option_composes_onto_its_own_class(overrides, kinds):
    chosen = train_settings(overrides)
    assert (type(chosen.data), type(chosen.augment)) == kinds
    assert isinstance(chosen.scheduler, PlateauSchedule) == ("scheduler=plateau" in overrides)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "override",
    ["epochs=2.5", "cache=maybe", "data=folder data.dir=/images", "scheduler=constant scheduler.alpha=0.5", "tpyo=1"],
)
def test_hydra_itself_refuses_unknown_keys_and_wrong_types(override):
    with pytest.raises(ConfigCompositionException):
        compose_train(override.split())


@pytest.mark.parametrize(
    "group", ["backbone", "optimizer", "data", "augment", "scheduler", "tracking", "experiment", "variant"]
)
def test_every_option_of_every_group_composes_resolves_and_converts(group):
    for option in group_options(group):
        overrides = ["experiment=options_mini"] if group == "variant" else []
        chosen = train_settings([*overrides, f"{group}={option}", "data.root=/images"])  # every value resolved
        assert dataclasses.is_dataclass(chosen.data) and dataclasses.is_dataclass(chosen.scheduler)
        assert chosen.tracking.uri
        if group in ("backbone", "optimizer", "data"):
            assert getattr(chosen, group).name == option


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=demo"],
        ["experiment=options_mini", "variant=plateau"],
        ["optimizer.lr=1"],
        ["trial.number=3", "trial.study=s", "trial.storage=sqlite:////tmp/optuna.db"],
        ["+tags.a=b"],
    ],
)
def test_the_container_is_the_resolved_config_as_omegaconf_gives_it(overrides):
    """What a run logs (params, config.yaml) and hashes: the same keys, order, values and types as
    before the settings had a schema; `variant` only where a preset set it, `trial` only in a search,
    `tags` where the user did."""
    cfg = compose_train(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resolved["variant"] is None:
        del resolved["variant"]
    if resolved["trial"]["number"] is None:
        del resolved["trial"]
    if not resolved["tags"]:
        del resolved["tags"]
    container = TrainSettings.from_config(cfg).container()
    assert OmegaConf.to_yaml(container) == OmegaConf.to_yaml(resolved)
    assert [type(value) for value in flatten(container).values()] == [type(v) for v in flatten(resolved).values()]
    assert ("variant" in container) == ("variant=plateau" in overrides)


def test_a_key_no_setting_has_and_a_config_that_does_not_resolve_are_config_errors():
    with pytest.raises(ConfigError, match=r"^unknown key 'data.colour'; data takes: dir, min_images_per_class, name"):
        train_settings(["+data.colour=red"])
    with pytest.raises(ConfigError, match=r"^the config does not resolve: .*NOT_SET_ANYWHERE"):
        train_settings(["cache_dir=${oc.env:NOT_SET_ANYWHERE}"])


# Value rules and rules across keys: one line each, naming the value and what is accepted.


@pytest.mark.parametrize(
    "override,message",
    [
        ("dropout=1.5", "dropout=1.5 is invalid; expected a number in [0, 1)"),
        ("dropout=high", "dropout='high' is invalid; expected a number in [0, 1)"),
        ("epochs=0", "epochs=0 is invalid; expected an integer >= 1"),
        ("seed=-1", "seed=-1 is invalid; expected an integer in [0, 2**32)"),
        ("data.val_split=0", "data.val_split=0 is invalid; expected a fraction in (0, 1)"),
        ("deterministic=maybe", "deterministic='maybe' is invalid; expected auto, true or false"),
        ("precision=float16", "precision='float16' is invalid; expected one of float32, mixed_float16, mixed_bfloat16"),
        ("jit_compile=1", "jit_compile=1 is invalid; expected auto, true or false"),
        ("label_smoothing=1", "label_smoothing=1 is invalid; expected a number in [0, 1)"),
        ("optimizer.lr=0", "optimizer.lr=0 is invalid; expected a positive number"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 is invalid; expected a number >= 0 (0: off)"),
        ("optimizer.weight_decay=x", "optimizer.weight_decay='x' is invalid; expected a number >= 0 (0: off)"),
        ("++optimizer.kwargs.weight_decay=0.1", "optimizer.kwargs.weight_decay is set; set optimizer.weight_decay"),
        ("finetune.lr=-1", "finetune.lr=-1 is invalid; expected null or a positive number"),
        ("early_stopping.monitor=val_f1", "early_stopping.monitor='val_f1' is invalid; expected null (monitor's),"),
        ("scheduler=cosine scheduler.alpha=2", "scheduler.alpha=2 is invalid; expected a number in [0, 1]"),
        ("tracking.retry_seconds=2", "tracking.retry_seconds=2 is invalid; expected an integer from 5 to 900"),
        ("tracking.experiment=''", "tracking.experiment='' is invalid; expected a non-empty name"),
        ("tracking.system_metrics_seconds=-1", "tracking.system_metrics_seconds=-1 is invalid; expected a number of"),
        ("+tags.mlflow.runName=x", "tags={'mlflow': {'runName': 'x'}} is invalid; expected a name and a value"),
        ("+tags.simpsons_x=1 +tags.simpsons.run_type=train", "tags={'simpsons_x': 1, 'simpsons': {'run_type'"),
        ("data.test_layout=nested", "data.test_layout='nested' is unknown; use one of: folders, flat"),
        ("tta=mirror", "tta='mirror' is unknown; use one of: none, flip"),
        ("optimizer.keras_class=Adamax9", "optimizer.keras_class='Adamax9' is not a keras.optimizers class;"),
        ("backbone.weights=/no/such.h5", "backbone.weights='/no/such.h5' is not a file; use imagenet, null, or a"),
        ("backbone.name=resnet9000", "unknown backbone 'resnet9000'; choose one of: convnext_tiny, densenet201,"),
        ("data=folder", "data.root is required (it is ???); set it on the command line, e.g. data.root=..."),
    ],
)
def test_a_bad_value_is_one_line_naming_it_and_what_is_accepted(override, message):
    errors = train_settings(override.split()).errors()
    assert any(error.startswith(message) for error in errors), errors
    assert len(errors) == 1


def test_every_bad_value_is_named_not_only_the_first():
    assert train_settings(["dropout=1.5", "epochs=0"]).errors() == [
        "dropout=1.5 is invalid; expected a number in [0, 1)",
        "epochs=0 is invalid; expected an integer >= 1",
    ]


@pytest.mark.parametrize("name", group_options("backbone"))
def test_the_image_size_is_held_to_the_backbones_minimum(name):
    chosen = train_settings([f"backbone={name}"])  # composed once: the image size is judged on the settings
    smallest = chosen.backbone.min_image_size
    assert dataclasses.replace(chosen, image_size=smallest).errors() == []
    assert dataclasses.replace(chosen, image_size=smallest - 1).errors() == [
        f"image_size={smallest - 1} is below the minimum of backbone {name!r}; use image_size >= {smallest}"
    ]


def test_xla_under_op_determinism_is_refused_and_auto_determinism_without_a_gpu_counts(monkeypatch):
    assert train_settings(["jit_compile=true", "deterministic=true"]).errors() == [settings.XLA_NEEDS_NO_DETERMINISM]
    assert train_settings(["jit_compile=true", "deterministic=false"]).errors() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    [error] = train_settings(["jit_compile=true"]).errors()
    assert error.endswith("; deterministic=auto turns it on here: no GPU is visible")


def test_a_staleness_limit_within_two_heartbeats_is_refused():
    assert train_settings(["tracking.heartbeat_seconds=30", "tracking.stale_after=45"]).errors() == [
        "tracking.stale_after=45 is within two heartbeats (tracking.heartbeat_seconds=30); "
        "use a stale_after above twice the heartbeat"
    ]


def test_keras_optimizers_named_here_are_keras_optimizers():
    import keras

    for name in settings.KERAS_OPTIMIZERS:
        optimizer = getattr(keras.optimizers, name)(learning_rate=1e-3)
        assert isinstance(optimizer, keras.optimizers.Optimizer), name


def test_a_wrong_type_is_worded_as_the_rule_of_its_key():
    assert settings.accepted(TrainSettings, "epochs") == "an integer >= 1"
    assert settings.accepted(settings.GpuSettings, "one_per_job") == "true or false"
    assert settings.accepted(TrainSettings, "cache_dir") is None  # a string: no rule


# The ensemble's keys.


def test_the_ensembles_defaults_pass_register_under_simpsons_and_do_not_calibrate():
    chosen = composed_ensemble()
    assert chosen.errors() == []
    assert (chosen.register, chosen.registered_model, chosen.calibrate) == (True, "simpsons", False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method=vote", "method='vote' is unknown; use one of: mean, greedy"),
        ("weights=f1", "weights='f1' is unknown; use one of: equal, val_accuracy"),
        ("direction=up", "direction='up' is unknown; use one of: max, min"),
        ("top_n=0", "top_n=0 is invalid; expected an integer >= 1"),
        ("registered_model=team:a", "registered_model='team:a' is invalid; expected a non-empty name without"),
        ("registered_model=' '", "registered_model=' ' is invalid"),
        ("tracking.heartbeat_seconds=0", "tracking.heartbeat_seconds=0 is invalid; expected a positive number"),
    ],
)
def test_an_ensembles_bad_value_is_named_with_what_is_accepted(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        composed_ensemble(override).check()


def test_the_ensembles_container_is_its_resolved_config():
    """What an ensemble run logs as params: the same as before its keys had types."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="ensemble", overrides=["sweep=latest", "top_n=3"])
    container = EnsembleSettings.from_config(cfg).container()
    assert OmegaConf.to_yaml(container) == OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True))


def test_a_weighted_mean_is_the_mean_method_with_accuracy_weights():
    assert composed_ensemble("method=mean", "weights=val_accuracy").weighs_by_accuracy
    assert not composed_ensemble("method=greedy", "weights=val_accuracy").weighs_by_accuracy


# Decisions a job takes from its settings.


@pytest.mark.parametrize(
    "overrides,cached_head,resumable",
    [
        ([], True, False),  # the head on cached features: seconds, trained again if killed
        (["finetune.layers=2"], True, True),
        (["augment=light"], False, True),
        (["cache=false"], False, True),
    ],
)
def test_the_cache_decides_the_head_phase_backups_and_backbone_sharing(overrides, cached_head, resumable):
    chosen = train_settings(overrides)
    assert (chosen.cached_head, chosen.resumable, chosen.shares_backbone) == (cached_head, resumable, not resumable)
    assert chosen.resumes_killed_runs == resumable
    assert not train_settings([*overrides, "reuse=false"]).resumes_killed_runs


def test_derived_values_follow_their_keys(tmp_path):
    chosen = train_settings([f"cache_dir={tmp_path}", "optimizer.lr=0.01", "monitor=val_loss"])
    assert chosen.checkpoints == tmp_path / "checkpoints"
    assert chosen.finetune_lr == pytest.approx(0.001) and chosen.early_stopping_monitor == "val_loss"
    tuned = train_settings(["finetune.lr=0.5", "early_stopping.monitor=val_accuracy", "class_weight=balanced"])
    assert (tuned.finetune_lr, tuned.early_stopping_monitor, tuned.class_weighted) == (0.5, "val_accuracy", True)


def test_the_identity_leaves_out_where_things_lie_and_keeps_what_decides_results(tmp_path):
    default = train_settings(["data=folder", "data.root=/images"])
    moved = train_settings(["data=folder", f"data.root={tmp_path}", f"cache_dir={tmp_path}", "reuse=false"])
    assert default.identity() == moved.identity()
    assert not any(key.startswith(NOT_IDENTITY) for key in default.identity())
    assert default.identity() != train_settings(["data=folder", "data.root=/images", "dropout=0.2"]).identity()
    # The user's tags label a run: the same config tagged otherwise is the same run (reused, resumed)
    tagged = train_settings(["data=folder", "data.root=/images", "+tags.purpose=baseline", "+tags.round=2"])
    assert tagged.identity() == default.identity() and tagged.errors() == []
    assert tagged.run_tags() == {"purpose": "baseline", "round": "2"}
    assert tagged.container()["tags"] == {"purpose": "baseline", "round": 2} and "tags" not in default.container()
