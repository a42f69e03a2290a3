"""Bad values fail before anything starts: one line each, exit 2, nothing in MLflow.

The rules are the settings' (simpsons/settings/), the world's checks preflight's, and the jobs of
a sweep are composed by simpsons/hydra_jobs.py. The CLI runs as a user would run it, on a fresh
SQLite store in tmp_path; a config that passed these checks would train the tiny model on the tiny
image folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_MODEL, folder_data, free_port, run_cli, train_settings
from hydra import initialize_config_dir

from simpsons import preflight
from simpsons.config import CONF_DIR
from simpsons.data import load_dataset
from simpsons.errors import ConfigError, DataError
from simpsons.tracking import store

STORE = "mlflow.db"  # in each test's tmp_path, its working directory
MISSING = "{tmp}/no-such-weights.h5"

BAD_INPUTS = [  # (test id, overrides, how the one line starts); {tmp}: the test's folder, {port}: a closed port
    ("backbone", ["backbone=resnet9000"], "unknown backbone 'resnet9000'; choose one of: convnext_tiny, densenet201,"),
    ("optimizer", ["optimizer=adamax"], "unknown optimizer 'adamax'; choose one of: adam, adamw, rmsprop, sgd"),
    (
        "variant",
        ["-m", "experiment=options_mini", "variant=baseline,tta,nope"],
        "unknown variant 'nope'; choose one of: baseline, class_weight, cosine, early_stopping, finetune,",
    ),
    ("size", ["image_size=16"], "image_size=16 is below the minimum of backbone 'mobilenet'; use image_size >= 32"),
    (
        "+typo",
        ["+typo=1"],
        "unknown key 'typo' (+typo=1); the top level takes: augment, backbone, backend, batch_size,",
    ),
    ("+nested", ["+optimizer.lrr=1"], "unknown key 'optimizer.lrr' (+optimizer.lrr=1); did you mean optimizer.lr?"),
    ("typo", ["tpyo=1"], "unknown key 'tpyo' (tpyo=1); the top level takes: augment,"),
    ("dropout", ["dropout=1.5"], "dropout=1.5 is invalid; expected a number in [0, 1)"),
    ("epochs", ["epochs=0"], "epochs=0 is invalid; expected an integer >= 1"),
    ("precision", ["precision=fp8"], "precision='fp8' is invalid; expected one of float32, mixed_float16,"),
    ("lr", ["optimizer.lr=0"], "optimizer.lr=0 is invalid; expected a positive number"),
    ("class", ["optimizer.keras_class=Adamax9"], "optimizer.keras_class='Adamax9' is not a keras.optimizers class;"),
    ("xla", ["jit_compile=true", "deterministic=true"], "jit_compile=true needs deterministic=false"),
    ("class weight", ["class_weight=inverse"], "class_weight='inverse' is invalid; expected none or balanced"),
    ("smoothing", ["label_smoothing=1"], "label_smoothing=1 is invalid; expected a number in [0, 1)"),
    ("scheduler", ["scheduler=linear"], "unknown scheduler 'linear'; choose one of: constant, cosine, plateau"),
    ("swept scheduler", ["-m", "scheduler=cosine,step"], "unknown scheduler 'step'; choose one of: constant, cosine,"),
    ("plateau", ["scheduler=plateau", "scheduler.factor=2"], "scheduler.factor=2 is invalid; expected a number in (0,"),
    ("cosine", ["-m", "scheduler=cosine", "scheduler.alpha=0.5,2"], "scheduler.alpha=2 is invalid; expected a number"),
    ("gpu key", ["gpu.grow=true"], "unknown key 'gpu.grow' (gpu.grow=true); gpu takes: memory_growth, one_per_job"),
    ("gpu value", ["-m", "gpu.memory_growth=maybe,true"], "gpu.memory_growth='maybe' is invalid; expected true or"),
    ("weights", [f"backbone.weights={MISSING}"], f"backbone.weights='{MISSING}' is not a file; use imagenet, null,"),
    (
        "kaggle",
        ["data=simpsons", "data.dir={tmp}/kaggle"],
        "data.root='{tmp}/kaggle/simpsons_dataset' is not a folder;",
    ),
    ("layout", ["data.test_layout=nested"], "data.test_layout='nested' is unknown; use one of: folders, flat"),
    ("tta", ["-m", "tta=none,mirror"], "tta='mirror' is unknown; use one of: none, flip"),
    (
        "test root",
        ["data.test_root={tmp}/nope"],
        "data.test_root='{tmp}/nope' is not a folder; set data.test_root=null",
    ),
    ("scheme", ["tracking.uri=garbage://x"], "tracking.uri='garbage://x' is not a supported store; use sqlite:///"),
    (
        "server",
        ["tracking.uri=http://127.0.0.1:{port}"],
        "tracking.uri=http://127.0.0.1:{port}: no MLflow server answers",
    ),
    (
        "database",
        ["tracking.uri=postgresql://u@127.0.0.1:{port}/db"],
        "tracking.uri=postgresql://u@127.0.0.1:",
    ),
    (
        "database password",
        ["tracking.uri=postgresql://u:secret@127.0.0.1:{port}/db"],
        "tracking.uri=postgresql://u:***@127.0.0.1:{port}/db has a password in it; leave it out and give it to",
    ),
    ("store", ["tracking.uri=sqlite:////etc/hostname/x.db"], "tracking.uri=sqlite:////etc/hostname/x.db: cannot write"),
    ("cache", ["cache_dir=/etc/hostname/sub"], "cache_dir='/etc/hostname/sub' cannot be written (/etc/hostname is not"),
    ("sweep", ["-m", "image_size=16,32"], "image_size=16 is below the minimum of backbone 'mobilenet'; use image_size"),
    ("retry", ["tracking.retry_seconds=2"], "tracking.retry_seconds=2 is invalid; expected an integer from 5 to 900"),
    ("monitor", ["monitor=val_f1"], "monitor='val_f1' is invalid; expected one of val_accuracy, val_loss"),
    (
        "early stopping",
        ["-m", "early_stopping.patience=2,-1"],
        "early_stopping.patience=-1 is invalid; expected null (off) or an integer >= 0",
    ),
]


def cli_args(overrides: list[str], tmp_path: Path, images: Path) -> list[str]:
    """The tiny config on the tiny images, its store in tmp_path, then `overrides` (which win)."""
    flags, values = [o for o in overrides if o.startswith("-")], [o for o in overrides if not o.startswith("-")]
    data = [] if "data=simpsons" in overrides else folder_data(images)
    return [*flags, *TINY_MODEL, *data, f"tracking.uri=sqlite:///{tmp_path / STORE}", "epochs=1", *values]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "error: " in line]


def assert_nothing_created(cwd: Path) -> None:
    """No store, no run folder: the checks ran before Hydra, MLflow or the sweep made anything."""
    assert not (cwd / STORE).exists()
    assert not (cwd / "multirun").exists() and not (cwd / "outputs").exists()


# Through the command, one case of each stage that judges a command line: the password check, the
# group choices before Hydra composes, a value's rule, a sweep's jobs, the data folder and a folder
# probe. Every case is judged in-process by the same functions (test_each_bad_value_is_...), at a
# fraction of a Python start-up each.
CLI_CASES = [case for case in BAD_INPUTS if case[0] in {"database password", "backbone", "dropout", "sweep", "kaggle"}]


def command_line_errors(args: list[str]) -> list[str]:
    """The lines `python -m simpsons.train ARGS` exits 2 with, from the functions it runs in turn (train.main):
    the password check, the command line before Hydra composes it, then every job (the sweep callback)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from simpsons import credentials, hydra_jobs

    if password := credentials.arguments_error(args):
        return [password]
    if errors := hydra_jobs.command_line_errors(args):
        return errors
    mode = RunMode.MULTIRUN if "-m" in args else RunMode.RUN
    values = [a for a in args if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return hydra_jobs.job_errors(loader.load_configuration("train", [f"hydra.mode={mode.name}", *values], mode))


# The quick tier judges one case of each stage (as CLI_CASES, plus a type, a key and a folder probe);
# the whole suite, every case: each composes its jobs with Hydra, about a second apiece on 2 cores.
QUICK_STAGES = {"database password", "backbone", "dropout", "sweep", "kaggle", "typo", "gpu value", "store"}
JUDGED = [
    pytest.param(*case[1:], id=case[0], marks=() if case[0] in QUICK_STAGES else pytest.mark.slow)
    for case in BAD_INPUTS
]


@pytest.mark.parametrize("overrides,message", JUDGED)
def test_each_bad_value_is_one_line_from_the_checks_the_command_runs(overrides, message, image_folders, tmp_path):
    port = free_port()  # nothing listens there
    filled = [o.format(tmp=tmp_path, port=port) for o in overrides]
    [line] = command_line_errors(cli_args(filled, tmp_path, image_folders))
    assert line.startswith(message.format(tmp=tmp_path, port=port)), line
    assert "secret" not in line
    assert_nothing_created(tmp_path)
    if "data=simpsons" in overrides:
        assert "experiment=demo" in line


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
@pytest.mark.parametrize("overrides,message", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_a_bad_value_fails_before_anything_starts_in_one_line(overrides, message, image_folders, tmp_path):
    port = free_port()  # nothing listens there
    filled = [o.format(tmp=tmp_path, port=port) for o in overrides]
    result = run_cli(cli_args(filled, tmp_path, image_folders), cwd=tmp_path, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    [line] = error_lines(result)
    assert line.startswith(f"error: {message.format(tmp=tmp_path, port=port)}"), line
    assert "Traceback" not in output and "secret" not in output
    assert_nothing_created(tmp_path)
    if "data=simpsons" in overrides:
        assert "experiment=demo" in line


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
def test_two_bad_values_of_a_sweep_are_two_lines_before_its_first_job(image_folders, tmp_path):
    overrides = ["-m", "image_size=16,32", "dropout=1.5,0.2"]  # four jobs, two bad values
    result = run_cli(cli_args(overrides, tmp_path, image_folders), cwd=tmp_path, timeout=60)

    assert result.returncode == 2, result.stderr[-3000:]
    assert sorted(error_lines(result)) == [
        "error: dropout=1.5 is invalid; expected a number in [0, 1)",
        "error: image_size=16 is below the minimum of backbone 'mobilenet'; use image_size >= 32",
    ]
    assert "Traceback" not in result.stderr
    assert_nothing_created(tmp_path)


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
@pytest.mark.parametrize("flags,code", [(["-m", "image_size=16,32"], 2), (["--help"], 0)], ids=["sweep", "help"])
def test_the_sweep_driver_checks_without_loading_tensorflow(flags, code, image_folders, tmp_path):
    args = cli_args(flags, tmp_path, image_folders) if code else flags
    command = [sys.executable, "-X", "importtime", "-m", "simpsons.train", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert result.returncode == code, result.stderr[-3000:]
    assert len(error_lines(result)) == (1 if code else 0)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "hydra" in imported and ("mlflow" in imported) == bool(code)
    assert not imported & {"tensorflow", "keras"}


def test_a_job_started_directly_checks_first_and_creates_nothing(image_folders, tmp_path):
    from simpsons.training.recipe import JobContext, train  # TensorFlow: the job may load it

    store_file = tmp_path / STORE
    overrides = cli_args(["dropout=1.5", "epochs=0", f"tracking.uri=sqlite:///{store_file}"], tmp_path, image_folders)
    with pytest.raises(ConfigError) as raised:
        train(train_settings(overrides), JobContext(overrides=[]))
    assert str(raised.value) == (  # one line, as the job logs it
        "dropout=1.5 is invalid; expected a number in [0, 1); epochs=0 is invalid; expected an integer >= 1"
    )
    assert not store_file.exists()


# A read-only store folder: root writes anywhere but on a read-only mount, so the CLI runs as nobody.


def as_unprivileged_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m simpsons.train ARGS` as user nobody when the tests run as root, else as is.

    The venv's interpreter may live where nobody cannot read (a pyenv under /root); then a system
    interpreter of the same version runs it, with the venv's packages added as a site directory.
    """
    if os.geteuid() != 0:
        return run_cli(args, cwd=cwd, timeout=60)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to run the CLI as an unprivileged user")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    boot = (
        "import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
        "runpy.run_module('simpsons.train', run_name='__main__', alter_sys=True)"
    )
    site_packages = sysconfig.get_paths()["purelib"]
    home = cwd.with_name("home")  # writable by anyone: MLflow may keep its telemetry settings there
    home.mkdir(mode=0o777, exist_ok=True)
    home.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"HOME": str(home)}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys([sys.executable, shutil.which(version) or version, f"/usr/bin/{version}"]):
        probe = [*nobody, python, "-c", f"{boot.split(';')[0]}; site.addsitedir({site_packages!r}); import simpsons"]
        if subprocess.run(probe, cwd=cwd, env=env, capture_output=True).returncode == 0:
            command = [*nobody, python, "-c", boot, site_packages, *args]
            return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    pytest.skip(f"running as root, and user nobody can run no {version} with this venv's packages")


@pytest.fixture
def world_readable_folder() -> Iterator[Path]:
    """A folder user nobody can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="simpsons-checks-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
def test_a_store_in_a_read_only_folder_fails_in_one_line(world_readable_folder):
    work, read_only, train = (world_readable_folder / name for name in ("work", "read-only", "train"))
    for folder in (work, read_only, train):
        folder.mkdir()
    work.chmod(0o777)
    read_only.chmod(0o555)
    uri = f"sqlite:///{read_only / STORE}"
    args = [*TINY_MODEL, "data=folder", f"data.root={train}", f"cache_dir={work / 'cache'}", f"tracking.uri={uri}"]

    result = as_unprivileged_user(args, cwd=work)

    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: tracking.uri={uri}: cannot write in {read_only} ({read_only} is not writable); "
        "use a store in a writable folder"
    ]
    assert list(read_only.iterdir()) == [] and list(work.iterdir()) == []


# Checks without the CLI.


def test_the_jobs_of_a_sweep_probe_each_folder_and_store_once(image_folders, fresh_tracking_uri, tmp_path):
    base = [*TINY_MODEL, *folder_data(image_folders), f"tracking.uri={fresh_tracking_uri}", f"cache_dir={tmp_path}"]
    probed: dict = {}
    found = [preflight.errors(train_settings([*base, f"dropout={dropout}"]), probed) for dropout in (0.1, 0.2, 1.5)]

    assert found == [[], [], ["dropout=1.5 is invalid; expected a number in [0, 1)"]]
    assert sorted(probe.__name__ for probe, _ in probed) == [
        "_cache_dir_errors",
        "_data_root_errors",
        "_store_errors",
        "backend_errors",
    ]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_job_is_refused_in_one_line_with_every_reason(tmp_path):
    settings = train_settings(["data=folder", f"data.root={tmp_path / 'none'}", "epochs=0", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError) as raised:
        preflight.raise_errors(settings)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("epochs=0 is invalid; expected an integer >= 1; data.root=")
    assert "is not a folder; point data.root at a folder of <class>/<image> files" in message


def test_a_store_check_creates_nothing(tmp_path):
    store.check(f"sqlite:///{tmp_path / 'new' / 'folders' / STORE}")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(ConfigError, match=r"notes.db: not a usable SQLite database"):
        store.check(f"sqlite:///{tmp_path / 'notes.db'}")


def test_a_store_that_never_answers_fails_within_the_deadline(monkeypatch):
    monkeypatch.setattr(store, "PROBE_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"tracking.uri=http://host: no answer within 1.2 s"):
        store._within_deadline("http://host", lambda uri: time.sleep(30))
    assert time.monotonic() - started < 2


# A data error: found when a job reads its data, still one line.


def test_a_class_without_usable_images_lists_its_skipped_files(tmp_path, image_folders):
    root = tmp_path / "train"
    shutil.copytree(image_folders / "train", root)
    (root / "maggie").mkdir()
    for i in range(13):
        (root / "maggie" / f"pic_{i:02d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    with pytest.raises(DataError) as raised:
        load_dataset(train_settings(["data=folder", f"data.root={root}"]).data)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"class 'maggie' in '{root}' has no usable images: its 13 file(s) are not decodable")
    assert message.endswith(", ".join(f"maggie/pic_{i:02d}.jpg" for i in range(10)) + " and 3 more")


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
def test_a_class_whose_files_pillow_cannot_open_fails_before_tensorflow_loads(image_folders, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(image_folders / "train", root)
    for image in (root / "red_circle").iterdir():
        image.write_bytes(b"not an image")
    args = cli_args([f"data.root={root}"], tmp_path, image_folders)
    command = [sys.executable, "-X", "importtime", "-m", "simpsons.train", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stderr[-3000:]
    [line] = error_lines(result)
    assert line.startswith(f"error: class 'red_circle' in '{root}' has no usable images: its 12 file(s)"), line
    assert line.endswith(", red_circle/img_0009.jpg and 2 more")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"tensorflow", "keras"}
    assert_nothing_created(tmp_path)


@pytest.mark.slow  # a Python subprocess per case, each loading Hydra and MLflow: seconds apiece
def test_a_staleness_limit_within_two_heartbeats_is_refused(image_folders, tmp_path):
    args = cli_args(["tracking.heartbeat_seconds=30", "tracking.stale_after=45"], tmp_path, image_folders)
    result = run_cli(args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result) == [
        "error: tracking.stale_after=45 is within two heartbeats (tracking.heartbeat_seconds=30); "
        "use a stale_after above twice the heartbeat"
    ]
    assert_nothing_created(tmp_path)
