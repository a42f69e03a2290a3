"""Discovery, validation, splitting and fingerprinting on real image files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import train_settings
from PIL import Image

from simpsons.data import load_dataset
from simpsons.demo_data import write_demo_data
from simpsons.errors import DataError
from simpsons.pipeline import image_dataset


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 16), fmt: str | None = None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert("P") if mode == "P" else image.convert(mode)
    image.save(path, format=fmt)


def make_classes(root: Path, counts: dict[str, int]) -> None:
    for label, count in counts.items():
        for i in range(count):
            save_image(root / label / f"pic_{i:04d}.jpg", seed=hash((label, i)) % 1000)


def folder_cfg(root: Path, *overrides: str):
    return train_settings(["data=folder", f"data.root={root}", *overrides]).data


def test_odd_formats_become_rgb_and_bad_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "train"
    make_classes(root, {"bart": 5, "lisa": 5})
    save_image(root / "bart" / "gray.png", mode="L")
    save_image(root / "bart" / "alpha.png", mode="RGBA")
    save_image(root / "lisa" / "palette.png", mode="P")
    save_image(root / "lisa" / "palette.gif", mode="P", fmt="GIF")
    (root / "bart" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "lisa" / "notes.txt").write_text("not an image")
    (root / "lisa" / "empty.png").write_bytes(b"")
    whole = (root / "lisa" / "pic_0000.jpg").read_bytes()
    (root / "lisa" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "stray.jpg").write_bytes((root / "bart" / "pic_0000.jpg").read_bytes())

    data = load_dataset(folder_cfg(root))

    skipped = {Path(s.path).name: s.reason for s in data.skipped}
    assert set(skipped) == {"corrupt.jpg", "notes.txt", "empty.png", "truncated.jpg", "stray.jpg"}
    assert "not a decodable image" in skipped["notes.txt"]
    assert "class folder" in skipped["stray.jpg"]
    assert data.class_names == ["bart", "lisa"]
    names = sorted(data.train.names + data.val.names)
    assert {"bart/gray.png", "bart/alpha.png", "lisa/palette.png", "lisa/palette.gif"} <= set(names)
    assert len(names) == 14

    batches = list(image_dataset(data.train.paths, data.train.labels, image_size=24, batch_size=32))
    images, labels = batches[0]
    assert images.shape == (len(data.train), 24, 24, 3)
    assert images.dtype.name == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255
    np.testing.assert_array_equal(labels.numpy(), data.train.labels)


def test_a_class_with_no_usable_image_is_an_error(tmp_path):
    root = tmp_path / "train"
    make_classes(root, {"bart": 4, "lisa": 4})
    (root / "maggie").mkdir()
    (root / "maggie" / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'maggie' .* has no usable images"):
        load_dataset(folder_cfg(root))


def test_missing_kaggle_data_says_how_to_get_it_and_how_to_run_the_demo(tmp_path):
    cfg = train_settings(["data=simpsons", f"data.dir={tmp_path / 'nowhere'}"]).data
    with pytest.raises(DataError) as error:
        load_dataset(cfg)
    message = str(error.value)
    assert "nowhere/simpsons_dataset" in message
    assert "the-simpsons-characters-dataset" in message
    assert "experiment=demo" in message
    assert "\n" not in message


def test_kaggle_layout_nested_twice_with_a_flat_filename_labelled_test_set(tmp_path):
    make_classes(
        tmp_path / "simpsons_dataset" / "simpsons_dataset", {"bart_simpson": 10, "lisa_simpson": 10, "disco_stu": 3}
    )
    test = tmp_path / "kaggle_simpson_testset"
    for name in ["bart_simpson_0.jpg", "bart_simpson_1.jpg", "lisa_simpson_7.jpg", "troy_mcclure_2.jpg"]:
        save_image(test / name)
    save_image(test / "unlabelled.jpg")

    data = load_dataset(train_settings(["data=simpsons", f"data.dir={tmp_path}"]).data)

    assert data.class_names == ["bart_simpson", "lisa_simpson"]
    assert data.dropped_classes == {"disco_stu": 3}
    assert data.unknown_test_classes == {"troy_mcclure": 1}
    assert data.test.names == ["bart_simpson_0.jpg", "bart_simpson_1.jpg", "lisa_simpson_7.jpg"]
    assert data.test.labels.tolist() == [0, 0, 1]
    assert [Path(s.path).name for s in data.skipped] == ["unlabelled.jpg"]
    assert len(data.train) + len(data.val) == 20


def test_split_is_stratified_disjoint_and_seeded(tmp_path):
    root = tmp_path / "train"
    make_classes(root, {"bart": 10, "homer": 20, "lisa": 30})
    first = load_dataset(folder_cfg(root, "data.val_split=0.2"))
    again = load_dataset(folder_cfg(root, "data.val_split=0.2"))
    other = load_dataset(folder_cfg(root, "data.val_split=0.2", "data.split_seed=7"))

    assert not set(first.train.names) & set(first.val.names)
    assert len(first.train) + len(first.val) == 60
    assert np.bincount(first.val.labels).tolist() == [2, 4, 6]
    assert first.val.names == again.val.names == sorted(first.val.names)
    assert first.val.names != other.val.names


def test_too_few_images_for_the_split_is_a_clear_error(tmp_path):
    root = tmp_path / "train"
    make_classes(root, {name: 2 for name in "abcdef"})
    with pytest.raises(DataError, match=r"data.val_split=0.2 cannot split 12 images of 6 classes"):
        load_dataset(folder_cfg(root))


def test_fingerprint_follows_content_not_location(tmp_path):
    root = tmp_path / "a" / "train"
    make_classes(root, {"bart": 4, "lisa": 4})
    moved = tmp_path / "b" / "train"
    shutil.copytree(root, moved)
    original = load_dataset(folder_cfg(root)).fingerprint
    assert load_dataset(folder_cfg(moved)).fingerprint == original

    save_image(moved / "lisa" / "pic_0001.jpg", seed=999)
    assert load_dataset(folder_cfg(moved)).fingerprint != original


def test_demo_data_is_byte_identical_each_time(tmp_path):
    write_demo_data(tmp_path / "one", train_per_class=3, test_per_class=1, size=32, seed=0)
    write_demo_data(tmp_path / "two", train_per_class=3, test_per_class=1, size=32, seed=0)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.jpg"))
    assert len(files) == 4 * 4
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)


def test_demo_data_config_generates_once_into_data_dir(tmp_path):
    cfg = train_settings(["data=demo", f"data.dir={tmp_path / 'demo'}", "data.generate.train_per_class=5"]).data
    data = load_dataset(cfg)
    assert len(data.class_names) == 4
    assert len(data.train) + len(data.val) == 20
    assert len(data.test) == 4 * cfg.generate.test_per_class
    stamp = (tmp_path / "demo" / "train" / "red_circle" / "img_0000.jpg").stat().st_mtime_ns
    assert load_dataset(cfg).fingerprint == data.fingerprint
    assert (tmp_path / "demo" / "train" / "red_circle" / "img_0000.jpg").stat().st_mtime_ns == stamp
