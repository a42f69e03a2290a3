"""The feature cache, fine-tuning and augmentation, on real images and a real MLflow store."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest
from conftest import IMAGE_SENSITIVE_MODEL, TINY_MODEL, folder_data, train_settings
from mlflow.tracking import MlflowClient
from PIL import Image

from simpsons import model as model_module
from simpsons.backbones import BackboneSpec
from simpsons.demo_data import write_demo_data
from simpsons.features import Progress, cached_features
from simpsons.images import load_image
from simpsons.model import backbone_of, build_classifier, shared_backbone, unfreeze_top, with_flip_tta, with_tta
from simpsons.tracking import reader
from simpsons.tracking.predictions import Outputs, from_csv
from simpsons.training.recipe import JobContext, train
from simpsons.training.runtime import gpu_visible


def run_with(overrides: list[str], image_folders, tracking_uri, cache_dir) -> dict:
    cfg = train_settings([*TINY_MODEL, *folder_data(image_folders), "epochs=2", f"tracking.uri={tracking_uri}",
                         f"cache_dir={cache_dir}", "reuse=false", *overrides])  # fmt: skip
    run = MlflowClient(tracking_uri).get_run(train(cfg, JobContext([])))
    timings = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/timings.json")
    metrics = {f"metric:{k}": v for k, v in run.data.metrics.items()} | {f"metric:{k}": v for k, v in timings.items()}
    return run.data.tags | metrics | {"run_id": run.info.run_id}


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
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


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
def test_finetuning_trains_its_head_on_cached_features_and_continues_the_curves(image_folders, tracking_uri, tmp_path):
    tags = run_with(["finetune.layers=4", "finetune.epochs=2"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] == "miss"  # a new cache folder: the head phase's features were extracted
    phases = "head on cached features: epochs 1-2; finetune: epochs 3-4, top 4 layers, lr 0.0001; kept epoch "
    assert tags["phases"].startswith(phases)
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("simpsons").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_accuracy")] == [1, 2, 3, 4]

    tags = run_with(["finetune.layers=4", "finetune.epochs=2", "cache=false"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] == "off"
    assert tags["phases"].startswith("head: epochs 1-2; finetune: epochs 3-4, top 4 layers, lr 0.0001")

    tags = run_with(["augment=light"], image_folders, tracking_uri, tmp_path)
    assert tags["feature_cache"] == "off" and tags["phases"].startswith("head: epochs 1-2; kept epoch ")


@pytest.mark.slow  # trains through the recipe: a run logged to MLflow
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


def test_unfreezing_the_top_layers_keeps_batchnorm_frozen():
    spec = BackboneSpec.from_settings(train_settings(TINY_MODEL).backbone)
    model = build_classifier(spec, 32, num_classes=3, dropout=0.2)
    unfreeze_top(model, 6)
    layers = backbone_of(model).layers
    assert not any(layer.trainable for layer in layers[:-6])
    top = layers[-6:]
    batchnorm = [isinstance(layer, keras.layers.BatchNormalization) for layer in top]
    assert [layer.trainable for layer in top] == [not is_batchnorm for is_batchnorm in batchnorm]
    assert any(batchnorm)


def test_light_augmentation_changes_images_only_in_training():
    spec = BackboneSpec.from_settings(train_settings(TINY_MODEL).backbone)
    augment = train_settings(["augment=light"]).augment
    model = build_classifier(spec, 32, num_classes=3, dropout=0.0, augment=augment, seed=1)
    assert {"flip", "shift", "zoom"} <= {layer.name for layer in model.layers}
    augmented = keras.Model(model.input, model.get_layer("zoom").output)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(augmented(images, training=False), images, atol=1e-3)
    assert not np.allclose(augmented(images, training=True), images, atol=1.0)


def test_a_shared_backbone_is_the_one_built_for_the_same_weights_size_and_random_seed(tmp_path):
    model_module._SHARED.clear()
    random = BackboneSpec.from_settings(train_settings(TINY_MODEL).backbone)
    first = shared_backbone(random, 32, seed=1)
    assert shared_backbone(random, 32, seed=1) is first
    assert shared_backbone(random, 32, seed=2) is not first  # random weights are the seed's
    assert shared_backbone(random, 40, seed=1) is not first
    assert shared_backbone(random, 32, seed=1) is not first  # only the last two are kept

    weights = tmp_path / "mobilenet.weights.h5"
    backbone_of(build_classifier(random, 32, num_classes=3, dropout=0.0)).save_weights(weights)
    from_file = BackboneSpec.from_settings(train_settings([*TINY_MODEL, f"backbone.weights={weights}"]).backbone)
    kept = shared_backbone(from_file, 32, seed=1)
    assert shared_backbone(from_file, 32, seed=2) is kept  # a file's weights are not the seed's
    keras.utils.set_random_seed(5)
    backbone_of(build_classifier(random, 32, num_classes=3, dropout=0.0)).save_weights(weights)  # other weights
    assert shared_backbone(from_file, 32, seed=1) is not kept  # at the same path


def raw_images(root: Path, names: list[str]) -> np.ndarray:
    """The files as a user's Pillow gives them to the logged model: raw RGB, at their own size."""
    return np.stack([np.asarray(Image.open(root / name), dtype=np.float32) for name in names])


def logged_outputs(run_id: str, split: str) -> Outputs:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"predictions/{split}.csv")
    return from_csv(Path(path).read_text())


def logged_model(uri: str, run_id: str) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(reader.model_uri(MlflowClient(uri).get_run(run_id)))


def test_flip_tta_features_of_the_mirror_images_are_entries_of_their_own_that_a_second_run_hits(flips, tracking_uri):
    client = MlflowClient(flips.uri)
    plain, flipped = client.get_run(flips.plain), client.get_run(flips.flipped)
    assert (plain.data.params["tta"], flipped.data.params["tta"]) == ("none", "flip")
    assert (plain.data.tags["feature_cache"], flipped.data.tags["feature_cache"]) == ("miss", "miss")
    before, after = flips.entries
    assert len(before) == 3 and before < after  # train, val and test; then the val and test mirror images
    mirrored = {name: np.load(flips.cache_dir / name) for name in after - before}
    unmirrored = {name: np.load(flips.cache_dir / name) for name in before}
    assert sorted(len(features) for features in mirrored.values()) == [10, 16]  # val and test
    for features in mirrored.values():
        [same_split] = [other for other in unmirrored.values() if other.shape == features.shape]
        assert np.abs(features - same_split).max() > 1e-4  # other images, other features

    cfg = train_settings([*flips.overrides, f"tracking.uri={tracking_uri}", "tta=flip", "dropout=0.1"])
    again = MlflowClient(tracking_uri).get_run(train(cfg, JobContext([])))  # a store of its own, the same cache
    timings = mlflow.artifacts.load_dict(f"{again.info.artifact_uri}/timings.json")
    assert again.data.tags["feature_cache"] == "hit" and timings["feature_extraction_seconds"] == 0
    assert {path.name for path in flips.cache_dir.glob("*.npy")} == after


def test_flip_tta_outputs_average_each_image_and_its_mirror_and_the_logged_model_gives_them(flips):
    """The two runs share features and head (same config and seed): the flipped run's outputs are
    the plain run's averaged with the plain model's on the mirror images, for validation and test."""
    plain_model, flipped_model = logged_model(flips.uri, flips.plain), logged_model(flips.uri, flips.flipped)
    run = MlflowClient(flips.uri).get_run(flips.flipped)
    for split, root in [("val", flips.images / "train"), ("test", flips.images / "test")]:
        plain, flipped = logged_outputs(flips.plain, split), logged_outputs(flips.flipped, split)
        assert flipped.names == plain.names
        raw = raw_images(root, flipped.names)
        np.testing.assert_allclose(flipped_model.predict(raw), flipped.probabilities, atol=1e-5)

        resized = np.stack([load_image(str(root / name), 32) for name in plain.names])  # Pillow: tf.data's pixels
        mirror_outputs = plain_model.predict(resized[:, :, ::-1])  # the plain model resizes 32 px to 32 px
        np.testing.assert_allclose(flipped.probabilities, (plain.probabilities + mirror_outputs) / 2, atol=1e-5)
        assert np.abs(flipped.probabilities - plain.probabilities).max() > 1e-4, "the mirror changed nothing"

    # best_val_accuracy and the test metrics are the flipped outputs' (the loss tells them apart
    # where accuracy may not)
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(
        logged_accuracy(run, logged_outputs(flips.flipped, "val"))
    )
    classes = json.loads(run.data.tags["class_names"])
    test = logged_outputs(flips.flipped, "test")
    picked = test.probabilities[np.arange(len(test.names)), [classes.index(label) for label in test.labels]]
    assert run.data.metrics["test_loss"] == pytest.approx(-np.mean(np.log(picked)), rel=1e-5)
    assert run.data.metrics["test_loss"] != MlflowClient(flips.uri).get_run(flips.plain).data.metrics["test_loss"]


def logged_accuracy(run, outputs: Outputs) -> float:
    classes = json.loads(run.data.tags["class_names"])
    return float(np.mean(outputs.probabilities.argmax(axis=1) == [classes.index(label) for label in outputs.labels]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting,cache,entries",
    [(["cache=false"], "off", 0), (["finetune.layers=2", "finetune.epochs=1"], "miss", 3)],
    ids=["end to end", "fine-tuned"],
)
def test_flip_tta_through_the_backbone_logs_a_model_that_gives_its_outputs(
    setting, cache, entries, image_folders, tracking_uri, tmp_path
):
    """End to end, and fine-tuned after a head phase on cached features: the model scores the
    images and their mirror images (no mirror features are cached: the head alone never scores)."""
    overrides = [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), "epochs=1", f"tracking.uri={tracking_uri}"]
    run = MlflowClient(tracking_uri).get_run(
        train(train_settings([*overrides, f"cache_dir={tmp_path}", "tta=flip", *setting]), JobContext([]))
    )
    assert run.data.tags["feature_cache"] == cache and len(list(tmp_path.glob("*.npy"))) == entries
    model = logged_model(tracking_uri, run.info.run_id)
    for split, root in [("val", image_folders / "train"), ("test", image_folders / "test")]:
        recorded = logged_outputs(run.info.run_id, split)
        assert np.ptp(recorded.probabilities, axis=0).max() > 1e-3, "a softmax that ignores the image proves little"
        np.testing.assert_allclose(model.predict(raw_images(root, recorded.names)), recorded.probabilities, atol=1e-5)
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(
        logged_accuracy(run, logged_outputs(run.info.run_id, "val"))
    )


@pytest.mark.slow  # a second Python loads the model: 12 to 27 s on 2 shared cores
def test_a_flip_tta_model_resizes_then_averages_each_image_and_its_mirror_and_loads_without_simpsons(tmp_path):
    spec = BackboneSpec.from_settings(train_settings(IMAGE_SENSITIVE_MODEL).backbone)
    keras.utils.set_random_seed(1)  # the backbone's random weights
    model = build_classifier(spec, 32, num_classes=3, dropout=0.0, seed=1)
    assert with_tta(model, "none") is model  # an unknown tta never gets here: the settings refuse it (test_settings)

    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 100, bias])  # a confident softmax, as trained ones are
    flipped = with_flip_tta(model)
    images = np.random.default_rng(0).uniform(0, 255, (2, 45, 61, 3)).astype("float32")
    resized = keras.ops.convert_to_numpy(keras.layers.Resizing(32, 32)(images))
    expected = (model.predict(resized, verbose=0) + model.predict(resized[:, :, ::-1], verbose=0)) / 2
    outputs = flipped.predict(images, verbose=0)
    # Resized, then mirrored, as the pipeline and the cache do: the same operations on the same
    # pixels, equal to the bit. Mirrored first, the resized pixels differ by rounding (1.5e-6 here).
    np.testing.assert_array_equal(outputs, expected)
    assert np.abs(outputs - model.predict(images, verbose=0)).max() > 1e-4, "the mirror changed nothing"

    # Keras's layers and ops only: a process without simpsons loads it in safe mode, to the same outputs
    flipped.save(tmp_path / "flipped.keras")
    np.save(tmp_path / "images.npy", images)
    probe = (
        "import sys, keras, numpy as np\n"
        "model = keras.saving.load_model('flipped.keras', safe_mode=True)\n"
        "np.save('outputs.npy', model.predict(np.load('images.npy'), verbose=0))\n"
        "print('simpsons imported:', any(name.startswith('simpsons') for name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "simpsons imported: False" in result.stdout
    np.testing.assert_allclose(np.load(tmp_path / "outputs.npy"), outputs, atol=1e-6)


def test_without_a_terminal_extraction_says_how_far_it_is_every_ten_seconds(caplog):
    """No bar where there is no terminal (a log file, Slurm's output): a line every 10 s instead,
    none at the end (the feature cache's own line follows). A clock the test moves: 4 s a batch."""
    now = [0.0]
    caplog.set_level(logging.INFO, logger="simpsons.features")
    with Progress(400, "train features", terminal=False, clock=lambda: now[0]) as progress:
        for _ in range(10):
            now[0] += 4.0
            progress.update(40)
    said = [record.getMessage() for record in caplog.records if record.name == "simpsons.features"]
    assert said == [f"train features: {n}/400 images (10 img/s)" for n in (120, 240, 360)]


def test_in_a_terminal_extraction_shows_a_bar_that_leaves_no_line_behind(capsys):
    with Progress(64, "val features", terminal=True) as progress:
        for _ in range(4):
            progress.update(16)
    written = capsys.readouterr().err
    assert "val features" in written and "/64" in written  # the bar
    assert "\n" not in written  # erased when done: no blank or stale line under it
