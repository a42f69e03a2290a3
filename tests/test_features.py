"""The feature cache, fine-tuning and augmentation, on real images and a real MLflow store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest
from conftest import TINY_MODEL, compose_train, folder_data
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import model as model_module
from simpsons.backbones import BackboneSpec
from simpsons.demo_data import write_demo_data
from simpsons.errors import ConfigError
from simpsons.features import cached_features
from simpsons.job import JobContext, train
from simpsons.model import backbone_of, build_classifier, shared_backbone, unfreeze_top
from simpsons.tracking import reader
from simpsons.tracking.predictions import from_csv
from simpsons.training import gpu_visible, use_xla


def run_with(overrides: list[str], image_folders, tracking_uri, cache_dir) -> dict:
    cfg = compose_train([*TINY_MODEL, *folder_data(image_folders), "epochs=2", f"tracking.uri={tracking_uri}",
                         f"cache_dir={cache_dir}", "reuse=false", *overrides])  # fmt: skip
    run = MlflowClient(tracking_uri).get_run(train(cfg, JobContext([])))
    return run.data.tags | {f"metric:{k}": v for k, v in run.data.metrics.items()} | {"run_id": run.info.run_id}


def test_a_second_run_reuses_the_cache_and_a_changed_file_or_size_invalidates_it(tmp_path, tracking_uri):
    images = tmp_path / "images"
    write_demo_data(images, train_per_class=6, test_per_class=2, size=40, seed=3)
    cache = tmp_path / "cache"
    first = run_with([], images, tracking_uri, cache)
    assert first["feature_cache"] == "miss" and first["metric:feature_extraction_seconds"] > 0
    assert first["metric:feature_extraction_images_per_second"] > 0

    second = run_with(["dropout=0.1", "optimizer=rmsprop"], images, tracking_uri, cache)
    assert second["feature_cache"] == "hit" and second["metric:feature_extraction_seconds"] == 0
    assert run_with(["seed=7"], images, tracking_uri, cache)["feature_cache"] == "miss"  # random weights: the seed's

    Image.new("RGB", (40, 40), (255, 0, 255)).save(images / "train" / "red_circle" / "img_0001.jpg")
    assert run_with([], images, tracking_uri, cache)["feature_cache"] == "miss"
    assert run_with(["image_size=48"], images, tracking_uri, cache)["feature_cache"] == "miss"
    assert run_with(["image_size=48"], images, tracking_uri, cache)["feature_cache"] == "hit"


def test_concurrent_lookups_compute_an_entry_once_and_a_failed_one_leaves_nothing(tmp_path):
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        time.sleep(0.5)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached_features(tmp_path, "k", compute))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r.hit for r in results) == [False, True]
    assert all(np.array_equal(r.features, [[0, 1], [2, 3], [4, 5]]) for r in results)

    def broken() -> np.ndarray:
        raise RuntimeError("backbone crashed")

    with pytest.raises(RuntimeError):
        cached_features(tmp_path, "other", broken)
    assert not list(tmp_path.glob("other*.npy"))


def test_finetuning_trains_its_head_on_cached_features_and_continues_the_curves(image_folders, tracking_uri, tmp_path):
    tags = run_with(["finetune.layers=4", "finetune.epochs=2"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] in ("hit", "miss")
    phases = "head on cached features: epochs 0-1; finetune: epochs 2-3, top 4 layers, lr 0.0001; kept epoch "
    assert tags["phases"].startswith(phases)
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("simpsons").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1, 2, 3]

    tags = run_with(["finetune.layers=4", "finetune.epochs=2", "cache=false"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] == "off"
    assert tags["phases"].startswith("head: epochs 0-1; finetune: epochs 2-3, top 4 layers, lr 0.0001")

    tags = run_with(["augment=light"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] == "off" and tags["phases"].startswith("head: epochs 0-1; kept epoch ")


def test_mixed_precision_and_xla_train_a_float16_model_with_its_own_cache_entry(image_folders, tracking_uri, tmp_path):
    float32 = run_with([], image_folders, tracking_uri, tmp_path)
    assert float32["xla"] == str(gpu_visible()).lower()  # auto: XLA with a GPU (and no op determinism)

    gpu_settings = ["precision=mixed_float16", "jit_compile=true", "deterministic=false"]  # XLA: no op determinism
    mixed = run_with(gpu_settings, image_folders, tracking_uri, tmp_path)
    assert mixed["xla"] == "true"
    assert mixed["feature_cache"] == "miss"  # float16 features are not the float32 entry
    assert run_with(gpu_settings, image_folders, tracking_uri, tmp_path)["feature_cache"] == "hit"

    model = mlflow.keras.load_model(reader.model_uri(MlflowClient(tracking_uri).get_run(mixed["run_id"])))
    assert model.get_layer("pool").dtype_policy.name == "mixed_float16"
    assert model.get_layer("probabilities").dtype_policy.name == "float32"
    test_csv = mlflow.artifacts.download_artifacts(run_id=mixed["run_id"], artifact_path="predictions/test.csv")
    outputs = from_csv(Path(test_csv).read_text())
    names, recorded = outputs.names, outputs.probabilities
    raw = np.stack([np.asarray(Image.open(image_folders / "test" / name), dtype=np.float32) for name in names])
    probabilities = keras.ops.convert_to_numpy(model.predict(raw, verbose=0))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, recorded, atol=1e-3)  # float16 compute, with and without XLA

    tags = run_with([*gpu_settings, "cache=false"], image_folders, tracking_uri, tmp_path)  # loss-scaled float16
    assert tags["feature_cache"] == "off" and tags["xla"] == "true"
    assert np.isfinite(tags["metric:test_loss"])


def test_xla_is_on_by_default_only_with_a_gpu_and_never_under_op_determinism():
    assert use_xla("auto", deterministic=False) == gpu_visible()
    assert use_xla("auto", deterministic=True) is False
    assert use_xla(False, deterministic=False) is False
    with pytest.raises(ConfigError, match="jit_compile=true needs deterministic=false"):
        use_xla(True, deterministic=True)


def test_unfreezing_the_top_layers_keeps_batchnorm_frozen():
    spec = BackboneSpec.from_config(compose_train(TINY_MODEL).backbone)
    model = build_classifier(spec, 32, num_classes=3, dropout=0.2)
    unfreeze_top(model, 6)
    layers = backbone_of(model).layers
    assert not any(layer.trainable for layer in layers[:-6])
    top = layers[-6:]
    batchnorm = [isinstance(layer, keras.layers.BatchNormalization) for layer in top]
    assert [layer.trainable for layer in top] == [not is_batchnorm for is_batchnorm in batchnorm]
    assert any(batchnorm)


def test_light_augmentation_changes_images_only_in_training():
    spec = BackboneSpec.from_config(compose_train(TINY_MODEL).backbone)
    augment = compose_train(["augment=light"]).augment
    model = build_classifier(spec, 32, num_classes=3, dropout=0.0, augment=augment, seed=1)
    assert {"flip", "shift", "zoom"} <= {layer.name for layer in model.layers}
    augmented = keras.Model(model.input, model.get_layer("zoom").output)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(augmented(images, training=False), images, atol=1e-3)
    assert not np.allclose(augmented(images, training=True), images, atol=1.0)


def test_a_shared_backbone_is_the_one_built_for_the_same_weights_size_and_random_seed(tmp_path):
    model_module._SHARED.clear()
    random = BackboneSpec.from_config(compose_train(TINY_MODEL).backbone)
    first = shared_backbone(random, 32, seed=1)
    assert shared_backbone(random, 32, seed=1) is first
    assert shared_backbone(random, 32, seed=2) is not first  # random weights are the seed's
    assert shared_backbone(random, 40, seed=1) is not first
    assert shared_backbone(random, 32, seed=1) is not first  # only the last two are kept

    weights = tmp_path / "mobilenet.weights.h5"
    backbone_of(build_classifier(random, 32, num_classes=3, dropout=0.0)).save_weights(weights)
    from_file = BackboneSpec.from_config(compose_train([*TINY_MODEL, f"backbone.weights={weights}"]).backbone)
    kept = shared_backbone(from_file, 32, seed=1)
    assert shared_backbone(from_file, 32, seed=2) is kept  # a file's weights are not the seed's
    keras.utils.set_random_seed(5)
    backbone_of(build_classifier(random, 32, num_classes=3, dropout=0.0)).save_weights(weights)  # other weights
    assert shared_backbone(from_file, 32, seed=1) is not kept  # at the same path
