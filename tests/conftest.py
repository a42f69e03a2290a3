"""Shared fixtures: real JPEG folders, a private SQLite MLflow store, and the CLI as a subprocess."""

from __future__ import annotations

# First, before keras imports TensorFlow: what every command does (TF_CPP_MIN_LOG_LEVEL, TensorFlow's
# start-up lines filtered: simpsons/startup.py), in the test processes too.
from simpsons import startup

startup.prepare_process()

# isort: split
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import keras
import leftovers
import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from quick_tier import (  # noqa: F401
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
from services.postgres import postgres, postgres_cluster  # noqa: F401 (the session's PostgreSQL, for every module)

from simpsons import settings
from simpsons.config import CONF_DIR, PROJECT_ROOT
from simpsons.demo_data import write_demo_data
from simpsons.settings import EnsembleSettings, TrainSettings
from simpsons.tracking import schema
from simpsons.tracking import store as tracking_store

SHARED = PROJECT_ROOT.parent / "shared"
SIMPSONS_MINI = SHARED / "data" / "simpsons-mini"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

# Random weights and small batches; with TINY_MODEL's choices, the smallest real model there is:
# MobileNet v1 at width 0.25 and 32 px.
TINY = ["backbone.weights=null", "batch_size=16", "optimizer.lr=1e-3"]
TINY_MODEL = ["backbone=mobilenet", "backbone.kwargs.alpha=0.25", "image_size=32", *TINY]
# A random MobileNet's pooled features are all about 1e-17: its softmax hardly depends on the image,
# so a reloaded model matching it proves little. Random VGG16 features do differ (std ~0.01), at 32 px.
IMAGE_SENSITIVE_MODEL = ["backbone=vgg16", "image_size=32", *TINY]

settings.register()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Once per test run (in xdist's controller, not in each worker): stop the servers that a test
    run killed before its teardown left running (tests/leftovers.py)."""
    if hasattr(session.config, "workerinput"):
        return
    stopped = leftovers.stop_leftovers()
    if stopped:
        print(
            f"\nstopped {len(stopped)} test server(s) left by a killed test run: {', '.join(stopped)}", file=sys.stderr
        )


@pytest.fixture(autouse=True)
def float32_after_each_test() -> Iterator[None]:
    """A job sets Keras's global dtype policy (precision=...); tests that follow build float32 models."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests and the CLIs they start cache features in a temporary folder, not the project's."""
    os.environ["SIMPSONS_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/train/<class>/*.jpg (12 per class) and <dir>/test/<class>/*.jpg (4 per class)."""
    directory = tmp_path_factory.mktemp("images") / "shapes"
    write_demo_data(directory, train_per_class=12, test_per_class=4, size=48, seed=1)
    return directory


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's schema, made once per test process: MLflow's migrations
    cost each new store a second and more (4 s on a loaded machine), which the tests do not test."""
    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)  # makes the schema; no URI made MLflow's
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, store_template: Path) -> str:
    """An empty SQLite store of this test's own (a copy of store_template, its Default experiment's
    artifacts in this test's folder), also made this process's MLflow tracking URI. A test of how a
    store is first set up takes fresh_tracking_uri instead."""
    path = tmp_path / "mlflow.db"
    with (
        contextlib.closing(sqlite3.connect(store_template)) as template,
        contextlib.closing(sqlite3.connect(path)) as copy,
    ):
        template.backup(copy)  # whole, WAL included, though this process's MLflow holds the template open
        copy.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [str(tmp_path / "mlruns" / "0")]
        )
        copy.commit()
    uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture
def fresh_tracking_uri(tmp_path: Path) -> str:
    """The URI of a SQLite store not made yet (the first command makes it), made this process's MLflow tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


@dataclass(frozen=True)
class Store:
    uri: str
    sweep: str  # the parent run id of a sweep of four runs
    children: list[str]
    outsider: str  # a run outside the sweep, with another validation split
    images: Path


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, image_folders: Path) -> Store:
    """Four tiny runs nested under one sweep, and one run with another split outside it, for the
    tests that read runs back (ensembles, predict, report); built once per test process."""
    from simpsons.training.recipe import JobContext, train

    # Set up as every command does (WAL mode): a command in a subprocess must not switch the journal
    # mode under this process's open connections, which then read the database as malformed.
    uri = tracking_store.configure(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")
    client = MlflowClient(uri)
    experiment = client.create_experiment("simpsons", artifact_location=(Path(uri[10:]).parent / "mlruns").as_uri())
    sweep_dir = tmp_path_factory.mktemp("multirun")
    parent = client.create_run(
        experiment, run_name="sweep", tags={schema.RUN_TYPE: schema.SWEEP, schema.SWEEP_ID: "fixture"}
    ).info.run_id
    base = [*folder_data(image_folders), "epochs=2", f"tracking.uri={uri}"]
    configs = [
        TINY_MODEL,
        [*TINY_MODEL, "dropout=0.1", "optimizer=rmsprop"],
        ["backbone=mobilenetv2", "backbone.kwargs.alpha=0.35", "image_size=32", *TINY],
        [*TINY_MODEL, "optimizer.lr=1e-2", "seed=7"],
    ]
    children = [
        train(train_settings([*s, *base]), JobContext([], sweep_dir=sweep_dir, sweep_id="fixture")) for s in configs
    ]
    client.set_terminated(parent)
    outsider = train(train_settings([*TINY_MODEL, *base, "data.split_seed=7"]), JobContext([]))
    return Store(uri, parent, children, outsider, image_folders)


@pytest.fixture
def store(trained_store: Store) -> Store:
    """trained_store, made this process's MLflow tracking URI (another test may have changed it)."""
    mlflow.set_tracking_uri(trained_store.uri)
    return trained_store


@dataclass(frozen=True)
class FlipPair:
    """Two cached runs of one config but for tta, in a store and a feature cache of their own."""

    uri: str
    plain: str  # tta=none
    flipped: str  # tta=flip: the same features and head, its outputs averaged with the mirror images'
    overrides: list[str]  # the config both share, but for the store
    cache_dir: Path
    entries: list[set[str]]  # the cache's entries after each of the two runs
    images: Path


@pytest.fixture(scope="session")
def flip_pair(tmp_path_factory: pytest.TempPathFactory, image_folders: Path) -> FlipPair:
    """tta=none, then tta=flip on an image-sensitive model (a flip must change its softmax), for the
    tests of test-time augmentation: the cache, the logged model, predict and ensembles."""
    from simpsons.training.recipe import JobContext, train

    root = tmp_path_factory.mktemp("flip")
    uri = tracking_store.configure(f"sqlite:///{root / 'mlflow.db'}")
    cache = root / "cache"
    overrides = [*IMAGE_SENSITIVE_MODEL, *folder_data(image_folders), "epochs=2", f"cache_dir={cache}"]
    runs, entries = [], []
    for tta in ("none", "flip"):
        runs.append(train(train_settings([*overrides, f"tracking.uri={uri}", f"tta={tta}"]), JobContext([])))
        entries.append({path.name for path in cache.glob("*.npy")})
    return FlipPair(uri, *runs, overrides, cache, entries, image_folders)


@pytest.fixture
def flips(flip_pair: FlipPair) -> FlipPair:
    """flip_pair, made this process's MLflow tracking URI (another test may have changed it)."""
    mlflow.set_tracking_uri(flip_pair.uri)
    return flip_pair


def ensemble_config(store: Store | FlipPair, *overrides: str) -> EnsembleSettings:
    """conf/ensemble.yaml on `store`, with the overrides (`key=value`, the value taken as it is: a
    filter may hold spaces and quotes), as `python -m simpsons.ensemble` composes it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="ensemble", overrides=[f"tracking.uri={store.uri}"])
    return EnsembleSettings.from_config(OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides))))


def folder_data(images: Path) -> list[str]:
    return ["data=folder", f"data.root={images / 'train'}", f"data.test_root={images / 'test'}"]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train_settings(overrides: list[str]) -> TrainSettings:
    """conf/train.yaml with the overrides, as the task function of `python -m simpsons.train` gets it."""
    return TrainSettings.from_config(compose_train(overrides))


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`python -m simpsons.train ARGS` in `cwd`, as a user would type it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "simpsons.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


COMMAND_SECONDS = 900  # a command of a test that talks to a server, on a loaded machine


def clean_environment() -> dict[str, str]:
    """This process's environment without any MLflow setting (as a new shell would have it)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PGPASSWORD"}


def run_module(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m simpsons.MODULE ARGS` in `cwd` with `env`, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", f"simpsons.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(command: list[str], url: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> Iterator[str]:
    """Run a server on 127.0.0.1 until the block ends; yields `url` once it answers."""
    log = cwd / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    with leftovers.recorded(server.pid, leftovers.GROUP):  # until it is stopped
        try:
            yield _answering(server, command, url, log, timeout)
        finally:
            stop_group(server)


def _answering(server: subprocess.Popen, command: list[str], url: str, log: Path, timeout: float) -> str:
    """`url`, once the server answers there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command[:3]} did not answer at {url}: {log.read_text()[-3000:]}")
            time.sleep(0.5)


def stop_group(process: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM to the process's group (a server and its workers), SIGKILL once `grace` s have passed:
    a loaded machine may take long to shut a server down, which is no test's failure."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mlflow_cli() -> str:
    return str(Path(sys.executable).with_name("mlflow"))


@contextmanager
def mlflow_ui(cwd: Path) -> Iterator[str]:
    """A real `mlflow ui`, started with no flags in `cwd` as the README says; yields its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with serving([mlflow_cli(), "ui", "--port", str(port)], f"http://127.0.0.1:{port}/health", cwd, env):
        yield f"http://127.0.0.1:{port}"


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def requires(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (shared data of this workplace)")


T = TypeVar("T")


def poll(
    condition: Callable[[], T],
    what: str,
    deadline: float,
    process: subprocess.Popen | None = None,
    every: float = 0.2,
) -> T:
    """`condition()` once it is truthy; fails if `process` ends first, or at the deadline (a hang)."""
    end = time.monotonic() + deadline
    while not (value := condition()):
        if process is not None and process.poll() is not None:
            pytest.fail(f"the command ended ({process.returncode}) before {what}")
        if time.monotonic() > end:
            pytest.fail(f"no {what} after {deadline:g} s")
        time.sleep(every)
    return value


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m simpsons.train ARGS` in the background, without the environment's tracking URI,
    its output in cwd/stdout.txt and cwd/stderr.txt."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with (cwd / "stdout.txt").open("w") as stdout, (cwd / "stderr.txt").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "simpsons.train", *args], cwd=cwd, env=env, stdout=stdout, stderr=stderr
        )


def help_imports(module: str) -> tuple[set[str], str]:
    """The modules `python -m MODULE --help` imports (Python's -X importtime log), and what it printed."""
    command = [sys.executable, "-X", "importtime", "-m", module, "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return imported, result.stdout
