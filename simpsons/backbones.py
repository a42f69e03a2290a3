"""Backbone registry: one conf/backbone/<name>.yaml per keras.applications constructor.

Adding a backbone is adding a YAML file; nothing here names a specific model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from simpsons.data import file_sha256
from simpsons.errors import ConfigError
from simpsons.settings import BackboneSettings


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str
    preprocess: str
    weights: str | None
    min_image_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: BackboneSettings) -> BackboneSpec:
        """The backbone `settings` name (judged by BackboneSettings.errors()), its weights file made absolute."""
        return cls(
            name=settings.name,
            constructor=settings.constructor,
            preprocess=settings.preprocess,
            weights=resolve_weights(settings.weights),
            min_image_size=settings.min_image_size,
            kwargs=dict(settings.kwargs),
        )

    def weights_identity(self, seed: int | None) -> str | dict[str, int | None]:
        """What the built backbone's weights are: ImageNet's, a weights file's content, or random
        ones, which the seed decides. Keys the feature cache and the backbones a sweep shares."""
        if self.weights is None:
            return {"random_seed": seed}
        if self.weights == "imagenet":
            return self.weights
        return file_sha256(Path(self.weights))

    def build(self, image_size: int) -> keras.Model:
        """The ImageNet architecture without its top, for square RGB inputs of image_size (at least
        min_image_size: TrainSettings.errors() says so before a job starts)."""
        constructor = _import_attribute(self.constructor)
        try:
            return constructor(
                include_top=False,
                weights=self.weights,
                input_shape=(image_size, image_size, 3),
                **self.kwargs,
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"backbone {self.name!r}: {error}") from error
        except Exception as error:
            if self.weights != "imagenet":
                raise
            raise ConfigError(
                f"could not download ImageNet weights for backbone {self.name!r} ({error}); "
                "use backbone.weights=null or a local weights file, or put Keras's file in "
                "$KERAS_HOME/models"
            ) from error

    def preprocess_input(self) -> Callable[[np.ndarray], np.ndarray]:
        return _import_attribute(f"{self.preprocess}.preprocess_input")

    def preprocessing_layer(self) -> keras.layers.Layer:
        """The backbone's own preprocess_input as a frozen per-pixel affine map over channels.

        Every keras.applications preprocess_input is affine per pixel (scaling, mean/std
        normalisation, RGB->BGR). Reading its coefficients off the function and storing them in a
        built-in Dense layer keeps the saved model loadable anywhere, with no custom code, where a
        Lambda or custom layer would need this package importable at load time.
        """
        matrix, offset = affine_coefficients(self.preprocess_input())
        layer = keras.layers.Dense(3, name="preprocess", trainable=False)
        layer.build((None, 3))
        layer.set_weights([matrix.astype("float32"), offset.astype("float32")])
        return layer


def affine_coefficients(preprocess: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) with preprocess(x) == x @ matrix + offset for any RGB pixel x."""
    probes = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).reshape(4, 1, 1, 3)
    outputs = np.asarray(preprocess(probes.copy()), dtype=np.float64).reshape(4, 3)
    offset = outputs[0]
    matrix = (outputs[1:] - offset) / 255.0
    return matrix, offset


def resolve_weights(weights: str | None) -> str | None:
    """`imagenet`, None (random init), or a weights file (BackboneSettings.errors() says it exists) made absolute."""
    if weights is None or weights == "imagenet":
        return weights
    return str(Path(weights).expanduser().resolve())


def _import_attribute(dotted: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"cannot import {dotted!r}: {error}") from error
