"""Accuracy evaluation: where it runs (GPU or CPU), streamed data on Ray, and reuse by store key.

This machine has no GPU, so the GPU path is tested as far as a CPU host
allows, honestly: the placement rule on its own, and a real Ray cluster that
*declares* a GPU (``num_gpus=1``), whose tasks are scheduled as GPU tasks
and, finding no CUDA in torch, evaluate on the CPU and say so.  On a host
with CUDA the same test checks that the GPU result matches the CPU one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hwsearch.accuracy_eval import (
    EvalSettings,
    Placement,
    choose_placement,
    evaluate_subnets,
    subnet_accuracy,
    torch_device,
)
from hwsearch.evaldata import DataPlan
from hwsearch.jobs.spec import SupernetRef, build_supernet
from hwsearch.store import MemoryStore
from tests._jobs import SUPERNET


def test_placement_uses_a_gpu_only_when_the_cluster_has_one() -> None:
    settings = EvalSettings(batch_size=32, gpu_batch_size=512, gpu_loader_threads=6)
    assert choose_placement(settings, {"CPU": 16.0}) == Placement(False, 1, 0.0, 32, 1)
    assert choose_placement(settings, {"CPU": 16.0, "GPU": 2.0}) == Placement(True, 6, 1.0, 512, 6)
    assert choose_placement(settings, {"CPU": 2.0, "GPU": 1.0}).num_cpus == 2  # never unschedulable
    assert not choose_placement(EvalSettings(device="cpu"), {"CPU": 8.0, "GPU": 1.0}).use_gpu
    with pytest.raises(ValueError, match="no GPU"):
        choose_placement(EvalSettings(device="cuda"), {"CPU": 8.0})


def test_a_cpu_placement_never_asks_torch_for_cuda() -> None:
    assert torch_device(Placement(False, 1, 0.0, 64, 1)) == "cpu"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 JPEGs in 4 classes; each class is brighter in its own channel, so accuracy is not a constant."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for i in range(40):
        label = i % 4
        pixels = rng.integers(0, 120, size=(48 + i, 40, 3), dtype=np.uint8)
        pixels[..., label % 3] += 100
        (root / f"class{label}").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / f"class{label}" / f"{i}.jpg")
    return root


def test_streamed_evaluation_on_a_gpu_declaring_cluster_and_reuse_by_key(folder: Path) -> None:
    import ray
    import torch

    net = build_supernet(SupernetRef(**SUPERNET))
    archs = [net.space.smallest(), net.space.largest()]
    plan = DataPlan(str(folder), n_calibration=8, subset=24)
    split = plan.open(size=32)
    dataset_id = plan.dataset_id(split)
    settings = EvalSettings(batch_size=8, gpu_batch_size=16, gpu_loader_threads=2, chunk=1)
    store, reports = MemoryStore(), []
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        found = evaluate_subnets(net, archs, split, store=store, dataset_id=dataset_id,
                                 settings=settings, report=reports.append)
    finally:
        ray.shutdown()
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert [r["gpu_requested"] for r in reports] == [True, True]
    assert {r["device"] for r in reports} == {expected_device}
    assert all(r["images"] == 32 and r["images_per_s"] > 0 for r in reports)
    on_cpu = [subnet_accuracy(net, a, split.calibration, split.validation, settings) for a in archs]
    assert [found[a.key()] for a in archs] == pytest.approx(on_cpu, abs=1 / 24 + 1e-9)
    assert all(round(found[a.key()] * 24) == found[a.key()] * 24 for a in archs)
    # The same plan names the same key: stored accuracies are reused, no Ray needed.
    again = DataPlan(str(folder), n_calibration=8, subset=24)
    assert again.dataset_id(again.open(size=32)) == dataset_id
    assert evaluate_subnets(net, archs, split, store=store, dataset_id=dataset_id,
                            report=reports.append) == found
    assert len(reports) == 2


def _four_subnets_on_a_cluster(folder: Path, cpus: int, net: Any = None) -> tuple[list[Any], dict[str, float],
                                                                                   list[dict]]:
    """Four subnets evaluated on a real Ray of ``cpus`` CPUs: the archs, their accuracies, each task's report."""
    import ray

    net = net or build_supernet(SupernetRef(**SUPERNET))
    archs = net.space.sample(1, 4)
    plan = DataPlan(str(folder), n_calibration=8, subset=24)
    split = plan.open(size=32)
    reports: list[dict] = []
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        found = evaluate_subnets(net, archs, split, store=MemoryStore(), dataset_id=plan.dataset_id(split),
                                 settings=EvalSettings(batch_size=8), report=reports.append)
    finally:
        ray.shutdown()
    return archs, found, reports


def test_a_few_subnets_are_spread_over_the_clusters_cores(folder: Path) -> None:
    """A refinement round's 4 subnets went to one task (chunks of 4) while the other core sat idle: 33 s of one
    round's 54 at full scale. Chunks stay at most ``chunk`` and are cut so that each core gets one."""
    from hwsearch.accuracy_eval import eval_chunks

    assert [len(c) for c in eval_chunks(list(range(4)), 4, 2)] == [2, 2]
    assert [len(c) for c in eval_chunks(list(range(9)), 4, 2)] == [4, 4, 1]
    assert [len(c) for c in eval_chunks(list(range(3)), 4, 8)] == [1, 1, 1]
    assert eval_chunks([], 4, 2) == []
    archs, found, reports = _four_subnets_on_a_cluster(folder, cpus=2)
    assert len(reports) == 2 and sorted(found) == sorted(a.key() for a in archs)


def test_heavy_subnets_are_evaluated_one_per_task(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk reports when it is done: 4 full-size subnets on 200 images kept a job's progress still for 71 s."""
    from hwsearch import accuracy_eval
    from hwsearch.accuracy_eval import CHUNK_MACS, eval_chunks

    assert [len(c) for c in eval_chunks(list(range(9)), 4, 2, [CHUNK_MACS / 2] * 9)] == [2, 2, 2, 2, 1]
    assert [len(c) for c in eval_chunks(list(range(3)), 4, 1, [CHUNK_MACS * 3] * 3)] == [1, 1, 1]
    assert [len(c) for c in eval_chunks(list(range(5)), 4, 1, [1.0] * 5)] == [4, 1]
    net = build_supernet(SupernetRef(**SUPERNET))
    # As if these tiny subnets were full-size: each one's MACs on a single image already exceed a task's share.
    monkeypatch.setattr(accuracy_eval, "CHUNK_MACS", min(float(net.count(a).macs) for a in net.space.sample(1, 4)) / 2)
    archs, found, reports = _four_subnets_on_a_cluster(folder, cpus=1, net=net)
    assert len(reports) == 4 and sorted(found) == sorted(a.key() for a in archs)


def test_labels_past_the_supernets_head_are_refused_before_any_evaluation(tmp_path: Path) -> None:
    """Labels up to 999 for a 10-class head: no subnet can predict them, and the job succeeded with low accuracies."""
    from hwsearch.data import load_images

    supernet = build_supernet(SupernetRef(**SUPERNET))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y=np.r_[np.arange(39) % 10, 999])
    with pytest.raises(ValueError, match="labels reach class 999 but supernet '.*' predicts 10 classes"):
        evaluate_subnets(supernet, supernet.space.sample(0, 1), load_images(tmp_path / "wide.npz", size=32),
                         store=MemoryStore(), dataset_id="wide")


def test_calibration_images_of_one_value_per_channel_are_refused_before_any_evaluation(tmp_path: Path) -> None:
    """All-zero images: batch norm divides by its epsilon alone, and a job on them succeeded."""
    from hwsearch.data import load_images

    np.savez(tmp_path / "zeros.npz", x=np.zeros((40, 32, 32, 3), np.uint8), y=np.arange(40) % 10)
    with pytest.raises(ValueError, match="hold one value per channel"):
        supernet = build_supernet(SupernetRef(**SUPERNET))
        evaluate_subnets(supernet, supernet.space.sample(0, 1), load_images(tmp_path / "zeros.npz", size=32),
                         store=MemoryStore(), dataset_id="zeros")


@pytest.mark.parametrize("empty", ["a-empty", "zz-empty"])
def test_an_empty_class_folder_is_refused_naming_it_not_counted_as_a_class(tmp_path: Path, empty: str) -> None:
    """Ten class folders and an empty eleventh were refused as 11 classes for a 10-class head; an empty folder
    that sorts first (macOS's __MACOSX) shifted every label by one, and a job on it succeeded."""
    from hwsearch.imagefolder import ImageFolder

    for label in range(10):
        (tmp_path / f"c{label}").mkdir()
        Image.new("RGB", (8, 8), (25 * label, 0, 0)).save(tmp_path / f"c{label}" / "0.png")
    (tmp_path / empty).mkdir()
    with pytest.raises(ValueError, match=f"class folder '{empty}' holds no images"):
        ImageFolder.scan(tmp_path)


def _check_folder_both_ways(root: Path, refused: str | None) -> None:
    """``check_eval_data`` on ``root`` streamed and in memory: refused with ``refused`` (a pattern), or passed."""
    from hwsearch.accuracy_eval import check_eval_data
    from hwsearch.data import load_images
    from hwsearch.imagefolder import ImageFolder

    supernet = build_supernet(SupernetRef(**SUPERNET))  # a head of 10 classes
    for data in (ImageFolder.scan(root), load_images(root, size=8)):
        if refused is None:
            check_eval_data(supernet, data)
        else:
            with pytest.raises(ValueError, match=refused):
                check_eval_data(supernet, data)


@pytest.mark.parametrize("n_folders, refused", [(3, True), (10, False)], ids=["subset", "all"])
def test_a_subset_of_imagenet_class_folders_is_refused_as_not_the_heads_indices(
        tmp_path: Path, n_folders: int, refused: bool) -> None:
    """Sorted WordNet ids are ImageNet's indices only when every class is there; a subset scored near zero."""
    for label in range(n_folders):
        (tmp_path / f"n0{label * 7:07d}").mkdir()
        Image.new("RGB", (8, 8), (25 * label, 0, 0)).save(tmp_path / f"n0{label * 7:07d}" / "0.png")
    _check_folder_both_ways(tmp_path, r"3 class folders are ImageNet WordNet ids, numbered 0\.\.2 .* among the 10 "
                                      r"classes .* name each folder by its class index" if refused else None)


@pytest.mark.parametrize("folder, refused", [("images", True), ("7", False)], ids=["named", "numbered"])
def test_one_named_class_folder_is_refused_as_labelling_every_image_0(
        tmp_path: Path, folder: str, refused: bool) -> None:
    """A root holding one ``images/`` folder labelled all its images 0, whatever their classes; ``7/`` means class 7."""
    from hwsearch.accuracy_eval import check_eval_data
    from hwsearch.data import load_images

    (tmp_path / "data" / folder).mkdir(parents=True)
    for value in range(3):
        Image.new("RGB", (8, 8), (25 * value, 0, 0)).save(tmp_path / "data" / folder / f"{value}.png")
    _check_folder_both_ways(tmp_path / "data", r"its one class folder 'images' labels every image class 0 of the 10 "
                                               r".* a folder of its own, or name the folder by its class index"
                            if refused else None)
    np.savez(tmp_path / "zeros.npz", x=np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3) % 251,
             y=np.zeros(3, np.int64))
    check_eval_data(build_supernet(SupernetRef(**SUPERNET)),  # labels the user gave, all of class 0
                    load_images(tmp_path / "zeros.npz", size=8))


def test_a_calibration_folder_is_judged_by_its_images_not_its_labels(tmp_path: Path) -> None:
    """Calibration only re-estimates batch norm: a slice of training images in one named folder, or 100 ImageNet
    class folders, were refused as labels no accuracy could be read from."""
    from hwsearch.accuracy_eval import check_eval_data

    rng = np.random.default_rng(0)
    for label in range(10):
        (tmp_path / "val" / str(label)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "val" / str(label) / "0.png")
    for folder in ("train_slice", *(f"n0{i * 7:07d}" for i in range(3))):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / folder / "0.png")
    (tmp_path / "one-folder").mkdir()
    (tmp_path / "train_slice").rename(tmp_path / "one-folder" / "train_slice")
    (tmp_path / "wordnet").mkdir()
    for folder in (f"n0{i * 7:07d}" for i in range(3)):
        (tmp_path / folder).rename(tmp_path / "wordnet" / folder)
    supernet = build_supernet(SupernetRef(**SUPERNET))  # a head of 10 classes
    for calibration in ("one-folder", "wordnet"):
        plan = DataPlan(str(tmp_path / "val"), calibration=str(tmp_path / calibration), n_calibration=1)
        check_eval_data(supernet, plan.open(size=8))
    with pytest.raises(ValueError, match="its one class folder 'train_slice' labels every image class 0"):
        check_eval_data(supernet, DataPlan(str(tmp_path / "one-folder"), calibration=str(tmp_path / "val"),
                                           n_calibration=1).open(size=8))
