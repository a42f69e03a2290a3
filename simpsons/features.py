"""The feature cache: a frozen backbone's pooled output per image, computed once, reused after.

With a frozen backbone and no augmentation, a run only trains the head on the pooled features,
and those depend only on (backbone, weights, image size, preprocessing, image file). Entries are
keyed by exactly that, with the files' content hashes, so a changed file, backbone or size gives
a new entry and a stale one is never read. A lock makes concurrent jobs compute an entry once,
and an entry is renamed into place only when complete, so no one reads a partial file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from simpsons import locks
from simpsons.backbones import BackboneSpec
from simpsons.data import Split
from simpsons.images import JPEG_DCT_METHOD
from simpsons.pipeline import Batches, array_batches, image_dataset, in_order
from simpsons.settings import TrainSettings

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 10.0  # without a terminal, a progress line this often


class Progress:
    """Images done out of `total`: in a terminal, a tqdm bar that is cleared once done (the log's
    `feature cache miss; extraction N s` line follows it); elsewhere (a log file, Slurm's output, a
    pipe), where a bar's carriage returns would be one line written at the end, a log line every
    PROGRESS_SECONDS: extraction runs for many seconds before the first epoch says anything."""

    def __init__(
        self,
        total: int,
        what: str,
        interval: float = PROGRESS_SECONDS,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.what, self.interval, self.clock = total, what, interval, clock
        self.done = 0
        self.started = self.said = clock()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        # leave=False: a finished bar is erased, not left behind as a stale or blank line
        self.bar = tqdm(total=total, desc=what, unit="img", leave=False) if terminal else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        now = self.clock()
        if now - self.said >= self.interval and self.done < self.total:
            self.said = now
            rate = self.done / (now - self.started) if now > self.started else 0.0
            log.info("%s: %d/%d images (%.0f img/s)", self.what, self.done, self.total, rate)


@dataclass(frozen=True)
class Lookup:
    features: np.ndarray  # memory-mapped, read-only, one row per image of the split
    hit: bool
    seconds: float  # extraction time; 0 on a hit
    images_per_second: float | None


def cache_key(
    backbone: BackboneSpec,
    image_size: int,
    split: Split,
    compute: dict,
    seed: int | None,
    mirrored: bool = False,
) -> str:
    """SHA-256 over everything the pooled features depend on.

    `compute`: how the backbone ran (precision, XLA, and a backend other than TensorFlow); float16
    features differ from float32 ones, and JAX's from TensorFlow's in their last bits.
    `seed`: what random weights (weights=null) were drawn from.
    `mirrored`: the features of the split's images mirrored left to right (tta=flip), an entry of
    their own.
    """
    identity = {
        "constructor": backbone.constructor,
        "kwargs": backbone.kwargs,
        "weights": backbone.weights_identity(seed),
        "preprocess": backbone.preprocess,
        "jpeg_dct_method": JPEG_DCT_METHOD,
        "image_size": image_size,
        "keras": keras.__version__,
        "files": split.digests,
        "compute": compute,
    }
    if mirrored:  # only then: the keys of unmirrored features stay those earlier versions wrote
        identity["mirrored"] = True
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cached_features(directory: Path, key: str, compute: Callable[[], np.ndarray]) -> Lookup:
    """The entry for `key`, computed with `compute` (under a lock) if it is not there yet."""
    directory.mkdir(parents=True, exist_ok=True)
    entry = directory / f"{key}.npy"
    with locks.exclusive(directory / f"{key}.lock"):
        hit = entry.is_file()
        started = time.perf_counter()
        if not hit:
            partial = directory / f"{key}.{os.getpid()}.partial.npy"
            np.save(partial, compute())
            os.replace(partial, entry)
        seconds = 0.0 if hit else time.perf_counter() - started
    features = np.load(entry, mmap_mode="r")
    rate = None if hit or seconds == 0 else len(features) / seconds
    return Lookup(features, hit, seconds, rate)


def extract(extractor: keras.Model, batches: Batches, count: int, what: str = "extracting features") -> np.ndarray:
    """Pooled features of every (images, labels) batch, with its Progress (a bar in a terminal, else
    a line every PROGRESS_SECONDS).

    A smaller last batch is padded to the size of the first: a new input shape would make Keras
    trace the predict function again (and XLA compile it again, which on JAX costs more than the
    compute), and oneDNN build new kernels. So each (backbone, size, batch) compiles once, on either
    backend. Rows do not mix in inference mode, so the padding changes no feature.
    """
    outputs = []
    batch_size = None
    with Progress(count, what) as progress:
        for images, _ in in_order(batches):
            pixels = np.asarray(images)
            size = len(pixels)
            batch_size = batch_size or size
            padded = np.pad(pixels, [(0, batch_size - size), (0, 0), (0, 0), (0, 0)])
            outputs.append(np.asarray(extractor.predict_on_batch(padded))[:size])
            progress.update(size)
    return np.concatenate(outputs).astype(np.float32)


@dataclass(frozen=True)
class CachedFeatures:
    """Each split's pooled backbone features, from the feature cache: what a run's head trains and
    is scored on (simpsons/training/phases.py)."""

    lookups: dict[str, Lookup]
    labels: dict[str, np.ndarray]
    batch_size: int

    def array(self, split: str) -> np.ndarray:
        return np.asarray(self.lookups[split].features)

    def views(self, split: str) -> tuple[np.ndarray, ...]:
        """A scored split's features, and with tta=flip its mirror images': evaluate averages their softmax."""
        return tuple(self.array(view) for view in (split, f"{split}_mirrored") if view in self.lookups)

    def batches(self, split: str, shuffle_seed: int | None = None) -> Batches:
        return array_batches(self.array(split), self.labels[split], self.batch_size, shuffle_seed)

    def extraction(self) -> tuple[bool, float, float | None]:
        """Whether any entry was computed (a miss), the seconds it took, and its images per second."""
        computed = [lookup for lookup in self.lookups.values() if not lookup.hit]
        seconds = sum(lookup.seconds for lookup in computed)
        images = sum(len(lookup.features) for lookup in computed)
        return bool(computed), seconds, images / seconds if computed and seconds > 0 else None


def cache_splits(
    extractor: keras.Model,
    backbone: BackboneSpec,
    splits: dict[str, Split],
    settings: TrainSettings,
    mirrored_views: bool,
) -> CachedFeatures:
    """Every split's features from the cache, computed with `extractor` first where missing (under
    its lock); with `mirrored_views`, the scored splits' mirror images' too (tta=flip)."""
    compute = {"precision": settings.precision, "xla": extractor.jit_compile}
    if keras.config.backend() != "tensorflow":  # only then: TensorFlow's keys stay those earlier versions wrote
        compute["backend"] = keras.config.backend()
    views = {name: (split, False) for name, split in splits.items()}
    if mirrored_views:
        views |= {f"{name}_mirrored": (split, True) for name, split in splits.items() if name != "train"}

    def extracted(name: str, split: Split, mirror: bool) -> np.ndarray:
        batches = image_dataset(split.paths, split.labels, settings.image_size, settings.batch_size, mirror=mirror)
        return extract(extractor, batches, len(split), f"{name} features")

    lookups = {
        name: cached_features(
            Path(settings.cache_dir),
            cache_key(backbone, settings.image_size, split, compute, settings.seed, mirror),
            lambda name=name, split=split, mirror=mirror: extracted(name, split, mirror),
        )
        for name, (split, mirror) in views.items()
    }
    return CachedFeatures(lookups, {name: split.labels for name, split in splits.items()}, settings.batch_size)
