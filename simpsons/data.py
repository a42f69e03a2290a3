"""Find the images, drop what cannot be used (saying so), split, and fingerprint.

Produces sorted file lists and labels, never pixels: simpsons/pipeline.py reads the pixels.

The check before a sweep (simpsons/preflight.py) words its data messages with this module's, so
it imports no TensorFlow (pipeline.py, for the decoder) and no scikit-learn (the split) at load time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import numpy as np

from simpsons import demo_data
from simpsons.errors import ConfigError, DataError
from simpsons.settings import TEST_LAYOUTS, DataSettings

log = logging.getLogger(__name__)

FLAT_NAME = re.compile(r"^(?P<label>.+)_(?P<index>\d+)\.[^.]+$")
IMAGE_FORMATS = "JPEG, PNG, GIF, BMP or WebP"  # what both readers decode (simpsons/tfdata.py, images.py)
TEST_ROOT_HINT = "set data.test_root=null to train without a test set"
LISTED_FILES = 10  # unusable files named in the error of a class without images


@dataclass(frozen=True)
class Split:
    """Images of one split: absolute paths, integer labels, names relative to their root, and
    the SHA-256 of each file's content (what the feature cache is keyed by)."""

    paths: list[str]
    labels: np.ndarray
    names: list[str]
    digests: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class DataSet:
    class_names: list[str]
    train: Split
    val: Split
    test: Split | None
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)
    dropped_classes: dict[str, int] = field(default_factory=dict)
    unknown_test_classes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _File:
    path: Path
    label: str
    name: str


def load_dataset(cfg: DataSettings) -> DataSet:
    """Discover, validate and split the data set that `cfg` (the `data` settings) describes."""
    if cfg.generation is not None:
        demo_data.ensure_demo_data(Path(cfg.folder), cfg.generation)
    root = _existing_root(cfg.root, "data.root", missing_hint=missing_root_hint(cfg.name, cfg.folder))
    pool = discover_folders(root)
    test = []
    if cfg.test_root is not None:
        test_root = _existing_root(cfg.test_root, "data.test_root", missing_hint=TEST_ROOT_HINT)
        test = discover_test(test_root, cfg.test_layout)

    skipped = [SkippedFile(str(f.path), reason) for f, reason in _unlabelled(pool + test)]
    digests, undecodable = scan([f.path for f in pool + test if f.label])
    skipped += [SkippedFile(str(path), f"not a decodable image ({IMAGE_FORMATS})") for path in undecodable]
    unusable = set(undecodable)
    usable = [f for f in pool if f.label and f.path not in unusable]
    usable_test = [f for f in test if f.label and f.path not in unusable]

    class_names, dropped = _select_classes(pool, usable, cfg.min_images_per_class, root, skipped)
    known = set(class_names)
    usable = [f for f in usable if f.label in known]
    unknown_test = _count_labels(f for f in usable_test if f.label not in known)
    usable_test = [f for f in usable_test if f.label in known]
    if cfg.test_root is not None and not usable_test:
        raise DataError(f"data.test_root={str(cfg.test_root)!r} has no usable images of the training classes")

    train, val = _stratified_split(usable, class_names, cfg.val_split, cfg.split_seed, digests)
    return DataSet(
        class_names=class_names,
        train=train,
        val=val,
        test=_to_split(usable_test, class_names, digests) if cfg.test_root is not None else None,
        fingerprint=_fingerprint(usable, usable_test, digests),
        skipped=skipped,
        dropped_classes=dropped,
        unknown_test_classes=unknown_test,
    )


def discover_folders(root: Path) -> list[_File]:
    """Every file under root/<class>/ (sorted); files directly in root get no label."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else ""
        files.append(_File(path, label, relative.as_posix()))
    return files


def discover_test(root: Path, layout: str) -> list[_File]:
    if layout == "folders":
        return discover_folders(root)
    if layout != "flat":
        raise ConfigError(f"data.test_layout={layout!r} is unknown; use one of: {', '.join(TEST_LAYOUTS)}")
    files = []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        match = FLAT_NAME.match(path.name)
        files.append(_File(path, match["label"] if match else "", path.name))
    return files


def scan(paths: list[Path]) -> tuple[dict[Path, str], tuple[Path, ...]]:
    """SHA-256 of every file, and the files the training pipeline's decoder cannot read (sorted)."""
    with ThreadPoolExecutor() as pool:
        digests = dict(zip(paths, pool.map(file_sha256, paths), strict=True))
    return digests, _undecodable(tuple(digests.items()))


@functools.lru_cache(maxsize=4)
def _undecodable(files: tuple[tuple[Path, str], ...]) -> tuple[Path, ...]:
    """Keyed by path and content hash, so the jobs of a sweep (one process) decode each file once,
    and a file changed between jobs is decoded again."""
    from simpsons import pipeline  # Keras, the backend's reader: loaded by the job, not by the check before a sweep

    return tuple(sorted(Path(p) for p in pipeline.find_undecodable([str(path) for path, _ in files])))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read once per process for as long as its stat stays the same."""
    status = path.stat()
    return _sha256_of_version(path, status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


@functools.lru_cache(maxsize=1 << 18)
def _sha256_of_version(path: Path, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """Keyed by the file's stat, as git's index is: the jobs of a sweep (one process) read each file
    once, and a file rewritten or replaced between jobs changes its ctime or inode, so it is read again."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _existing_root(value: str | None, key: str, missing_hint: str) -> Path:
    if value is None:
        raise ConfigError(f"{key} is not set; {missing_hint}")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{key}={str(value)!r} is not a folder; {missing_hint}")
    return unnested_root(root)


def unnested_root(root: Path) -> Path:
    """The training folder, looking through Kaggle's archive, which nests simpsons_dataset/simpsons_dataset/."""
    nested = root / root.name
    if nested.is_dir() and [p.name for p in root.iterdir() if not p.name.startswith(".")] == [root.name]:
        return nested
    return root


def missing_root_hint(name: str, data_dir: str | None) -> str:
    """What to do about a missing data.root: for the Kaggle data, how to get it or run the demo."""
    if name == "simpsons":
        return (
            "download the Kaggle data set alexattia/the-simpsons-characters-dataset and unzip it "
            f"into {data_dir} (see README), or run the offline demo: python -m simpsons.train experiment=demo"
        )
    return "point data.root at a folder of <class>/<image> files"


def no_usable_images_error(label: str, root: Path, skipped_names: list[str]) -> str:
    """One line: the class, and its unusable files (the first LISTED_FILES, then how many more)."""
    listed = ", ".join(skipped_names[:LISTED_FILES])
    more = f" and {len(skipped_names) - LISTED_FILES} more" if len(skipped_names) > LISTED_FILES else ""
    return (
        f"class {label!r} in {str(root)!r} has no usable images: its {len(skipped_names)} file(s) are not "
        f"decodable images ({IMAGE_FORMATS}): {listed}{more}"
    )


def _unlabelled(files: Iterable[_File]) -> list[tuple[_File, str]]:
    return [(f, "not in a class folder / not named <class>_<n>.<ext>") for f in files if not f.label]


def _count_labels(files: Iterable[_File]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in files:
        counts[f.label] = counts.get(f.label, 0) + 1
    return dict(sorted(counts.items()))


def _select_classes(
    pool: list[_File], usable: list[_File], min_images: int, root: Path, skipped: list[SkippedFile]
) -> tuple[list[str], dict[str, int]]:
    """Classes with enough usable images; a class folder with none at all is an error."""
    found = sorted({f.label for f in pool if f.label})
    if not found:
        raise DataError(f"data.root={str(root)!r} has no class folders with images in them")
    counts = _count_labels(usable)
    empty = [label for label in found if label not in counts]
    if empty:
        raise DataError(_no_usable_images(empty[0], root, skipped))
    dropped = {label: n for label, n in counts.items() if n < min_images}
    kept = [label for label in found if label not in dropped]
    if len(kept) < 2:
        raise DataError(
            f"{len(kept)} class(es) have >= data.min_images_per_class={min_images} images; at least 2 are needed"
        )
    return kept, dropped


def _no_usable_images(label: str, root: Path, skipped: list[SkippedFile]) -> str:
    folder = root / label
    names = sorted(Path(s.path).relative_to(root).as_posix() for s in skipped if Path(s.path).is_relative_to(folder))
    return no_usable_images_error(label, root, names)


def _stratified_split(
    files: list[_File], class_names: list[str], val_split: float, seed: int, digests: dict[Path, str]
) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split  # seconds to import: not for the check before a sweep

    labels = [f.label for f in files]
    try:
        train, val = train_test_split(files, test_size=val_split, stratify=labels, random_state=seed)
    except ValueError as error:
        raise DataError(
            f"data.val_split={val_split} cannot split {len(files)} images of {len(class_names)} classes "
            f"({error}); change data.val_split or data.min_images_per_class"
        ) from error
    by_name = attrgetter("name")
    return tuple(_to_split(sorted(part, key=by_name), class_names, digests) for part in (train, val))


def _to_split(files: list[_File], class_names: list[str], digests: dict[Path, str]) -> Split:
    index = {name: i for i, name in enumerate(class_names)}
    return Split(
        paths=[str(f.path) for f in files],
        labels=np.array([index[f.label] for f in files], dtype=np.int32),
        names=[f.name for f in files],
        digests=[digests[f.path] for f in files],
    )


def _fingerprint(train_pool: list[_File], test: list[_File], digests: dict[Path, str]) -> str:
    """Content hash of the usable images with their labels and names; independent of where they lie."""
    lines = [f"train\t{f.label}\t{f.name}\t{digests[f.path]}" for f in train_pool]
    lines += [f"test\t{f.label}\t{f.name}\t{digests[f.path]}" for f in test]
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
