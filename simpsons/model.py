"""The classifier: raw RGB in, softmax out, with a frozen ImageNet backbone in between."""

from __future__ import annotations

import keras

from simpsons.backbones import BackboneSpec


def build_classifier(backbone: BackboneSpec, image_size: int, num_classes: int, dropout: float) -> keras.Model:
    """resize -> backbone's preprocess_input -> frozen backbone -> pooling -> dropout -> softmax.

    Resize and preprocessing live inside the model, so the saved model takes raw RGB images
    (0-255) of any size. The backbone is called with training=False so its BatchNorm layers stay
    in inference mode (keras.io transfer-learning guide).
    """
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(inputs)
    x = backbone.preprocessing_layer()(x)
    base = backbone.build(image_size)
    base.trainable = False
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")
