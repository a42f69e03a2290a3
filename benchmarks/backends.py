"""TensorFlow vs JAX, and tf.data vs the Pillow pipeline, on the same images in one invocation.

    python benchmarks/backends.py [--data ../shared/data/simpsons-mini] [--image-size 150] [--epochs 5]
                                  [--images 256]

On simpsons-mini (skipped, saying why, when it is absent), ResNet50V2 with random weights:
- the wall time of the same cached 2x2 grid (adam/rmsprop x dropout 0.2/0.5), cold cache, as one
  `python -m simpsons.train -m ...` process per backend, each with its own store and cache;
- the input pipelines alone (decode and resize, no model): images/s of tf.data and of the Pillow
  pipeline (simpsons/pipeline.py's ImageBatches), and their ratio;
- feature extraction (the job's own code, features.extract, backbone included; on the first
  --images images of the data set, the first call's tracing and compiling included): images/s on
  TensorFlow with tf.data, on TensorFlow with the Pillow pipeline, and on JAX with the Pillow
  pipeline (on JAX, tf.data would load TensorFlow: the JAX path has no tf.data), and the ratio of
  the Pillow pipeline to tf.data on TensorFlow.
Each measurement runs in a process of its own, on one backend. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "simpsons-mini"
GRID = ["optimizer=adam,rmsprop", "dropout=0.2,0.5"]


def child_env(backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {"KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}


def grid_seconds(backend: str, data: Path, image_size: int, epochs: int, scratch: Path) -> float:
    """Wall seconds of the cached 2x2 grid on `backend`, cold cache, its own store."""
    folder = scratch / f"grid-{backend}"
    folder.mkdir()
    args = [
        "-m",
        *GRID,
        f"backend={backend}",
        "backbone=resnet50v2",
        "backbone.weights=null",
        "data=simpsons",
        f"data.dir={data}",
        f"image_size={image_size}",
        f"epochs={epochs}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"cache_dir={folder / 'cache'}",
    ]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "simpsons.train", *args],
        cwd=folder,
        env=child_env(backend),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the {backend} grid failed:\n{result.stderr[-3000:]}")
    return seconds


def measured(backend: str, what: str, data: Path, image_size: int, count: int) -> float:
    """Images/s of `what` (decode-tfdata, decode-pillow, extract-tfdata, extract-pillow) in a process on `backend`."""
    command = [sys.executable, __file__, "--measure", what, "--data", str(data), "--image-size", str(image_size)]
    command += ["--images", str(count)]
    result = subprocess.run(command, env=child_env(backend), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{what} on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]


def measure(what: str, data: Path, image_size: int, count: int) -> None:
    """In the child process: one figure, printed as JSON on the last line."""
    import numpy as np

    from simpsons import pipeline, settings
    from simpsons.data import load_dataset
    from simpsons.settings import KaggleData

    settings.register()
    dataset = load_dataset(
        KaggleData(
            name="simpsons",
            dir=str(data),
            root=str(data / "simpsons_dataset"),
            test_root=str(data / "kaggle_simpson_testset"),
            test_layout="flat",
            val_split=0.2,
            split_seed=42,
            min_images_per_class=10,
        )
    )
    splits = [dataset.train, dataset.val, *([dataset.test] if dataset.test else [])]
    paths = [path for split in splits for path in split.paths]
    step, reader = what.split("-")  # e.g. decode-pillow
    paths = paths if step == "decode" else paths[:count]  # the backbone is the slow part
    labels = np.zeros(len(paths), dtype=np.int32)
    if reader == "tfdata":
        from simpsons import tfdata

        batches = tfdata.image_dataset(paths, labels, image_size, 32)
    else:
        batches = pipeline.ImageBatches(paths, labels, image_size, 32)
    if step == "decode":
        started = time.perf_counter()
        count = sum(len(images) for images, _ in pipeline.in_order(batches))
    else:
        from simpsons.backbones import BackboneSpec
        from simpsons.features import extract
        from simpsons.model import build_classifier, feature_extractor
        from simpsons.settings import BackboneSettings

        backbone = BackboneSpec.from_settings(
            BackboneSettings(
                name="resnet50v2",
                constructor="keras.applications.ResNet50V2",
                preprocess="keras.applications.resnet_v2",
                weights=None,
                min_image_size=32,
            )
        )
        model = build_classifier(backbone, image_size, 20, 0.0, seed=42)
        extractor = feature_extractor(model)
        extractor.jit_compile = pipeline.keras.config.backend() == "jax"  # as a job on CPU: XLA on JAX only
        started = time.perf_counter()  # the first call's tracing and compiling counted, as in a job
        count = len(extract(extractor, batches, len(paths)))
    print(json.dumps({"images_per_second": count / (time.perf_counter() - started)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=256, help="images of the extraction figures")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if not (data / "simpsons_dataset").is_dir():
        print(f"skipped: {data} has no simpsons_dataset/ (simpsons-mini is this workplace's shared data)")
        return
    if args.measure:
        measure(args.measure, data, args.image_size, args.images)
        return
    figures = {}
    for backend, what in [
        ("tensorflow", "decode-tfdata"),
        ("tensorflow", "decode-pillow"),
        ("tensorflow", "extract-tfdata"),
        ("tensorflow", "extract-pillow"),
        ("jax", "extract-pillow"),
    ]:
        figures[backend, what] = rate = measured(backend, what, data, args.image_size, args.images)
        print(f"{what:15} on {backend:10}: {rate:7.1f} images/s", flush=True)
    decode = figures["tensorflow", "decode-pillow"] / figures["tensorflow", "decode-tfdata"]
    extract = figures["tensorflow", "extract-pillow"] / figures["tensorflow", "extract-tfdata"]
    print(f"Pillow pipeline / tf.data: {decode:.2f} decoding alone, {extract:.2f} in extraction on TensorFlow")
    print(
        f"extraction, JAX / TensorFlow (each with its pipeline): "
        f"{figures['jax', 'extract-pillow'] / figures['tensorflow', 'extract-tfdata']:.2f}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        walls = {}
        for backend in ("tensorflow", "jax"):
            walls[backend] = grid_seconds(backend, data, args.image_size, args.epochs, Path(scratch))
            print(
                f"cached 2x2 grid x {args.epochs} epochs, ResNet50V2 {args.image_size} px, cold cache, "
                f"{backend}: {walls[backend]:.1f} s",
                flush=True,
            )
    print(f"grid wall time, JAX / TensorFlow: {walls['jax'] / walls['tensorflow']:.2f}")


if __name__ == "__main__":
    main()
