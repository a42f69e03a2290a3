"""The classifier: raw RGB in, softmax out, with a frozen ImageNet backbone in between."""

from __future__ import annotations

import dataclasses
import json

import keras

from simpsons.backbones import BackboneSpec
from simpsons.settings import AugmentSettings, LightAugment


def build_classifier(
    backbone: BackboneSpec,
    image_size: int,
    num_classes: int,
    dropout: float,
    augment: AugmentSettings | None = None,
    seed: int | None = None,
    share_backbone: bool = False,
) -> keras.Model:
    """resize -> [augment] -> backbone's preprocess_input -> frozen backbone -> pool -> dropout -> softmax.

    Resize and preprocessing live inside the model, so the saved model takes raw RGB images
    (0-255) of any size. The backbone is called with training=False so its BatchNorm layers stay
    in inference mode (keras.io transfer-learning guide). The head's layers draw from `seed`
    itself, not from what building the backbone left of the global seed, so a shared backbone
    (`share_backbone`: see shared_backbone) gives the head the same start as a new one.
    """
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(inputs)
    for layer in augmentation_layers(augment, seed):
        x = layer(x)
    x = backbone.preprocessing_layer()(x)
    base = shared_backbone(backbone, image_size, seed) if share_backbone else backbone.build(image_size)
    base.trainable = False
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dropout_seed = None if seed is None else seed + 1  # not the stream the head's weights came from
    x = keras.layers.Dropout(dropout, seed=dropout_seed, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        dtype="float32",
        name="probabilities",
    )(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")


_SHARED: dict[str, keras.Model] = {}  # least recently used first
SHARED_BACKBONES = 2  # a grid written `dropout=... backbone=a,b` alternates between two


def shared_backbone(backbone: BackboneSpec, image_size: int, seed: int | None) -> keras.Model:
    """The backbone an earlier call with the same arguments (and dtype policy) built, in this process.

    The jobs of a cached sweep run in one process and never change the backbone's weights, so
    they share one instead of building it again: 1 to 2 s a run for ResNet50V2 on 2 CPU cores.
    Random weights (weights=null) depend on the seed, and a weights file on its content, hence
    the key holds the backbone's weights_identity, as the feature cache's does.
    """
    identity = dataclasses.asdict(backbone) | {"weights": backbone.weights_identity(seed)}
    key = json.dumps([identity, image_size, keras.config.dtype_policy().name])
    shared = _SHARED.pop(key, None) or backbone.build(image_size)
    _SHARED[key] = shared
    while len(_SHARED) > SHARED_BACKBONES:
        del _SHARED[next(iter(_SHARED))]
    return shared


def augmentation_layers(augment: AugmentSettings | None, seed: int | None) -> list[keras.layers.Layer]:
    """Keras preprocessing layers for the `augment` group; they change images only in training."""
    if not isinstance(augment, LightAugment):
        return []
    layers = [keras.layers.RandomFlip("horizontal", seed=seed, name="flip")] if augment.horizontal_flip else []
    return layers + [
        keras.layers.RandomTranslation(augment.shift, augment.shift, seed=seed, name="shift"),
        keras.layers.RandomZoom(augment.zoom, augment.zoom, seed=seed, name="zoom"),
    ]


def with_tta(model: keras.Model, tta: str) -> keras.Model:
    """The model that gives a run's validation and test outputs and is logged: `model` itself, or
    with tta=flip the mean of its softmax on each image and on the image's horizontal mirror."""
    return with_flip_tta(model) if tta == "flip" else model


def with_flip_tta(model: keras.Model) -> keras.Model:
    """raw images -> resize -> [model(images), model(mirrored images)] -> their mean.

    The images are resized before they are mirrored, as the pipeline resizes them before the
    model sees them (simpsons/pipeline.py) and the feature cache mirrors them (features.mirrored):
    bilinear resizing does not commute exactly with a mirror (up to 0.015 levels of 255 apart,
    7.7e-5 apart in a confident softmax), and the classifier's own Resizing layer then resizes to
    the size it has, which changes no pixel. So the logged model computes what the run logged.

    Keras's own layers and ops only (no Lambda, no custom layer): the saved model loads in safe
    mode without this package, as simpsons.predict and the ensemble's served model load it. It
    shares `model`'s layers, so weights trained or restored later are its weights too.
    """
    images = keras.Input(shape=(None, None, 3), name="image")
    # In float32 under any dtype policy, as the pipeline resizes (and the classifier's softmax is).
    like_the_pipeline = {"name": "tta_resize", "dtype": "float32"}
    resized = keras.layers.Resizing.from_config(model.get_layer("resize").get_config() | like_the_pipeline)(images)
    mirrored = keras.ops.flip(resized, axis=2)  # NHWC: axis 2 is the width, a left-right mirror
    outputs = keras.layers.Average(dtype="float32", name="flip_tta")([model(resized), model(mirrored)])
    flipped = keras.Model(images, outputs, name=f"{model.name}_flip_tta")
    flipped.jit_compile = model.jit_compile  # predicts with XLA as the trained model does, or not
    return flipped


def backbone_of(model: keras.Model) -> keras.Model:
    """The ImageNet backbone inside a classifier (its one nested model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def feature_extractor(model: keras.Model) -> keras.Model:
    """Raw images -> pooled backbone features: the classifier up to its head, sharing its layers."""
    return keras.Model(model.input, model.get_layer("pool").output, name="feature_extractor")


def head(model: keras.Model) -> keras.Model:
    """Pooled features -> softmax: the classifier's dropout and dense layers, shared, so training
    the head trains the classifier."""
    features = keras.Input(shape=model.get_layer("pool").output.shape[1:], name="features")
    outputs = model.get_layer("probabilities")(model.get_layer("dropout")(features))
    return keras.Model(features, outputs, name="head")


def unfreeze_top(model: keras.Model, layers: int) -> None:
    """Make the backbone's top `layers` layers trainable; BatchNorm layers stay frozen."""
    backbone = backbone_of(model)
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        top = index >= len(backbone.layers) - layers
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
