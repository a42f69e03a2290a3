"""Keras's backend as a setting: a JAX job imports no TensorFlow, and models move between backends.

The JAX jobs run in subprocesses (this test process runs Keras on TensorFlow, conftest.py), on real
JPEGs, with tiny random models; their models are loaded back here on TensorFlow, and a TensorFlow
run's model is loaded on JAX in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import (
    IMAGE_SENSITIVE_MODEL,
    folder_data,
    free_port,
    get_json,
    mlflow_cli,
    serving,
    train_settings,
)
from mlflow.tracking import MlflowClient

from simpsons import images, pipeline, preflight
from simpsons.errors import ConfigError
from simpsons.settings import BACKENDS, rules
from simpsons.tracking import reader, schema
from simpsons.tracking import store as tracking_store
from simpsons.training import backend

# A command, run as `python -m <module> ...`, then the top-level packages it loaded, written to a file.
RUN_AND_LIST_MODULES = """
import atexit, json, runpy, sys
out, module = sys.argv.pop(1), sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# A logged model loaded with MLflow's pyfunc on the backend KERAS_BACKEND names; its softmax on images.
PREDICT = """
import sys
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], np.asarray(model.predict(np.load(sys.argv[2]))))
import keras
print(keras.config.backend(), "tensorflow" in sys.modules)
"""


@dataclass(frozen=True)
class JaxSweep:
    uri: str
    runs: dict[str, str]  # run id by its `cache` param: "True" (on cached features) and "False" (on images)
    modules: list[str]  # the top-level packages the job process loaded
    images: Path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "KERAS_BACKEND"}
    return env | extra


@pytest.fixture(scope="module")
def jax_sweep(tmp_path_factory: pytest.TempPathFactory, image_folders: Path) -> JaxSweep:
    """A sweep on JAX, cache=true,false, of an image-sensitive model: its runs and what its process imported."""
    root = tmp_path_factory.mktemp("jax")
    uri = tracking_store.configure(f"sqlite:///{root / 'mlflow.db'}")
    listed = root / "modules.json"
    args = ["-m", "cache=true,false", "backend=jax", f"cache_dir={root / 'cache'}", f"tracking.uri={uri}"]
    args += [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), "epochs=1"]
    command = [sys.executable, "-c", RUN_AND_LIST_MODULES, str(listed), "simpsons.train", *args]
    result = subprocess.run(command, cwd=root, env=environment(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("simpsons").experiment_id
    found = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.TRAIN}'")
    runs = {run.data.params["cache"]: run.info.run_id for run in found}
    return JaxSweep(uri, runs, json.loads(listed.read_text()), image_folders)


def test_the_backend_setting_defaults_to_tensorflow_and_names_what_it_accepts():
    assert train_settings([]).backend == "tensorflow"
    assert BACKENDS == ("tensorflow", "jax")
    assert "backend='torch' is invalid; expected one of tensorflow, jax" in train_settings(["backend=torch"]).errors()


def test_the_backend_is_part_of_a_run_s_identity():
    tensorflow, jax = train_settings([]).identity(), train_settings(["backend=jax"]).identity()
    assert (tensorflow["backend"], jax["backend"]) == ("tensorflow", "jax")
    assert {k: v for k, v in tensorflow.items() if k != "backend"} == {k: v for k, v in jax.items() if k != "backend"}


def test_a_process_runs_one_backend_and_says_so_in_one_line():
    """This test process runs Keras on TensorFlow (conftest.py): a JAX job cannot start in it."""
    with pytest.raises(ConfigError) as raised:
        backend.select(train_settings(["backend=jax"]))
    assert str(raised.value).startswith("backend='jax', but Keras already runs on 'tensorflow' in this process")
    assert "\n" not in str(raised.value) and os.environ.get("KERAS_BACKEND") != "jax"
    backend.select(train_settings([]))  # the same backend: nothing to say


def test_a_backend_that_is_not_installed_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(rules.BACKEND_PACKAGES, "jax", ("no_such_package_here", 'pip install -e ".[jax]"'))
    assert rules.backend_errors("tensorflow") == []
    [error] = [e for e in preflight.errors(train_settings(["backend=jax"])) if e.startswith("backend")]
    assert error == (
        'backend=jax needs no_such_package_here, which is not installed: pip install -e ".[jax]", '
        "or use backend=tensorflow"
    )


def test_pillow_reads_the_pixels_tf_data_reads(image_folders):
    """The JAX reader (Pillow, NumPy's bilinear resize) against the TensorFlow one (tf.data), on JPEGs."""
    from simpsons import tfdata

    paths = sorted(str(p) for p in (image_folders / "train").rglob("*.jpg"))[:8]
    labels = np.arange(len(paths), dtype=np.int32)
    for size in (32, 61, 150):  # smaller, not a divisor, and larger than the 48 px files
        [(expected, _)] = list(tfdata.image_dataset(paths, labels, size, len(paths)).as_numpy_iterator())
        [(pixels, read_labels)] = list(pipeline.in_order(pipeline.ImageBatches(paths, labels, size, len(paths))))
        np.testing.assert_allclose(pixels, expected, atol=1e-3)
        np.testing.assert_array_equal(read_labels, labels)
    assert pixels.dtype == np.float32


def test_image_batches_shuffle_by_seed_each_epoch_and_keep_every_image_once(image_folders):
    paths = sorted(str(p) for p in (image_folders / "train").rglob("*.jpg"))[:10]
    batches = pipeline.ImageBatches(paths, np.arange(10), 16, 4, shuffle_seed=3)
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert len(batches) == 3 and sorted(first) == sorted(second) == list(range(10))
    assert list(first) != list(second)
    again = pipeline.ImageBatches(paths, np.arange(10), 16, 4, shuffle_seed=3)
    assert list(np.concatenate([again[i][1] for i in range(len(again))])) == list(first)


@pytest.mark.slow  # JAX in a subprocess
def test_a_jax_sweep_cached_and_uncached_finishes_logs_its_backend_and_imports_no_tensorflow(jax_sweep):
    client = MlflowClient(jax_sweep.uri)
    assert set(jax_sweep.runs) == {"True", "False"}
    for cache, run_id in jax_sweep.runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["backend"] == "jax"
        assert run.data.tags[schema.FEATURE_CACHE] == ("miss" if cache == "True" else "off")
    assert "jax" in jax_sweep.modules and "keras" in jax_sweep.modules
    assert "tensorflow" not in jax_sweep.modules


@pytest.mark.slow  # JAX in a subprocess
def test_a_model_logged_on_jax_loads_and_predicts_on_tensorflow(jax_sweep):
    """Loaded here, on TensorFlow, each JAX run's model gives the softmax the run logged, to 1e-4."""
    mlflow.set_tracking_uri(jax_sweep.uri)
    client = MlflowClient(jax_sweep.uri)
    for run_id in jax_sweep.runs.values():
        logged = reader.outputs(run_id, "test")
        raw = np.stack([images.read_rgb(str(jax_sweep.images / "test" / n)).astype(np.float32) for n in logged.names])
        model = mlflow.pyfunc.load_model(reader.model_uri(client.get_run(run_id)))
        np.testing.assert_allclose(model.predict(raw), logged.probabilities, atol=1e-4)
    assert np.abs(logged.probabilities - logged.probabilities.mean(axis=0)).max() > 1e-3, "outputs ignore the image"


@pytest.mark.slow  # JAX in a subprocess
def test_a_model_logged_on_tensorflow_loads_and_predicts_on_jax(flips, tmp_path):
    """A TensorFlow run's model (conftest.flip_pair's plain run), loaded on JAX in a subprocess."""
    logged = reader.outputs(flips.plain, "test")
    raw = np.stack([images.read_rgb(str(flips.images / "test" / n)).astype(np.float32) for n in logged.names])
    np.save(tmp_path / "images.npy", raw)
    uri = reader.model_uri(MlflowClient(flips.uri).get_run(flips.plain))
    command = [sys.executable, "-c", PREDICT, uri, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")]
    env = environment(KERAS_BACKEND="jax", MLFLOW_TRACKING_URI=flips.uri)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["jax", "False"]  # on JAX, without TensorFlow
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), logged.probabilities, atol=1e-4)


@pytest.mark.slow  # a service: mlflow models serve, and JAX in a subprocess
def test_mlflow_models_serve_on_tensorflow_answers_a_jax_model_s_softmax(jax_sweep, tmp_path):
    mlflow.set_tracking_uri(jax_sweep.uri)  # reader.outputs reads this process's store (another test may have set one)
    run_id = jax_sweep.runs["True"]
    logged = reader.outputs(run_id, "test")
    raw = np.stack([images.read_rgb(str(jax_sweep.images / "test" / n)).astype(np.float32) for n in logged.names[:4]])
    uri = reader.model_uri(MlflowClient(jax_sweep.uri).get_run(run_id))
    answer = served_softmax(uri, raw, jax_sweep.uri, "tensorflow", tmp_path)
    np.testing.assert_allclose(answer, logged.probabilities[:4], atol=1e-4)


@pytest.mark.slow  # a service: mlflow models serve, on JAX
def test_mlflow_models_serve_on_jax_answers_a_tensorflow_model_s_softmax(flips, tmp_path):
    """The other way round: conftest.flip_pair's plain run, trained on TensorFlow, served on JAX."""
    logged = reader.outputs(flips.plain, "test")
    raw = np.stack([images.read_rgb(str(flips.images / "test" / n)).astype(np.float32) for n in logged.names[:4]])
    uri = reader.model_uri(MlflowClient(flips.uri).get_run(flips.plain))
    answer = served_softmax(uri, raw, flips.uri, "jax", tmp_path)
    np.testing.assert_allclose(answer, logged.probabilities[:4], atol=1e-4)


def served_softmax(model_uri: str, raw: np.ndarray, tracking_uri: str, backend: str, tmp_path: Path) -> np.ndarray:
    """What `mlflow models serve` of the model, with Keras on `backend`, answers for the images."""
    port = free_port()
    venv_bin = str(Path(mlflow_cli()).parent)  # `mlflow models serve` runs `uvicorn` from PATH
    env = environment(MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{venv_bin}:{os.environ['PATH']}", KERAS_BACKEND=backend)
    command = [mlflow_cli(), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1"]
    command += ["-p", str(port)]
    with serving(command, f"http://127.0.0.1:{port}/ping", tmp_path, env, timeout=300) as url:
        answer = get_json(url.replace("/ping", "/invocations"), {"inputs": raw.tolist()})
    return np.array(answer["predictions"])


@pytest.mark.slow  # JAX in subprocesses
def test_an_ensemble_and_predict_on_jax_import_no_tensorflow_and_give_the_logged_softmax(jax_sweep, tmp_path):
    """The JAX sweep's two runs averaged by `simpsons.ensemble` with KERAS_BACKEND=jax, then the
    ensemble's model asked by `simpsons.predict` on JAX: neither process loads TensorFlow, and predict
    gives each test image the softmax the ensemble logged for it, to 1e-4."""
    listed = tmp_path / "modules.json"
    args = [f"tracking.uri={jax_sweep.uri}", "register=false"]
    command = [sys.executable, "-c", RUN_AND_LIST_MODULES, str(listed), "simpsons.ensemble", *args]
    result = subprocess.run(command, cwd=tmp_path, env=environment(KERAS_BACKEND="jax"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow" not in json.loads(listed.read_text())
    client = MlflowClient(jax_sweep.uri)
    experiment = client.get_experiment_by_name("simpsons").experiment_id
    [ensemble] = client.search_runs([experiment], f"tags.`{schema.RUN_TYPE}` = '{schema.ENSEMBLE}'")
    assert ensemble.info.status == "FINISHED"
    mlflow.set_tracking_uri(jax_sweep.uri)
    logged = reader.outputs(ensemble.info.run_id, "test")
    classes = reader.class_names(ensemble)
    files = [str(jax_sweep.images / "test" / name) for name in logged.names]

    listed.unlink()
    args = ["--run", ensemble.info.run_id, "--json", "--top-k", str(len(classes)), "--tracking-uri", jax_sweep.uri]
    command = [sys.executable, "-c", RUN_AND_LIST_MODULES, str(listed), "simpsons.predict", *args, *files]
    result = subprocess.run(command, cwd=tmp_path, env=environment(KERAS_BACKEND="jax"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow" not in json.loads(listed.read_text())
    predicted = json.loads(result.stdout)["predictions"]
    assert [entry["file"] for entry in predicted] == files
    for entry, expected in zip(predicted, logged.probabilities, strict=True):
        softmax = {top["class"]: top["probability"] for top in entry["top"]}
        np.testing.assert_allclose([softmax[name] for name in classes], expected, atol=1e-4)
