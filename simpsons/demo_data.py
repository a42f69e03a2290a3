"""The offline demo data set: coloured shapes on noisy backgrounds, written as real JPEG files.

Deterministic: the same settings give byte-identical files, so the data fingerprint and every
metric of a demo run are reproducible.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from simpsons.errors import DataError
from simpsons.settings import DemoGeneration

log = logging.getLogger(__name__)

CLASSES = {  # class name -> (RGB colour, shape)
    "blue_square": ((40, 70, 200), "square"),
    "green_triangle": ((40, 160, 60), "triangle"),
    "red_circle": ((210, 40, 40), "circle"),
    "yellow_diamond": ((230, 200, 30), "diamond"),
}
MARKER = "demo.json"


def ensure_demo_data(directory: Path, settings: DemoGeneration) -> None:
    """Generate <directory>/{train,test}/<class>/*.jpg unless the same settings already did.

    Under a lock, so that processes that start on a new clone together (two terminals, parallel
    jobs) generate it once, and none deletes a set that another is reading.
    """
    wanted = dataclasses.asdict(settings)
    if _generated_with(directory, wanted):
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f".{directory.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _generated_with(directory, wanted):
            return
        if directory.exists() and not (directory / MARKER).is_file():
            raise DataError(
                f"data.dir={str(directory)!r} exists but is not a generated demo set; choose another data.dir"
            )
        log.info("generating the demo data set in %s", directory)
        with tempfile.TemporaryDirectory(dir=directory.parent) as scratch:
            staging = Path(scratch) / "demo"
            write_demo_data(staging, **wanted)
            (staging / MARKER).write_text(json.dumps(wanted))
            if directory.exists():
                shutil.rmtree(directory)  # generated with other settings
            staging.rename(directory)


def _generated_with(directory: Path, wanted: dict) -> bool:
    marker = directory / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == wanted


def write_demo_data(directory: Path, train_per_class: int, test_per_class: int, size: int, seed: int) -> None:
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_index, (name, (colour, shape)) in enumerate(CLASSES.items()):
            folder = directory / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, class_index, i, int(split == "test")])
                draw_example(rng, colour, shape, size).save(folder / f"img_{i:04d}.jpg", quality=92)


def draw_example(rng: np.random.Generator, colour: tuple[int, int, int], shape: str, size: int) -> Image.Image:
    """One shape of jittered colour, size and position on a noisy light background."""
    background = rng.normal(200, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    radius = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    fill = tuple(int(c) for c in np.clip(np.array(colour) + rng.normal(0, 15, 3), 0, 255))
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    return image
