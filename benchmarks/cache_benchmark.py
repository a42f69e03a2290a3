"""Feature-cache benchmark: the same 4-config x 5-epoch sweep without and with the cache.

    python benchmarks/cache_benchmark.py [--data ../shared/data/simpsons-mini] [--backbone resnet50v2]
                                         [--image-size 150] [--epochs 5]
                                         [--precision float32] [--jit-compile auto]

Prints wall seconds of both sweeps and their ratio, feature-extraction images/s (cold cache),
the backbone's images/s with the same code on the same images preloaded in memory (the ceiling
for extraction), and the peak RSS of one cached run on the data set and on the same images
repeated 10 times.
Everything goes to a temporary folder: its own MLflow store and its own feature cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["optimizer=adam,rmsprop", "dropout=0.2,0.5"]


def run_train(args: list[str], workdir: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of `python -m simpsons.train ARGS` in a child process."""
    measure = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "simpsons.train", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"training failed:\n{result.stderr[-3000:]}")
    return seconds, int(result.stdout.strip().splitlines()[-1]) // 1024


def data_set(data: Path, scratch: Path) -> tuple[list[str], Path]:
    """Training overrides for --data and its folder of training images (<class>/<file>).

    Without the Kaggle layout at --data, a generated set of the same shape (1000 JPEGs of about
    the same size) in `scratch`.
    """
    if (data / "simpsons_dataset").is_dir():
        return ["data=simpsons", f"data.dir={data.resolve()}"], data / "simpsons_dataset"
    from simpsons.demo_data import write_demo_data

    print(f"{data} has no simpsons_dataset/: generating 4 classes x (200 train + 50 test) images of 400 px")
    write_demo_data(scratch, train_per_class=200, test_per_class=50, size=400, seed=0)
    return ["data=folder", f"data.root={scratch / 'train'}", f"data.test_root={scratch / 'test'}"], scratch / "train"


def repeated(train_root: Path, target: Path, repeat: int) -> Path:
    """<target>/<class>/<copy>_<name>: links to the training images, `repeat` times over."""
    for class_dir in sorted(train_root.iterdir()):
        folder = target / class_dir.name
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(repeat):
            for image in sorted(class_dir.iterdir()):
                (folder / f"{copy}_{image.name}").symlink_to(image)
    return target


def extraction_ceiling(train_args: list[str]) -> float:
    """Images/s of the job's own extraction code on the same splits, decoded into memory beforehand.

    A fresh model each time, as in a job, so both figures include the first call's tracing; the
    only difference left is reading and decoding the files, which the pipeline should hide.
    """
    import tensorflow as tf
    from hydra import compose, initialize_config_dir

    from simpsons import settings
    from simpsons.backbones import BackboneSpec
    from simpsons.config import CONF_DIR
    from simpsons.data import load_dataset
    from simpsons.features import extract
    from simpsons.model import build_classifier, feature_extractor
    from simpsons.pipeline import image_dataset
    from simpsons.training.runtime import seed_everything, set_precision, use_xla

    settings.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [arg for arg in train_args if not arg.startswith("cache")]
        cfg = settings.TrainSettings.from_config(compose(config_name="train", overrides=overrides))
    deterministic = seed_everything(cfg.seed, cfg.deterministic)  # as a job does, so XLA is on or off alike
    set_precision(cfg.precision)
    data = load_dataset(cfg.data)
    model = build_classifier(BackboneSpec.from_settings(cfg.backbone), cfg.image_size, len(data.class_names), 0.0)
    extractor = feature_extractor(model)
    extractor.jit_compile = use_xla(cfg.jit_compile, deterministic)
    seconds = images = 0
    for split in filter(None, (data.train, data.val, data.test)):
        decoded = image_dataset(split.paths, split.labels, cfg.image_size, cfg.batch_size)
        preloaded = [(tf.constant(batch), labels) for batch, labels in decoded.as_numpy_iterator()]
        started = time.perf_counter()
        extract(extractor, preloaded, len(split))
        seconds += time.perf_counter() - started
        images += len(split)
    return images / seconds


def extraction_rate(tracking_uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("simpsons").experiment_id
    runs = client.search_runs([experiment], "tags.feature_cache = 'miss'")
    import mlflow

    timings = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/timings.json")
    return timings["feature_extraction_images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "simpsons-mini")
    parser.add_argument("--backbone", default="resnet50v2")
    parser.add_argument("--image-size", type=int, default=150)  # conf/train.yaml's default
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="float32", help="float32 | mixed_float16 | mixed_bfloat16")
    parser.add_argument("--jit-compile", default="auto", help="XLA: auto (on with a GPU) | true | false")
    parser.add_argument("--skip-rss", action="store_true", help="leave out the peak-RSS runs")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data_args, train_root = data_set(args.data, work / "generated")
        common = [f"backbone={args.backbone}", "backbone.weights=null", f"image_size={args.image_size}"]
        common += [f"epochs={args.epochs}", *data_args]
        common += [f"precision={args.precision}", f"jit_compile={args.jit_compile}"]
        timings = {}
        for cache in ("false", "true"):
            uri = f"sqlite:///{work / f'cache-{cache}.db'}"
            extra = [f"cache={cache}", f"cache_dir={work / f'cache-{cache}'}", f"tracking.uri={uri}"]
            timings[cache], _ = run_train(["-m", *SWEEP, *common, *extra], work)
            print(f"sweep of 4 configs x {args.epochs} epochs, cache={cache}: {timings[cache]:.1f} s", flush=True)
        print(f"speed-up with the cache (cold): {timings['false'] / timings['true']:.1f}x")
        rate = extraction_rate(f"sqlite:///{work / 'cache-true.db'}")
        ceiling = extraction_ceiling(common)
        print(f"feature extraction: {rate:.1f} images/s; on the same images preloaded in memory: {ceiling:.1f} "
              f"images/s ({100 * rate / ceiling:.0f}% of that ceiling)")  # fmt: skip

        if not args.skip_rss:
            peak_rss_at_10x_data(train_root, work)
    print(f"({os.cpu_count()} CPU cores; {resource.getpagesize()} B pages)")


def peak_rss_at_10x_data(train_root: Path, work: Path) -> None:
    """Peak RSS (ru_maxrss of the child) of one cached run on the training images, and on them 10 times over."""
    small = ["backbone=mobilenet", "backbone.weights=null", "backbone.kwargs.alpha=0.25", "image_size=64"]
    rss = {}
    for repeat in (1, 10):
        root = repeated(train_root, work / f"x{repeat}", repeat)
        extra = [f"data.root={root}", "data=folder", "data.test_root=null", f"cache_dir={work / f'rss-{repeat}'}"]
        extra += ["epochs=1", f"tracking.uri=sqlite:///{work / 'rss.db'}"]
        seconds, rss[repeat] = run_train([*small, *extra], work)
        print(f"one cached run on {repeat}x the training images: peak RSS {rss[repeat]} MiB ({seconds:.0f} s)")
    print(f"peak RSS, 10x data / 1x data: {rss[10] / rss[1]:.2f}")


if __name__ == "__main__":
    main()
