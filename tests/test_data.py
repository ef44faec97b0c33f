"""Streamed validation data: OFA preprocessing, memory, subsets and their intervals, store identity.

Images are real files written with PIL; the reference preprocessing is
written here independently (the torchvision recipe done by hand), and the
intervals are checked against textbook values and by simulation.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwsearch.data import batches, load_images, open_images
from hwsearch.evaldata import DataPlan, wilson_interval
from hwsearch.imagefolder import ImageFolder

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _reference(path: Path, r: int) -> torch.Tensor:
    """torchvision's Resize(ceil(r/0.875)) + CenterCrop(r) + ToTensor + Normalize, by hand."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        short = math.ceil(r / 0.875)
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize(size, Image.Resampling.BILINEAR)
        pixels = np.array(img)
    top = round((pixels.shape[0] - r) / 2.0)
    left = round((pixels.shape[1] - r) / 2.0)
    crop = torch.from_numpy(pixels[top:top + r, left:left + r].copy()).permute(2, 0, 1)
    return (crop.float().div(255) - MEAN) / STD


def _picture(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth gradient plus noise: JPEG keeps it recognisable, and every pixel differs."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    ramp = np.add.outer(np.linspace(0, 180, h), np.linspace(0, 60, w))
    noise = rng.integers(0, 15, size=shape)
    base = ramp[..., None] if len(shape) == 3 else ramp
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of varied images: landscape JPEG, portrait PNG, grey, RGBA, smaller than the crop."""
    root = tmp_path_factory.mktemp("folder")
    (root / "a").mkdir()
    (root / "b").mkdir()
    Image.fromarray(_picture((375, 500, 3), 0)).save(root / "a" / "land.jpg", quality=90)
    Image.fromarray(_picture((451, 300, 3), 1)).save(root / "a" / "port.png")
    Image.fromarray(_picture((240, 320), 2), mode="L").save(root / "b" / "grey.png")
    Image.fromarray(_picture((200, 260, 4), 3), mode="RGBA").save(root / "b" / "alpha.png")
    Image.fromarray(_picture((80, 100, 3), 4)).save(root / "b" / "small.jpg")
    (root / "b" / "readme.txt").write_text("not an image")
    return root


def test_known_torchvision_geometry_for_a_500x375_image() -> None:
    from hwsearch.preprocess import center_crop_box, resize_shorter_size

    # torchvision: Resize(256) on 500x375 gives 341x256; CenterCrop(224) starts at round(58.5)=58, 16.
    assert resize_shorter_size(500, 375, 224) == (341, 256)
    assert center_crop_box(341, 256, 224) == (58, 16, 282, 240)
    assert resize_shorter_size(300, 451, 160) == (183, 275)  # ceil(160/0.875) = 183


@pytest.mark.parametrize("resolution", [224, 160, 57])
def test_streamed_preprocessing_matches_the_reference(folder: Path, resolution: int) -> None:
    data = open_images(folder)
    assert isinstance(data, ImageFolder) and data.classes == ("a", "b")
    assert data.files == ("a/land.jpg", "a/port.png", "b/alpha.png", "b/grey.png", "b/small.jpg")
    got = torch.cat([x for x, _ in batches(data, resolution, batch_size=2)])
    labels = torch.cat([y for _, y in batches(data, resolution, batch_size=2)])
    expected = torch.stack([_reference(folder / name, resolution) for name in data.files])
    assert got.shape == (5, 3, resolution, resolution) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == [0, 0, 1, 1, 1]


def test_threaded_decoding_gives_the_same_batch(folder: Path) -> None:
    data = open_images(folder)
    one = next(iter(batches(data, 96, batch_size=5)))[0]
    four = next(iter(batches(data, 96, batch_size=5, threads=4)))[0]
    assert torch.equal(one, four)


def test_in_memory_folder_loading_uses_the_same_preprocessing(folder: Path) -> None:
    loaded = load_images(folder, size=128)
    streamed = torch.cat([x for x, _ in batches(open_images(folder), 128, batch_size=8)])
    torch.testing.assert_close(loaded.x, streamed)


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        next(iter(batches(open_images(tmp_path), 32)))


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    from hwsearch.preprocess import MAX_IMAGE_PIXELS

    (tmp_path / "c").mkdir()
    side = math.isqrt(MAX_IMAGE_PIXELS)
    Image.new("1", (side, side)).save(tmp_path / "c" / "fits.png")  # 1-bit: a few KB for 50M pixels
    Image.new("1", (side + 1, side + 1)).save(tmp_path / "c" / "bomb.png")
    assert (tmp_path / "c" / "bomb.png").stat().st_size < 100_000
    data = open_images(tmp_path)
    assert data.files == ("c/bomb.png", "c/fits.png")
    with pytest.raises(ValueError, match=rf"bomb.png: {side + 1}x{side + 1} is more than the"):
        next(iter(batches(data, 32)))
    fits, _ = next(iter(batches(data.take(np.array([1])), 32)))
    assert fits.shape == (1, 3, 32, 32) and torch.isfinite(fits).all()


def _write_folder(root: Path, n: int) -> Path:
    for i in range(n):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_picture((90, 120, 3), i)).save(root / f"c{i % 3}" / f"{i}.jpg")
    return root


def _peak_while_streaming(data: ImageFolder, resolution: int, batch_size: int) -> int:
    """Peak Python-visible allocation (numpy arrays included) while every batch is consumed in turn."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for x, _ in batches(data, resolution, batch_size):
            assert x.shape[0] <= batch_size
            del x
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_streaming_holds_one_batch_whatever_the_folder_size(tmp_path: Path) -> None:
    small = open_images(_write_folder(tmp_path / "small", 12))
    large = open_images(_write_folder(tmp_path / "large", 72))
    one_batch = 4 * 3 * 64 * 64 * 4
    peaks = [_peak_while_streaming(data, 64, 4) for data in (small, large)]
    # One batch plus one image's temporaries; a second batch held anywhere would pass 2x.
    assert all(peak < 1.75 * one_batch for peak in peaks), (peaks, one_batch)
    assert peaks[1] < 1.5 * peaks[0] + 64 * 1024, peaks
    # What travels to Ray workers is the list of names, not pixels.
    assert len(pickle.dumps(large)) < 100 * len(large)


def test_a_plan_splits_calibration_from_a_seeded_validation_subset(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "val", 30)
    split = DataPlan(str(root), n_calibration=6, subset=10).open(size=64)
    assert (len(split.calibration), len(split.validation)) == (6, 10)
    assert not set(split.calibration.files) & set(split.validation.files)
    again = DataPlan(str(root), n_calibration=6, subset=10).open(size=64)
    assert again.validation.files == split.validation.files
    other_seed = DataPlan(str(root), n_calibration=6, subset=10, seed=1).open(size=64)
    assert other_seed.validation.files != split.validation.files
    everything = DataPlan(str(root), n_calibration=6).open(size=64)
    assert len(everything.validation) == 24
    assert set(split.validation.files) < set(everything.validation.files)
    separate = DataPlan(str(root), calibration=str(_write_folder(tmp_path / "train", 9)),
                        n_calibration=6).open(size=64)
    assert len(separate.validation) == 30 and len(separate.calibration) == 6
    assert all(Path(separate.calibration.root, f).is_file() for f in separate.calibration.files)
    assert separate.calibration.root != separate.validation.root


def test_arrays_split_and_subset_like_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=rng.integers(0, 256, (40, 24, 24, 3), dtype=np.uint8),
             y=np.arange(40) % 4)
    split = DataPlan(str(tmp_path / "v.npz"), n_calibration=8, subset=12).open(size=24)
    assert (len(split.calibration), len(split.validation)) == (8, 12)
    assert split.validation.x.shape == (12, 3, 24, 24)
    assert split.identity["preprocessing"].startswith("arrays")


def test_store_key_changes_with_every_choice_and_only_then(tmp_path: Path, folder: Path) -> None:
    root = _write_folder(tmp_path / "val", 30)

    def key(plan: DataPlan, **kwargs) -> str:
        return plan.dataset_id(plan.open(size=64), **kwargs)

    base = DataPlan(str(root), n_calibration=6, subset=10)
    same = key(base)
    assert key(DataPlan(str(root), n_calibration=6, subset=10)) == same
    assert DataPlan(str(root), n_calibration=6, subset=24).dataset_id(
        DataPlan(str(root), n_calibration=6, subset=24).open(size=64)) == key(
        DataPlan(str(root), n_calibration=6))  # a subset of everything is everything
    different = {
        "subset": key(DataPlan(str(root), n_calibration=6, subset=12)),
        "calibration size": key(DataPlan(str(root), n_calibration=7, subset=10)),
        "seed": key(DataPlan(str(root), n_calibration=6, subset=10, seed=3)),
        "separate calibration": key(DataPlan(str(root), calibration=str(folder), n_calibration=5,
                                             subset=10)),
        "weights": key(base, checkpoint=str(folder / "a" / "land.jpg")),
        "options": key(base, extra={"options": {"n_classes": 10}}),
    }
    assert same not in different.values() and len(set(different.values())) == len(different)
    Image.fromarray(_picture((90, 120, 3), 99)).save(root / "c0" / "new.jpg")
    assert key(base) != same  # the folder's content changed


def test_array_preprocessing_size_is_part_of_the_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=rng.integers(0, 256, (20, 24, 24, 3), dtype=np.uint8),
             y=np.arange(20) % 4)
    plan = DataPlan(str(tmp_path / "v.npz"), n_calibration=4)
    assert plan.dataset_id(plan.open(size=24)) != plan.dataset_id(plan.open(size=32))
    assert plan.dataset_id(plan.open(size=24)) == plan.dataset_id(plan.open(size=24))


def test_wilson_interval_textbook_values() -> None:
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(10, 10)
    assert round(low, 4) == 0.7225 and high == 1.0
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)


def test_wilson_interval_covers_the_true_accuracy_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    for p, n in ((0.75, 200), (0.95, 120), (0.3, 1000)):
        hits = rng.binomial(n, p, size=4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in hits)])
        assert 0.93 <= covered <= 0.97, (p, n, covered)


def test_a_split_reports_its_interval_over_its_validation_images(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "val", 30)
    split = DataPlan(str(root), n_calibration=5, subset=20).open(size=32)
    assert split.interval(0.75) == wilson_interval(15, 20)
    narrower = DataPlan(str(root), n_calibration=5).open(size=32)
    assert narrower.interval(0.76)[1] - narrower.interval(0.76)[0] < \
        split.interval(0.75)[1] - split.interval(0.75)[0]


def test_a_thin_image_that_would_grow_past_the_pixel_bound_when_resized_is_refused(tmp_path: Path) -> None:
    """An 855-byte PNG of 1 x 200,000 pixels passed the decoded bound and took 1.6 GB resized for 32 px."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (1, 200_000)).save(tmp_path / "a" / "thin.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "small.png")
    assert (tmp_path / "a" / "thin.png").stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"thin.png: 1x200000 becomes 37x7400000 when resized for 32 px"):
        next(iter(batches(open_images(tmp_path), 32)))
    with pytest.raises(ValueError, match=r"thin.png: 1x200000 becomes 256x51200000"):
        load_images(tmp_path, size=224)


def _nested_lists(levels: int) -> list:
    """Lists of a thousand references to one list: 1000**levels elements, stored in a few KB."""
    nested: list = [0] * 1000
    for _ in range(levels - 1):
        nested = [nested] * 1000
    return nested


HOSTILE_ARRAYS = {
    "nested-lists.pt": ({"x": _nested_lists(4), "y": [0]}, "'x' must be a tensor, got list"),
    "label-list.pt": ({"x": torch.zeros(2, 3, 8, 8), "y": _nested_lists(3)}, "'y' must be a tensor"),
    "expanded-labels.pt": ({"x": torch.zeros(8, 8, 8, 3, dtype=torch.uint8),
                            "y": torch.zeros(1, dtype=torch.int64).expand(2**28)},
                           r"8 images but labels of shape \(268435456,\)"),
    "huge-label.npz": ({"x": np.zeros((8, 8, 8, 3), np.uint8), "y": np.array([0] * 7 + [2**40])},
                       r"labels must lie in \[0, 100000\), got 0..1099511627776"),
    "negative-label.npz": ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, -1])}, "got -1..0"),
    "fractional-label.npz": ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0.0, 0.5])},
                             "some of its torch.float64 values are not"),
    "string-images.npz": ({"x": np.full((2, 8, 8, 3), "a"), "y": np.array([0, 1])}, "x must hold real numbers"),
    "empty-images.npz": ({"x": np.zeros((2, 3, 0, 0), np.float32), "y": np.array([0, 1])}, "no empty dimension"),
    "no-images.npz": ({"x": np.zeros((0, 8, 8, 3), np.uint8), "y": np.zeros(0, np.int64)}, "no empty dimension"),
    "label-table.npz": ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros((2, 2), np.int64)},
                        r"labels of shape \(2, 2\)"),
    "sparse-images.pt": ({"x": torch.zeros(2, 3, 8, 8).to_sparse(), "y": torch.arange(2)}, "plain dense tensor"),
    "sparse-labels.pt": ({"x": torch.zeros(2, 3, 8, 8), "y": torch.arange(2).to_sparse()}, "plain dense tensor"),
    "meta-images.pt": ({"x": torch.empty(2, 3, 8, 8, device="meta"), "y": torch.arange(2)}, "on device 'meta'"),
    "meta-labels.pt": ({"x": torch.zeros(2, 3, 8, 8), "y": torch.empty(2, device="meta")}, "on device 'meta'"),
    "quantized-images.pt": ({"x": torch.quantize_per_tensor(torch.zeros(2, 3, 8, 8), 0.1, 0, torch.quint8),
                             "y": torch.arange(2)}, "plain dense tensor"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ARRAYS))
def test_hostile_array_files_are_refused_by_name_before_anything_is_copied(tmp_path: Path, name: str) -> None:
    """Each of these froze the service, ran it out of memory or raised a TypeError (a 500) before."""
    content, says = HOSTILE_ARRAYS[name]
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save(content, path)
    else:
        np.savez(path, **content)
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=says) as refused:
        load_images(path, size=8)
    assert name in str(refused.value)


def test_labels_as_a_column_load_as_keras_datasets_store_them(tmp_path: Path) -> None:
    np.savez(tmp_path / "column.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([[0], [2], [1], [2]]))
    assert load_images(tmp_path / "column.npz", size=8).y.tolist() == [0, 2, 1, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.uint16, torch.int32])
def test_every_real_number_tensor_of_images_loads(tmp_path: Path, dtype: torch.dtype) -> None:
    """bfloat16 images raised numpy's TypeError (a 500 over HTTP)."""
    levels = torch.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8).remainder(7)
    x = (levels / 8 if dtype.is_floating_point else levels).to(dtype)  # floats in [0, 1], integers 8-bit values
    torch.save({"x": x, "y": torch.tensor([1, 0])}, tmp_path / "images.pt")
    loaded = load_images(tmp_path / "images.pt", size=8)
    assert loaded.classes == ("0", "1") and torch.isfinite(loaded.x).all()
    scale = 1.0 if dtype.is_floating_point else 255.0
    torch.testing.assert_close(loaded.x[:, 0], (x.float()[:, 0] / scale - MEAN[0]) / STD[0])


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint16, np.uint32])
def test_integer_pixels_of_any_width_are_read_as_8_bit_values(tmp_path: Path, dtype: type) -> None:
    """Only uint8 was divided by 255: int32 digits scored 0.640-0.897 against 0.670-0.900 as uint8."""
    pixels = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    y = np.arange(6) % 2
    np.savez(tmp_path / "u8.npz", x=pixels, y=y)
    np.savez(tmp_path / "wide.npz", x=pixels.astype(dtype), y=y)
    torch.testing.assert_close(load_images(tmp_path / "wide.npz", size=12).x,
                               load_images(tmp_path / "u8.npz", size=12).x)


@pytest.mark.parametrize("x, says", [
    (np.full((4, 8, 8, 3), 256, np.int32), "integer pixels must be 8-bit values in 0..255; x holds 256..256"),
    (np.full((4, 8, 8, 3), -1, np.int64), "x holds -1..-1"),
    (np.arange(4 * 8 * 8 * 3, dtype=np.float32).reshape(4, 8, 8, 3) % 256, "float pixels must lie in [0, 1]"),
    (np.full((4, 3, 8, 8), -2.1, np.float32), "x holds -2.1..-2.1"),  # normalised already: it would be twice
    (np.full((4, 8, 8, 3), 3e38, np.float32), "float pixels must lie in [0, 1]"),
    (np.full((4, 8, 8, 3), np.inf, np.float32), "x holds NaN or infinite pixels"),
], ids=["int-256", "int-negative", "float-0-255", "normalised", "float-3e38", "inf"])
def test_pixels_outside_their_range_are_refused_naming_it(tmp_path: Path, x: np.ndarray, says: str) -> None:
    """Each of these was normalised as if in range and scored, and a job on them succeeded."""
    np.savez(tmp_path / "odd.npz", x=x, y=np.arange(4) % 2)
    with pytest.raises(ValueError, match=re.escape(says)):
        load_images(tmp_path / "odd.npz", size=8)


def test_float_pixels_one_grey_level_past_the_ends_are_rounding_and_load(tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.5 / 255, 1 + 0.5 / 255
    np.savez(tmp_path / "rounded.npz", x=x, y=np.arange(4) % 2)
    loaded = load_images(tmp_path / "rounded.npz", size=8)
    torch.testing.assert_close(loaded.x[:, 0], (torch.from_numpy(x[:, 0]) - MEAN[0]) / STD[0])


def _class_folders(root: Path, names: list[str]) -> Path:
    """One 8-pixel image per class folder, its red channel telling the folders apart."""
    for value, name in enumerate(names):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10 * value, 0, 0)).save(root / name / "0.png")
    return root


@pytest.mark.parametrize("names", [[str(i) for i in range(12)], ["3", "7"], ["007", "10", "999"]],
                         ids=["0-to-11", "subset", "padded"])
def test_folders_named_by_class_index_are_labelled_with_it(tmp_path: Path, names: list[str]) -> None:
    """Sorted order labelled 0..11 as 0, 1, 10, 11, 2, ... and a subset 3, 7 as 0, 1: every accuracy wrong."""
    folder = ImageFolder.scan(_class_folders(tmp_path / "data", names))
    by_folder = {file.split("/")[0]: int(label) for file, label in zip(folder.files, folder.labels)}
    assert by_folder == {name: int(name) for name in names}
    assert folder.numbered_by_name and folder.classes[int(names[-1])] == str(int(names[-1]))
    in_memory = load_images(tmp_path / "data", size=8)
    assert sorted(in_memory.y.tolist()) == sorted(int(name) for name in names)
    assert sorted(folder.take(np.arange(len(folder))[::-1]).labels.tolist()) == sorted(map(int, names))


def test_folders_named_otherwise_keep_sorted_order(tmp_path: Path) -> None:
    folder = ImageFolder.scan(_class_folders(tmp_path, ["class2", "cat", "class10", "\u0663"]))  # an Arabic 3
    assert dict(zip(folder.files, folder.labels.tolist())) == {
        "cat/0.png": 0, "class10/0.png": 1, "class2/0.png": 2, "\u0663/0.png": 3}
    assert not folder.numbered_by_name and folder.classes == ("cat", "class10", "class2", "\u0663")


@pytest.mark.parametrize("names, says", [(["1", "01"], "class folders '01' and '1' name one class index"),
                                         ([*map(str, range(12)), "extra"], "'0' and 'extra' mix class indices"),
                                         (["0", "100000"], "class folder 100000 is past the 100000 classes"),
                                         (["0", "9" * 30], "is past the 100000 classes")],
                         ids=["twice", "mixed", "past", "past-int64"])
def test_folder_numbers_that_cannot_be_labels_are_refused_naming_the_folder(
        tmp_path: Path, names: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ImageFolder.scan(_class_folders(tmp_path, names))


def test_hidden_folders_are_no_classes(tmp_path: Path) -> None:
    """A .ipynb_checkpoints beside folders 0..11 made them all numbered in sorted order, as a class of its own."""
    root = _class_folders(tmp_path, [*map(str, range(12)), ".ipynb_checkpoints"])
    folder = ImageFolder.scan(root)
    assert folder.numbered_by_name and not any(name.startswith(".") for name in folder.files)
    assert dict(zip(folder.files, folder.labels.tolist()))["10/0.png"] == 10


def test_pixels_past_float32_are_refused_without_a_numpy_warning(tmp_path: Path) -> None:
    np.savez(tmp_path / "huge.npz", x=np.full((4, 8, 8, 3), 1e300), y=np.arange(4) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape("NaN or infinite pixels (or pixels past float32's range)")):
            load_images(tmp_path / "huge.npz", size=8)


def test_reading_is_part_of_every_key_of_what_data_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int16 pixels are divided by 255 now: accuracies and exports calibrated on the old reading must not be reused."""
    import hwsearch.evaldata
    from hwsearch.api.service import _plan_digest
    from hwsearch.jobs.spec import SupernetRef
    from tests._jobs import SUPERNET

    np.savez(tmp_path / "d.npz", x=np.zeros((8, 8, 8, 3), np.int16) + np.arange(8).reshape(8, 1, 1, 1),
             y=np.arange(8) % 2)
    plan, ref = DataPlan(str(tmp_path / "d.npz"), n_calibration=4), SupernetRef(**SUPERNET)
    now = (plan.dataset_id(plan.open(size=8)), _plan_digest(plan, ref))
    monkeypatch.setattr(hwsearch.evaldata, "ARRAY_PREPROCESSING", "arrays-v1:stored={size}")
    before = (plan.dataset_id(plan.open(size=8)), _plan_digest(plan, ref))
    assert now[0] != before[0] and now[1] != before[1]


def test_a_folder_plan_numbered_by_name_is_not_the_same_dataset_as_before(tmp_path: Path) -> None:
    """Stored accuracies of these folders were measured with sorted labels; they must not be reused."""
    numbered = DataPlan(str(_class_folders(tmp_path / "n", [str(i) for i in range(12)])), n_calibration=4)
    named = DataPlan(str(_class_folders(tmp_path / "s", [f"c{i:02d}" for i in range(12)])), n_calibration=4)
    assert numbered.open(size=8).identity["labels"] == "folder numbers"
    assert "labels" not in named.open(size=8).identity


def test_a_16_bit_grayscale_image_reads_as_its_8_bit_self(tmp_path: Path) -> None:
    """PIL's convert("RGB") clipped I;16 at 255: a 0..65520 ramp came out 99.6% white, every accuracy on blanks."""
    ramp = (np.arange(48 * 40).reshape(48, 40) * 34).astype(np.uint16)
    for name, pixels in (("sixteen", ramp), ("eight", np.rint(ramp / 257).astype(np.uint8))):
        (tmp_path / name / "c").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / name / "c" / "x.png")
    assert Image.open(tmp_path / "sixteen" / "c" / "x.png").mode == "I;16"
    sixteen, eight = ImageFolder.scan(tmp_path / "sixteen"), ImageFolder.scan(tmp_path / "eight")
    torch.testing.assert_close(next(iter(batches(sixteen, 32)))[0], next(iter(batches(eight, 32)))[0])
    torch.testing.assert_close(load_images(tmp_path / "sixteen", size=32).x, load_images(tmp_path / "eight", size=32).x)


@pytest.mark.parametrize("dtype, says", [(np.int32, "32-bit integers"), (np.float32, "32-bit floats")])
def test_images_of_pixels_with_no_fixed_range_are_refused_naming_the_file(tmp_path: Path, dtype: type,
                                                                          says: str) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((16, 16), 70000, dtype)).save(tmp_path / "c" / "x.tif")
    with pytest.raises(ValueError, match=rf"x\.tif: its pixels are {says}, which have no fixed range"):
        next(iter(batches(ImageFolder.scan(tmp_path), 16)))


def _digit_pool(root: Path, shift: int) -> Path:
    """Ten class folders of distinct images; ``shift`` moves each image to another class."""
    rng = np.random.default_rng(0)
    for label in range(10):
        (root / str((label + shift) % 10)).mkdir(parents=True, exist_ok=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                root / str((label + shift) % 10) / f"{label}-{index}.png")
    return root


def test_datasets_of_linked_class_folders_are_told_apart(tmp_path: Path) -> None:
    """The key's walk did not follow links: two such datasets were their folder names alone, and the second
    reused the first one's accuracies (0.663..0.863 where it scores 0.007..0.023 on its own)."""
    pools = {name: _digit_pool(tmp_path / f"pool-{name}", shift) for name, shift in (("a", 0), ("b", 3))}
    for name, pool in pools.items():
        (tmp_path / name).mkdir()
        for label in range(10):
            (tmp_path / name / str(label)).symlink_to(pool / str(label), target_is_directory=True)
    ids = {name: DataPlan(str(tmp_path / name), n_calibration=4) for name in pools}
    keys = {name: plan.dataset_id(plan.open(size=8)) for name, plan in ids.items()}
    assert keys["a"] != keys["b"]
    assert ImageFolder.scan(tmp_path / "a").files == ImageFolder.scan(pools["a"]).files


def test_a_file_name_that_is_not_utf8_is_read_and_keyed(tmp_path: Path) -> None:
    """A Latin-1 name (zips made on Windows) ended the dataset's key in a UnicodeEncodeError traceback."""
    root = _class_folders(tmp_path / "d", ["0", "1"])
    os.rename(root / "1" / "0.png", os.fsdecode(bytes(root / "1") + b"/caf\xe9.png"))
    plan = DataPlan(str(root), n_calibration=1)
    split = plan.open(size=8)
    assert len(plan.dataset_id(split)) == 16 and sorted(ImageFolder.scan(root).labels.tolist()) == [0, 1]


def test_macos_leftovers_are_no_classes_and_no_images(tmp_path: Path) -> None:
    """A macOS zip's __MACOSX tree sorted first and shifted every label; its ._x.png files failed to decode."""
    root = _class_folders(tmp_path, ["airplane", "bird"])
    (root / "__MACOSX" / "airplane").mkdir(parents=True)
    (root / "__MACOSX" / "airplane" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "bird" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    folder = ImageFolder.scan(root)
    assert dict(zip(folder.files, folder.labels.tolist())) == {"airplane/0.png": 0, "bird/0.png": 1}
    assert next(iter(batches(folder, 8)))[0].shape == (2, 3, 8, 8)


def test_an_unreadable_image_is_named_inside_its_folder(tmp_path: Path) -> None:
    """A service job's error hides paths: 'ValueError: <path>: not a readable image' left 50,000 to search."""
    from hwsearch.jobs.control import describe_error
    from hwsearch.preprocess import UnreadableImage

    root = _class_folders(tmp_path / "d", ["0", "1"])
    (root / "1" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UnreadableImage) as raised:
        list(batches(ImageFolder.scan(root), 8))
    assert str(raised.value).startswith(f"{root}: 1/broken.png: not a readable image"), raised.value
    assert describe_error(raised.value).startswith("UnreadableImage: <path>: 1/broken.png: not a readable image")


def test_an_upper_case_suffix_is_read(tmp_path: Path) -> None:
    """The service's data roots accepted d.NPZ, and the job then failed: 'expected ... a .npz or a .pt file'."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    os.rename(tmp_path / "d.npz", tmp_path / "d.NPZ")
    assert load_images(tmp_path / "d.NPZ", size=8).y.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("y, says", [(np.full(4, 2**64 - 5, np.uint64), "got 18446744073709551616..1844"),
                                     (torch.tensor([0, 1, 2, 3], dtype=torch.uint64), None),
                                     (np.array([np.inf, 0, 1, 2]), "got 0..inf")], ids=["uint64-huge", "torch-uint64",
                                                                                        "inf"])
def test_labels_of_every_integer_width_are_read_or_refused_with_their_values(tmp_path: Path, y: object,
                                                                             says: str | None) -> None:
    """uint64 labels near 2**64 were reported as -8..-5; a torch uint64 tensor of labels crashed in min()."""
    torch.save({"x": torch.zeros(4, 8, 8, 3, dtype=torch.uint8), "y": torch.as_tensor(y)}, tmp_path / "d.pt")
    if says is None:
        assert load_images(tmp_path / "d.pt", size=8).y.tolist() == [0, 1, 2, 3]
    else:
        with pytest.raises(ValueError, match=re.escape(says)):
            load_images(tmp_path / "d.pt", size=8)


def test_images_below_a_class_folder_are_read_with_its_label(tmp_path: Path) -> None:
    """Images a level or more below their class folder (``cat/2019/x.png``) were skipped, as torchvision does not."""
    root = _class_folders(tmp_path / "d", ["bird", "cat"])
    for depth, sub in enumerate(["2019", "2019/june", "2020"], start=1):
        (root / "cat" / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8), (0, 30 * depth, 0)).save(root / "cat" / sub / "x.png")
    (root / "cat" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(root / "cat" / ".thumbs" / "x.png")
    (root / "bird" / "linked").symlink_to(root / "cat" / "2020", target_is_directory=True)
    folder = ImageFolder.scan(root)
    assert dict(zip(folder.files, folder.labels.tolist())) == {
        "bird/0.png": 0, "bird/linked/x.png": 0,
        "cat/0.png": 1, "cat/2019/june/x.png": 1, "cat/2019/x.png": 1, "cat/2020/x.png": 1}
    assert len(load_images(root, size=8)) == 6 and next(iter(batches(folder, 8)))[0].shape == (6, 3, 8, 8)
    plan = DataPlan(str(root), n_calibration=2)
    key = plan.dataset_id(plan.open(size=8))
    (root / "cat" / "2019" / "june" / "x.png").unlink()
    assert plan.dataset_id(plan.open(size=8)) != key, "a nested image is part of the dataset's key"


def test_a_link_back_up_and_folders_nested_past_the_bound_are_refused(tmp_path: Path) -> None:
    """A walk that followed a link to a folder it was in would never end; a deep tree hit the recursion limit."""
    from hwsearch.imagefolder import MAX_NESTING

    loop = _class_folders(tmp_path / "loop", ["a", "b"])
    (loop / "a" / "sub").mkdir()
    (loop / "a" / "sub" / "up").symlink_to(loop / "a", target_is_directory=True)
    with pytest.raises(ValueError, match=r"a/sub/up links back to a folder it is inside"):
        ImageFolder.scan(loop)
    deep = _class_folders(tmp_path / "deep", ["a", "b"])
    bottom = deep / "a" / Path(*["n"] * MAX_NESTING)
    bottom.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bottom / "x.png")
    assert len(ImageFolder.scan(deep)) == 3
    (bottom / "n").mkdir()
    with pytest.raises(ValueError, match=rf"is nested more than {MAX_NESTING} folders below its class folder"):
        ImageFolder.scan(deep)


def test_a_folder_reached_by_many_links_is_read_once(tmp_path: Path) -> None:
    """Four links in each of 13 folders to the next made a walk of 4**13 folders (killed at 60 s); the depth
    bound did not stop it, since no path was deeper than 14."""
    root = _class_folders(tmp_path / "d", ["a", "b"])
    chain = [root / "b" / f"L{i}" for i in range(14)]
    for folder in chain:
        folder.mkdir()
    Image.new("RGB", (8, 8)).save(chain[-1] / "deep.png")
    for here, below in zip(chain, chain[1:]):
        for name in "wxyz":
            (here / name).symlink_to(below, target_is_directory=True)
    folder = ImageFolder.scan(root)
    assert sorted(folder.files) == ["a/0.png", "b/0.png", "b/L0/w/w/w/w/w/w/w/w/w/w/w/w/w/deep.png"]
