"""The input pipeline's reader on TensorFlow: tf.data reads, decodes and resizes files in parallel,
batch by batch (simpsons/pipeline.py chooses it; on JAX, Pillow in threads reads instead).

Pixels are never held in memory as one array; only the file lists are.

The pipelines run with tf.data's autotuner off: in TF 2.21 on a 2-core CPU, deleting an autotuned
iterator after a pass of the backbone blocked for about as long as the pass itself (20 s after 21 s
of feature extraction, measured in the benchmark's setting), once per pass. One decoder per core
(what AUTOTUNE means without the autotuner, up to 16) and two batches prefetched keep decoding
ahead of the model: decoding alone runs at over 1,500 images/s there, the backbone at about 40.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from simpsons.images import JPEG_DCT_METHOD

PREFETCH_BATCHES = 2


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Any of data.IMAGE_FORMATS as uint8 RGB (grayscale, RGBA and palette images converted).

    JPEGs with libjpeg's accurate integer DCT, which Pillow uses too: the pixels a run trains on
    are those a user's Pillow-decoded image gives the served model. TensorFlow's default
    (INTEGER_FAST) differs from them by up to 16 levels on the Kaggle images.
    """
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """float32 RGB in 0-255, resized like keras.layers.Resizing (bilinear, no antialiasing)."""
    image = decode_rgb(tf.io.read_file(path))
    return tf.image.resize(image, [image_size, image_size], method="bilinear")


def image_dataset(
    paths: Sequence[str],
    labels: np.ndarray,
    image_size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    mirror: bool = False,
) -> tf.data.Dataset:
    """Batches of (images, labels); reshuffled every epoch when shuffle_seed is given; with `mirror`,
    each image mirrored left to right after it is resized."""
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = load_image(path, image_size)
        return (tf.reverse(image, axis=[1]) if mirror else image), label  # HWC: axis 1 is the width

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotuner(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))


def array_dataset(inputs: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None) -> tf.data.Dataset:
    """Batches of (rows, labels) of arrays held in memory (cached features)."""
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return without_autotuner(dataset.batch(batch_size))


def one_hot(dataset: tf.data.Dataset, num_classes: int) -> tf.data.Dataset:
    """(inputs, integer labels) batches as (inputs, one-hot targets), converted as they are read."""
    return dataset.map(lambda inputs, labels: (inputs, tf.one_hot(labels, num_classes)))


def without_autotuner(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data's autotuner off (see the module docstring for why)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def find_undecodable(paths: Sequence[str]) -> list[str]:
    """The paths decode_rgb fails on, found with the same decoder the training pipeline uses."""
    if not paths:
        return []
    dataset = tf.data.Dataset.from_tensor_slices(list(paths)).enumerate()
    dataset = dataset.map(
        lambda index, path: (index, tf.shape(decode_rgb(tf.io.read_file(path)))),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    dataset = without_autotuner(dataset)
    decoded = {
        int(index)
        for index, _ in tqdm(
            dataset.as_numpy_iterator(), total=len(paths), desc="checking images", unit="img", disable=None
        )
    }
    return [path for i, path in enumerate(paths) if i not in decoded]
