"""Input pipelines: files are read, decoded and resized in parallel, batch by batch, on either backend.

Pixels are never held in memory as one array; only the file lists are. Everything but the reader is
shared: the split's order, per-epoch shuffling from a seed, batching, mirroring (tta=flip), one-hot
targets. The reader is the backend's:

- on TensorFlow, tf.data (simpsons/tfdata.py), as before;
- on JAX, which must not load TensorFlow, Pillow (simpsons/images.py) in a pool of threads feeding a
  keras.utils.PyDataset: each worker thread decodes and resizes a whole batch (Pillow and NumPy
  release the GIL), and Keras's fit, evaluate and predict keep `workers` batches in flight.
  benchmarks/pipelines.py measures the two readers on the same images (benchmarks/README.md).

A batch's images are float32 RGB in 0-255 at the run's size; labels are int32 class indices.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from simpsons import images

# A tf.data.Dataset on TensorFlow, a keras.utils.PyDataset on JAX: what fit, evaluate and predict take.
Batches = Any
MAX_WORKERS = 16  # threads decoding batches; one per core up to this many
PREFETCH_BATCHES = 2  # batches per worker kept ready ahead of the model


def on_tensorflow() -> bool:
    return keras.config.backend() == "tensorflow"


def workers() -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def image_dataset(
    paths: Sequence[str],
    labels: np.ndarray,
    image_size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    mirror: bool = False,
) -> Batches:
    """Batches of (images, labels); reshuffled every epoch when shuffle_seed is given; with `mirror`,
    each image mirrored left to right after it is resized (the feature cache's tta=flip views)."""
    if on_tensorflow():
        from simpsons import tfdata

        return tfdata.image_dataset(paths, labels, image_size, batch_size, shuffle_seed, mirror)
    return ImageBatches(paths, labels, image_size, batch_size, shuffle_seed, mirror)


def array_batches(inputs: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> Batches:
    """Batches of (rows, labels) of arrays in memory (a head's cached features)."""
    if on_tensorflow():
        from simpsons import tfdata

        return tfdata.array_dataset(inputs, labels, batch_size, shuffle_seed)
    return ArrayBatches(inputs, labels, batch_size, shuffle_seed)


def one_hot(batches: Batches, num_classes: int) -> Batches:
    """(inputs, integer labels) batches as (inputs, one-hot float32 targets), converted as they are read."""
    if on_tensorflow():
        from simpsons import tfdata

        return tfdata.one_hot(batches, num_classes)
    identity = np.eye(num_classes, dtype=np.float32)
    return MappedBatches(batches, lambda inputs, labels: (inputs, identity[labels]))


def find_undecodable(paths: Sequence[str]) -> list[str]:
    """The paths the backend's reader cannot decode: the files a run leaves out."""
    if on_tensorflow():
        from simpsons import tfdata

        return tfdata.find_undecodable(paths)
    return images.find_undecodable(paths)


def in_order(batches: Batches) -> Iterator[tuple[Any, Any]]:
    """Every batch once, in order: a tf.data.Dataset as it iterates; a PyDataset's batches made by its
    worker threads, up to PREFETCH_BATCHES per worker ahead of the one taken."""
    if not isinstance(batches, keras.utils.PyDataset):
        yield from batches
        return
    count = len(batches)
    with ThreadPoolExecutor(max_workers=batches.workers) as pool:
        pending: collections.deque = collections.deque()
        ahead = batches.workers * PREFETCH_BATCHES
        for index in range(count):
            pending.append(pool.submit(batches.__getitem__, index))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Shuffled(keras.utils.PyDataset):
    """A PyDataset of `count` rows in batches, in order or, with a seed, in an order drawn anew each epoch."""

    def __init__(self, count: int, batch_size: int, shuffle_seed: int | None, workers: int):
        # Threads, not processes: the work releases the GIL, and nothing is pickled.
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=workers * PREFETCH_BATCHES)
        self.count, self.batch_size = count, batch_size
        self.random = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        self.order = self._draw()

    def _draw(self) -> np.ndarray:
        return np.arange(self.count) if self.random is None else self.random.permutation(self.count)

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.order[index * self.batch_size : (index + 1) * self.batch_size]

    def on_epoch_end(self) -> None:
        if self.random is not None:
            self.order = self._draw()


class ImageBatches(_Shuffled):
    """(images, labels) batches of image files, decoded and resized by Pillow and NumPy (images.py)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        image_size: int,
        batch_size: int,
        shuffle_seed: int | None = None,
        mirror: bool = False,
    ):
        super().__init__(len(paths), batch_size, shuffle_seed, workers())
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int32)
        self.image_size, self.mirror = image_size, mirror

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(index)
        pixels = np.stack([images.load_image(self.paths[row], self.image_size) for row in rows])
        mirrored = np.ascontiguousarray(pixels[:, :, ::-1]) if self.mirror else pixels  # NHWC: axis 2 is the width
        return mirrored, self.labels[rows]


class ArrayBatches(_Shuffled):
    """(rows, labels) batches of arrays in memory; no worker threads (slicing is all there is to do)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
        super().__init__(len(labels), batch_size, shuffle_seed, workers=1)
        self.inputs, self.labels = inputs, np.asarray(labels, dtype=np.int32)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(index)
        return np.asarray(self.inputs[rows]), self.labels[rows]


class MappedBatches(keras.utils.PyDataset):
    """Another PyDataset's batches through `function(inputs, labels)`, in its order and with its workers."""

    def __init__(self, batches: keras.utils.PyDataset, function: Callable[[Any, Any], tuple[Any, Any]]):
        super().__init__(workers=batches.workers, use_multiprocessing=False, max_queue_size=batches.max_queue_size)
        self.batches, self.function = batches, function

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.function(*self.batches[index])

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()
