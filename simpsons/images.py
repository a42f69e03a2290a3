"""Image files as pixels without TensorFlow: Pillow decodes, NumPy resizes as Keras's Resizing layer does.

The reader of the input pipeline on JAX (simpsons/pipeline.py), and of `simpsons.predict` on any
backend. No Keras or TensorFlow here: predict decodes before it loads a model.

- Decoding: Pillow's libjpeg with its default accurate integer DCT, the DCT the tf.data reader asks
  for (simpsons/tfdata.py), so both give the same pixels; any of data.IMAGE_FORMATS as RGB (grayscale,
  alpha and palette images converted, an animation's first frame).
- Resizing: bilinear with half-pixel centres and no antialiasing, as tf.image.resize and
  keras.layers.Resizing (on either backend) compute it, in float32: a resized image matches theirs to
  float32 rounding. Pillow's own resize antialiases when it shrinks, which the model's Resizing layer
  does not: the pixels a run trained on would not be those the served model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

# How JPEGs are decoded, by both readers (Pillow's default; tf.data asks for it); part of the feature
# cache's key (another decoder, other pixels).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def read_rgb(path: str) -> np.ndarray:
    """The image file at `path` as uint8 RGB, height x width x 3; OSError or ValueError if it is not one."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """An H x W x C image as float32, size x size, as tf.image.resize(method="bilinear") computes it."""
    (y0, y1, dy), (x0, x1, dx) = _taps(image.shape[0], size), _taps(image.shape[1], size)
    # The four neighbours of every output pixel, gathered at the output's size before any arithmetic.
    rows0, rows1 = image[y0], image[y1]
    top_left, top_right = rows0[:, x0].astype(np.float32), rows0[:, x1].astype(np.float32)
    bottom_left, bottom_right = rows1[:, x0].astype(np.float32), rows1[:, x1].astype(np.float32)
    dx = dx[None, :, None]
    top = top_left + (top_right - top_left) * dx  # along each row first, as TensorFlow does
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    return top + (bottom - top) * dy[:, None, None]


def _taps(length: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two input positions it lies between, and the weight of the second."""
    position = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(length / size) - 0.5
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), length - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def load_image(path: str, size: int) -> np.ndarray:
    """float32 RGB in 0-255, size x size."""
    return resize_bilinear(read_rgb(path), size)


def decodable(path: str) -> bool:
    try:
        read_rgb(path)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return False
    return True


def find_undecodable(paths: Sequence[str]) -> list[str]:
    """The paths read_rgb fails on (Pillow releases the GIL while it decodes: threads run in parallel)."""
    with ThreadPoolExecutor() as pool:
        return [path for path, ok in zip(paths, pool.map(decodable, paths), strict=True) if not ok]
