"""Feature-cache benchmark: the same 4-config x 5-epoch sweep without and with the cache.

    python benchmarks/cache_benchmark.py [--data ../shared/data/simpsons-mini] [--backbone resnet50v2]
                                         [--image-size 128] [--epochs 5]

Prints wall seconds of both sweeps and their ratio, feature-extraction images/s (cold cache),
backbone.predict images/s on the same images preloaded in memory (the ceiling for extraction),
and the peak RSS of one cached run on the data set and on the same images repeated 10 times.
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


def kaggle_as_folders(kaggle: Path, target: Path, repeat: int) -> Path:
    """<target>/train/<class>/<copy>_<name> links to the Kaggle-layout training images, `repeat` times."""
    for class_dir in sorted((kaggle / "simpsons_dataset").iterdir()):
        folder = target / "train" / class_dir.name
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(repeat):
            for image in sorted(class_dir.iterdir()):
                (folder / f"{copy}_{image.name}").symlink_to(image)
    return target / "train"


def extraction_ceiling(data: Path, backbone: str, image_size: int) -> float:
    """backbone.predict images/s on the training images decoded and resized in memory beforehand."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from simpsons.backbones import BackboneSpec
    from simpsons.config import CONF_DIR, register_resolvers
    from simpsons.model import build_classifier, feature_extractor
    from simpsons.pipeline import load_image

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"backbone={backbone}", "backbone.weights=null"])
    spec = BackboneSpec.from_config(cfg.backbone)
    extractor = feature_extractor(build_classifier(spec, image_size, num_classes=2, dropout=0.0))
    paths = sorted(str(p) for p in (data / "simpsons_dataset").rglob("*.jpg"))
    images = np.stack([load_image(path, image_size).numpy() for path in paths])
    extractor.predict(images[:32], batch_size=32, verbose=0)  # build and trace once
    started = time.perf_counter()
    extractor.predict(images, batch_size=32, verbose=0)
    return len(images) / (time.perf_counter() - started)


def extraction_rate(tracking_uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("simpsons").experiment_id
    runs = client.search_runs([experiment], "tags.feature_cache = 'miss'")
    return runs[0].data.metrics["feature_extraction_images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "simpsons-mini")
    parser.add_argument("--backbone", default="resnet50v2")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    if not (args.data / "simpsons_dataset").is_dir():
        sys.exit(f"--data {args.data} is not the Kaggle layout (<dir>/simpsons_dataset/<character>/)")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        common = [f"backbone={args.backbone}", "backbone.weights=null", f"image_size={args.image_size}"]
        common += [f"epochs={args.epochs}", "data=simpsons", f"data.dir={args.data.resolve()}"]
        timings = {}
        for cache in ("false", "true"):
            uri = f"sqlite:///{work / f'cache-{cache}.db'}"
            extra = [f"cache={cache}", f"cache_dir={work / f'cache-{cache}'}", f"tracking.uri={uri}"]
            timings[cache], _ = run_train(["-m", *SWEEP, *common, *extra], work)
            print(f"sweep of 4 configs x {args.epochs} epochs, cache={cache}: {timings[cache]:.1f} s", flush=True)
        print(f"speed-up with the cache (cold): {timings['false'] / timings['true']:.1f}x")
        rate = extraction_rate(f"sqlite:///{work / 'cache-true.db'}")
        ceiling = extraction_ceiling(args.data, args.backbone, args.image_size)
        print(f"feature extraction: {rate:.1f} images/s; preloaded backbone.predict: {ceiling:.1f} images/s "
              f"({100 * rate / ceiling:.0f}% of the ceiling)")  # fmt: skip

        small = ["backbone=mobilenet", "backbone.weights=null", "backbone.kwargs.alpha=0.25", "image_size=64"]
        rss = {}
        for repeat in (1, 10):
            root = kaggle_as_folders(args.data, work / f"x{repeat}", repeat)
            extra = [f"data.root={root}", "data=folder", f"cache_dir={work / f'rss-{repeat}'}", "epochs=1"]
            extra.append(f"tracking.uri=sqlite:///{work / 'rss.db'}")
            seconds, rss[repeat] = run_train([*small, *extra], work)
            print(f"one cached run on {repeat}x the training images: peak RSS {rss[repeat]} MiB ({seconds:.0f} s)")
        print(f"peak RSS, 10x data / 1x data: {rss[10] / rss[1]:.2f}")
    print(f"(ru_maxrss of the child; {os.cpu_count()} CPU cores; {resource.getpagesize()} B pages)")


if __name__ == "__main__":
    main()
