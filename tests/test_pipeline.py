"""Profiling pipeline on real exported subnets measured with real onnxruntime (small N).

One module-scoped run profiles a couple of dozen OFA-MobileNetV3 subnets at
128 px into a SQLite store; the tests then check the rows, resumption, a
predictor trained on those real latencies, and the ``profile``/``train`` CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwsearch.families.ofa_mbv3.layout import ofa_mbv3_space
from hwsearch.families.ofa_resnet.layout import ofa_resnet50_space
from hwsearch.pipeline import profile_subnets, select_subnets
from hwsearch.store import SQLiteStore
from predictors.dataset import MeasurementSet
from predictors.features import ArchFeaturizer
from predictors.latency import LatencyPredictor
from predictors.metrics import regression_report


def device_key(profile) -> str:
    """What a local device's rows are filed under: the profile on this host."""
    from devices import open_profiler

    return open_profiler(profile).device_key()

pytestmark = pytest.mark.slow
N_SUBNETS = 24
RESOLUTION = 128


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("space", [ofa_mbv3_space(), ofa_resnet50_space()], ids=lambda s: s.name)
def test_selection_covers_small_and_large_subnets(space) -> None:
    picked = select_subnets(space, 60, seed=3)
    assert len(picked) == 60 and len({a.key() for a in picked}) == 60
    assert space.smallest() in picked and space.largest() in picked
    featurizer = ArchFeaturizer(space)
    ours = np.log(featurizer.macs(space.encode_many(picked)))
    uniform = np.log(featurizer.macs(space.encode_many(space.sample(3, 600))))
    assert ours.std() > uniform.std()  # more spread than uniform gene sampling
    assert len({a.resolution for a in picked}) > 5
    assert select_subnets(space, 60, seed=3) == picked  # deterministic: runs can resume
    assert select_subnets(space, 1, seed=3) == [space.smallest()]  # n, even below the two extremes


def test_selection_pins_resolution_and_excludes_keys() -> None:
    space = ofa_mbv3_space()
    first = select_subnets(space, 30, seed=1, resolution=160)
    second = select_subnets(space, 30, seed=2, resolution=160, exclude=[a.key() for a in first])
    assert {a.resolution for a in first + second} == {160}
    assert not {a.key() for a in first} & {a.key() for a in second}


# --------------------------------------------------------------------------- real profiling


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory):
    supernets = pytest.importorskip("hwsearch.supernets")
    from devices import open_profiler
    from devices.profile import DeviceProfile, Protocol, Warmup

    root = tmp_path_factory.mktemp("pipeline")
    profile = DeviceProfile(
        name="test-cpu-1thread", intra_op_threads=1, warmup=Warmup(runs=3, seconds=0.1),
        protocol=Protocol(min_rounds=6, max_rounds=40, max_seconds=20.0, ci_target=0.03))
    (root / "device.json").write_text(json.dumps(profile.to_dict()))
    net = supernets.create_supernet("ofa_mbv3_d234_e346_k357_w1.0")
    archs = select_subnets(net.space, N_SUBNETS, seed=5, resolution=RESOLUTION)
    store = SQLiteStore(root / "store.db")
    events: list[dict] = []
    report = profile_subnets(net, archs[:-4], open_profiler(profile), device_key(profile), store,
                             chunk=10, progress=events.append)
    return net, archs, profile, store, report, events, root


def test_rows_hold_measurement_arch_and_costs(profiled) -> None:
    net, archs, profile, store, report, events, _ = profiled
    assert report.measured == N_SUBNETS - 4 and report.skipped == 0
    assert events[-1]["done"] == N_SUBNETS - 4
    rows = store.get_latencies(device_key(profile), net.space.network_id)
    assert set(rows) == {a.key() for a in archs[:-4]}
    featurizer = ArchFeaturizer(net.space)
    for arch in archs[:-4]:
        row = rows[arch.key()]
        assert row["latency_ms"] > 0 and row["ratio"] > 0 and row["device_hash"] == profile.hash()
        assert net.space.from_dict(row["arch"]) == arch
        assert row["macs"] == int(featurizer.macs(net.space.encode_many([arch]))[0])
        assert row["env"]["reference_ms"] > 0


def test_second_run_measures_only_what_is_missing(profiled) -> None:
    from devices import open_profiler

    net, archs, profile, store, _, _, _ = profiled
    report = profile_subnets(net, archs, open_profiler(profile), device_key(profile), store,
                             chunk=10)
    assert report.skipped == N_SUBNETS - 4 and report.measured == 4
    again = profile_subnets(net, archs, open_profiler(profile), device_key(profile), store)
    assert again.measured == 0 and again.skipped == N_SUBNETS


class _CountingProfiler:
    """A real profiler that also records every session it runs (what was measured, and the results)."""

    def __init__(self, profiler) -> None:
        self.profiler, self.sessions = profiler, []

    def measure_many(self, paths):
        results = self.profiler.measure_many(paths)
        self.sessions.append([m.ratio_ci for m in results])
        return results


def test_unstable_measurements_are_retried_and_the_tighter_one_kept(profiled, tmp_path) -> None:
    from devices import open_profiler
    from devices.profile import DeviceProfile, Protocol, Warmup

    net, archs, _, _, _, _, _ = profiled
    # A CI target no session can meet: every measurement comes back unstable.
    strict = DeviceProfile(name="strict", intra_op_threads=1, warmup=Warmup(runs=1, seconds=0.0),
                           protocol=Protocol(min_rounds=6, max_rounds=6, ci_target=1e-9))
    for retries, sessions in ((0, 1), (2, 3)):
        store = SQLiteStore(tmp_path / f"strict-{retries}.db")
        spy = _CountingProfiler(open_profiler(strict))
        report = profile_subnets(net, archs[:3], spy, strict.hash(), store, retries=retries)
        assert len(spy.sessions) == sessions and all(len(s) == 3 for s in spy.sessions)
        assert report.unstable == 3
        rows = store.get_latencies(strict.hash(), net.space.network_id)
        for i, arch in enumerate(archs[:3]):
            tried = [s[i] for s in spy.sessions]
            assert rows[arch.key()]["ratio_ci"] == min(tried)


def test_a_run_is_cut_into_chunks_of_near_equal_size(profiled, tmp_path) -> None:
    """Five subnets in chunks of at most 4 are measured 3 + 2, not 4 + 1: no session is left with a straggler."""
    from devices import open_profiler
    from devices.profile import DeviceProfile, Protocol, Warmup

    net, archs, _, _, _, _, _ = profiled
    quick = DeviceProfile(name="quick", intra_op_threads=1, warmup=Warmup(runs=1, seconds=0.0),
                          protocol=Protocol(min_rounds=5, max_rounds=10, ci_target=0.5))
    spy = _CountingProfiler(open_profiler(quick))
    store = SQLiteStore(tmp_path / "chunks.db")
    report = profile_subnets(net, archs[:5], spy, quick.hash(), store, chunk=4, retries=0, anchor_tolerance=None)
    assert [len(session) for session in spy.sessions] == [3, 2]
    rows = store.get_latencies(quick.hash(), net.space.network_id)
    assert report.measured == 5 and set(rows) == {a.key() for a in archs[:5]}
    assert len({row["session_id"] for row in rows.values()}) == 2
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        profile_subnets(net, archs[5:6], spy, quick.hash(), store, chunk=0)
    assert len(spy.sessions) == 2 and archs[5].key() not in store.get_latencies(quick.hash(), net.space.network_id)


def test_predictor_ranks_real_latencies(profiled) -> None:
    net, archs, profile, store, _, _, _ = profiled
    data = MeasurementSet.from_latencies(net.space, store.get_latencies(device_key(profile),
                                                                        net.space.network_id))
    macs = ArchFeaturizer(net.space).macs(data.X)
    order = np.argsort(macs)
    test_idx, train_idx = order[1::3], np.setdiff1d(order, order[1::3])
    model = LatencyPredictor(net.space, device_hash=profile.hash(), n_members=3).fit(
        data.X[train_idx], data.y[train_idx], X_test=data.X[test_idx], y_test=data.y[test_idx])
    report = model.meta.metrics["test"]
    assert report["tau"] > 0.6 and report["mape"] < 25
    assert "cv" in model.meta.metrics
    mean, std = model.predict_dist(data.X[test_idx])
    assert np.all(mean > 0) and np.all(std >= 0)
    assert regression_report(data.y[test_idx], mean)["n"] == len(test_idx)


def test_train_cli_fits_saves_and_reports(profiled) -> None:
    from typer.testing import CliRunner

    from hwsearch.cli.main import app

    net, _, profile, store, _, _, root = profiled
    out = root / "predictor"
    result = CliRunner().invoke(app, ["train", "--target", "latency", "--device",
                                      str(root / "device.json"), "--store", str(store.path),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["device_hash"] == device_key(profile) and meta["space_name"] == net.space.name
    assert {"cv"} <= set(meta["metrics"])
    loaded = LatencyPredictor.load(out, space=net.space, device_hash=device_key(profile))
    assert loaded.meta.n_train == meta["n_train"]


def test_profile_cli_resumes_from_the_store(profiled) -> None:
    from typer.testing import CliRunner

    from hwsearch.cli.main import app

    _, _, _, store, _, _, root = profiled
    args = ["profile", "--device", str(root / "device.json"), "--n", "3", "--resolution",
            str(RESOLUTION), "--store", str(store.path), "--seed", "9", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["selected"] == 3
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["measured"] == 0
    assert json.loads(second.stdout)["skipped"] == 3


# --------------------------------------------------------------------------- accuracy data


def _write_class_folders(root: Path, n_per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, size=(40 + 7 * i, 50, 3), dtype=np.uint8)
            pixels[..., label] = 255  # class shows in one colour channel
            Image.fromarray(pixels).save(root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("not an image")


def test_data_loader_reads_folders_and_array_files(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from hwsearch.data import batches, load_images

    _write_class_folders(tmp_path / "imgs", 3)
    folder = load_images(tmp_path / "imgs", size=64)
    assert folder.x.shape == (6, 3, 64, 64) and folder.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert folder.classes == ("cat", "dog")
    x = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5) % 2)
    torch.save({"x": torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255,
                "y": torch.arange(5) % 2}, tmp_path / "d.pt")
    from_npz = load_images(tmp_path / "d.npz", size=32)
    from_pt = load_images(tmp_path / "d.pt", size=32)
    torch.testing.assert_close(from_npz.x, from_pt.x)
    assert [b[0].shape for b in batches(from_npz, 24, batch_size=4)] == [(4, 3, 24, 24),
                                                                         (1, 3, 24, 24)]
    calib, val = from_npz.split(2)
    assert len(calib) == 2 and len(val) == 3
    with pytest.raises(ValueError, match="lacks array"):
        np.savez(tmp_path / "bad.npz", images=x)
        load_images(tmp_path / "bad.npz")


def test_accuracy_evaluation_on_ray_matches_in_process(tmp_path: Path) -> None:
    supernets = pytest.importorskip("hwsearch.supernets")
    ray = pytest.importorskip("ray")
    from hwsearch.accuracy_eval import EvalSettings, evaluate_subnets, subnet_accuracy
    from hwsearch.data import load_images
    from hwsearch.store import MemoryStore

    _write_class_folders(tmp_path / "imgs", 12)
    data = load_images(tmp_path / "imgs", size=128)
    net = supernets.create_supernet("ofa_mbv3_d234_e346_k357_w1.0", n_classes=2)
    n_active = 3 + 2 * 4
    archs = [net.space.smallest(128),
             net.space.arch(resolution=128, depths=(3, 2, 2, 2, 2), kernel=[7] * n_active,
                            expand=[6] * n_active)]
    settings = EvalSettings(n_calibration=8, batch_size=8, chunk=1)
    store = MemoryStore()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        found = evaluate_subnets(net, archs, data, store=store, dataset_id="colours",
                                 settings=settings)
    finally:
        ray.shutdown()
    assert set(found) == {a.key() for a in archs}
    assert store.get_accuracies(net.name, "colours") == found
    calib, val = data.split(8, seed=settings.seed)
    for arch in archs:
        assert found[arch.key()] == subnet_accuracy(net, arch, calib, val, settings)
        assert 0.0 <= found[arch.key()] <= 1.0
    # Stored accuracies are not evaluated again (no Ray runtime needed now).
    assert evaluate_subnets(net, archs, data, store=store, dataset_id="colours") == found

