"""Tiny Keras models and batches for the tests of the fit loop (tests/test_training_*.py)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

CLASSES = 3


def two_layer_model() -> keras.Model:
    """A stand-in for backbone + head: `base` is frozen in the first phase, trained in the second."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.Dense(4, name="base")(inputs))
    return keras.Model(inputs, outputs)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def batches(rows: int = 32) -> tf.data.Dataset:
    generator = np.random.default_rng(0)
    x, y = generator.normal(size=(rows, 3)).astype(np.float32), generator.integers(0, 2, rows)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def labelled(labels: list[int], seed: int = 0, batch_size: int | None = None) -> tf.data.Dataset:
    """Random 4-feature rows with these integer labels, in one batch unless `batch_size` says."""
    features = np.random.default_rng(seed).normal(size=(len(labels), 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((features, np.array(labels))).batch(batch_size or len(labels))


def softmax_model() -> keras.Model:
    inputs = keras.Input(shape=(4,))
    outputs = keras.layers.Dense(CLASSES, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(1))
    return keras.Model(inputs, outputs(inputs))
