"""Fine-tuning benchmark: one fine-tuning run whose head phase trains on images, then on cached features.

    python benchmarks/finetune_benchmark.py [--data ../shared/data/simpsons-mini] [--backbone resnet50v2]
                                            [--image-size 150] [--epochs 5] [--finetune-epochs 2]
                                            [--finetune-layers 10]

With finetune.layers > 0 a run trains its head first, with the backbone frozen, then fine-tunes the
backbone's top layers. With cache=false the head phase pushes every image through the backbone in
every epoch; by default (cache=true) it trains on the backbone's cached features, and only the
fine-tuning phase runs the backbone. Both configs run here in one invocation, each as its own
`python -m simpsons.train` process with its own new SQLite store and feature cache, so the cached
one includes extracting the features (a cold cache); a third run repeats it on the warm cache.
Prints each run's wall seconds, its fit seconds, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_benchmark import ROOT, data_set, run_train  # noqa: E402

MOBILENET_WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def backbone_args(backbone: str) -> list[str]:
    """MobileNet 0.25 with its real ImageNet weights when ../shared has them; else random weights."""
    if backbone == "mobilenet":
        weights = MOBILENET_WEIGHTS if MOBILENET_WEIGHTS.is_file() else "null"
        return ["backbone=mobilenet", "backbone.kwargs.alpha=0.25", f"backbone.weights={weights}"]
    return [f"backbone={backbone}", "backbone.weights=null"]


def fit_seconds(tracking_uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("simpsons").experiment_id])
    import mlflow

    seconds = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/timings.json")["seconds"]
    return seconds["fit"] + seconds.get("features", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "simpsons-mini")
    parser.add_argument("--backbone", default="resnet50v2")  # the cache benchmark's; mobilenet: alpha 0.25
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=5, help="head phase epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-layers", type=int, default=10)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data_args, _ = data_set(args.data, work / "generated")
        common = [*backbone_args(args.backbone), f"image_size={args.image_size}", f"epochs={args.epochs}", *data_args]
        common += [f"finetune.layers={args.finetune_layers}", f"finetune.epochs={args.finetune_epochs}"]
        print(f"one run: {' '.join(common)}", flush=True)
        seconds, fits = {}, {}
        for label, cache, store in [
            ("head phase on images (cache=false)", "false", "images"),
            ("head phase on cached features, cold cache", "true", "cached"),
            ("head phase on cached features, warm cache", "true", "cached"),
        ]:
            uri = f"sqlite:///{work / f'{label[:4]}-{len(seconds)}.db'}"
            extra = [f"cache={cache}", f"cache_dir={work / f'cache-{store}'}", f"tracking.uri={uri}", "reuse=false"]
            seconds[label], _ = run_train([*common, *extra], work)
            fits[label] = fit_seconds(uri)
            print(f"{label}: {seconds[label]:.1f} s, of which features + fit {fits[label]:.1f} s", flush=True)
        images, cold, warm = seconds.values()
        print(f"fine-tuning run, head phase on images / on cached features: {images / cold:.2f} (cold cache), "
              f"{images / warm:.2f} (warm cache)")  # fmt: skip
        fit_images, fit_cold, fit_warm = fits.values()
        print(f"features + fit alone: {fit_images / fit_cold:.2f} (cold), {fit_images / fit_warm:.2f} (warm)")
    print(f"({os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
