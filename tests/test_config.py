"""Every config option composes, and every backbone and optimizer builds from it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import compose_train, train_settings
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from simpsons.backbones import BackboneSpec
from simpsons.config import CONF_DIR, PROJECT_ROOT, flatten, group_options
from simpsons.model import build_classifier
from simpsons.optimizers import build_optimizer

BACKBONES = group_options("backbone")
SEED_STUDY = {  # backbone: (optimizer, dropout, epochs), as the seed study reported them
    "densenet201": ("rmsprop", 0.2, 30),
    "xception": ("adam", 0.4, 30),
    "resnet152v2": ("adam", 0.5, 30),
    "resnet50v2": ("adam", 0.4, 50),
    "inception_resnet_v2": ("adam", 0.4, 30),
    "vgg19": ("rmsprop", 0.2, 30),
    "vgg16": ("rmsprop", 0.2, 30),
    "inceptionv3": ("adam", 0.4, 10),
    "mobilenetv2": ("adam", 0.4, 10),
}


def test_the_required_options_exist():
    assert set(BACKBONES) >= {*SEED_STUDY, "mobilenet", "efficientnetv2b0", "convnext_tiny"}
    assert set(group_options("optimizer")) >= {"adam", "rmsprop", "sgd", "adamw"}
    assert set(group_options("data")) >= {"simpsons", "folder", "demo"}


VARIANTS = group_options("variant")


def test_the_options_preset_sweeps_every_variant_over_three_seeds_on_the_shared_mini_data():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=options_mini"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params.variant.split(",")) == VARIANTS and params.variant.startswith("baseline,")
    assert params.seed == "1,2,3"
    assert (cfg.variant, cfg.backbone.name, cfg.backbone.kwargs.alpha) == ("baseline", "mobilenet", 0.25)
    assert cfg.tracking.experiment == "options-mini"
    assert Path(cfg.data.dir) == PROJECT_ROOT / ".." / "shared" / "data" / "simpsons-mini"
    assert Path(cfg.backbone.weights) == PROJECT_ROOT / ".." / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_labels_its_runs_and_changes_only_keys_the_baseline_has(variant):
    """A variant is one option against the preset: it sets `variant` to its own name and changes values
    of existing keys (a key only it sets would be a typo, silently logged as a param); the scheduler
    group's options may differ in their keys."""
    baseline = flatten(OmegaConf.to_container(compose_train(["experiment=options_mini"])))
    cfg = compose_train(["experiment=options_mini", f"variant={variant}"])
    assert cfg.variant == variant
    flat = flatten(OmegaConf.to_container(cfg))
    assert {key for key in flat.keys() - baseline.keys() if not key.startswith("scheduler.")} == set()
    changed = {key for key in flat.keys() & baseline.keys() if flat[key] != baseline[key]}
    if variant == "baseline":
        assert changed == set()
    else:
        assert "variant" in changed and changed - {"variant"}  # the label, and the option itself


@pytest.mark.parametrize("preset", group_options("hydra/launcher"))
def test_every_launcher_preset_composes_into_its_plugins_launcher(preset):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    module, _, name = cfg.hydra.launcher._target_.rpartition(".")
    plugin = pytest.importorskip(module, reason=f"the plugin of hydra/launcher={preset} is not installed")
    assert getattr(plugin, name).__name__.endswith("Launcher")


def test_the_parallel_preset_runs_two_joblib_jobs_at_once():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("parallel.ParallelLauncher") and cfg.hydra.launcher.n_jobs == 2


def test_defaults_follow_the_seed_study_common_setting():
    cfg = compose_train([])
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.dropout, cfg.image_size, cfg.batch_size) == (
        "adam",
        1e-4,
        0.4,
        150,
        32,
    )
    assert cfg.backbone.weights == "imagenet"
    assert cfg.tracking.experiment == "simpsons"


@pytest.mark.parametrize("backbone", sorted(SEED_STUDY))
def test_seed_study_presets_match_the_reported_settings(backbone):
    cfg = compose_train([f"experiment=seed_{backbone}"])
    optimizer, dropout, epochs = SEED_STUDY[backbone]
    assert (cfg.backbone.name, cfg.optimizer.name, cfg.dropout, cfg.epochs) == (backbone, optimizer, dropout, epochs)
    assert (cfg.image_size, cfg.batch_size, cfg.optimizer.lr) == (150, 32, 1e-4)


@pytest.mark.slow  # every full-size backbone, DenseNet201 and ResNet152V2 among them: minutes on 2 cores
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_at_its_minimum_size_and_takes_raw_images_of_any_size(name):
    spec = BackboneSpec.from_settings(train_settings([f"backbone={name}", "backbone.weights=null"]).backbone)
    model = build_classifier(spec, spec.min_image_size, num_classes=3, dropout=0.2)
    raw = np.random.default_rng(0).uniform(0, 255, (2, 50, 41, 3)).astype("float32")
    probabilities = model.predict(raw, verbose=0)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not any(layer.trainable_weights for layer in model.layers if isinstance(layer, keras.Model))
    keras.backend.clear_session()


@pytest.mark.parametrize("name", BACKBONES)
def test_baked_in_preprocessing_equals_the_backbones_preprocess_input(name):
    spec = BackboneSpec.from_settings(train_settings([f"backbone={name}", "backbone.weights=null"]).backbone)
    images = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    expected = np.asarray(spec.preprocess_input()(images.copy()))
    actual = keras.ops.convert_to_numpy(spec.preprocessing_layer()(images))
    np.testing.assert_allclose(actual, expected, atol=1e-4)


@pytest.mark.parametrize("name", group_options("optimizer"))
def test_optimizer_builds_with_its_learning_rate(name):
    chosen = train_settings([f"optimizer={name}", "optimizer.lr=3e-4"]).optimizer
    optimizer = build_optimizer(chosen)
    assert type(optimizer).__name__ == chosen.keras_class
    assert float(optimizer.learning_rate) == pytest.approx(3e-4)
    assert float(build_optimizer(chosen, lr=1e-5).learning_rate) == pytest.approx(1e-5)  # fine-tuning's rate


def test_default_store_is_sqlite_at_the_project_root_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_train([]).tracking.uri == f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose_train([]).tracking.uri == "http://127.0.0.1:5000"
    assert compose_train(["tracking.uri=sqlite:///elsewhere.db"]).tracking.uri == "sqlite:///elsewhere.db"


def test_the_ensemble_config_composes_with_the_same_tracking_as_training():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="ensemble", overrides=["method=greedy", "sweep=latest"])
    assert (cfg.top_n, cfg.metric, cfg.direction, cfg.method, cfg.sweep) == (
        5,
        "best_val_accuracy",
        "max",
        "greedy",
        "latest",
    )
    assert cfg.tracking == compose_train([]).tracking
