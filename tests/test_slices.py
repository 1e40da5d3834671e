"""Level-slice extraction: nearest slices and neighbours, labels, windowing, resizing, lung masks, caching."""

import json
import os

import numpy as np
import pytest

import sscjax.data.slices as slices_module
from sscjax.data.cohort import load_cohort, write_levels_csv, write_scores_csv
from sscjax.data.slices import load_slices, resize_slices, window
from sscjax.domain import AIR
from sscjax.errors import ConfigError, ScanError
from sscjax.io import Geometry, read_image, read_scan, write_image

SHAPE = (20, 40, 48)  # z, y, x
GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(-10.0, -20.0, -100.0))
# World z of L1..L5: slice indices 18.4, 15.96, 12.5 (a tie: rounds up), 8 and 0.2 -> 18, 16, 13, 8, 0.
LEVELS = np.array([-54.0, -60.1, -68.75, -80.0, -99.5])
NEAREST = [18, 16, 13, 8, 0]
SCORES = np.array([[0, 0, 0], [10, 5, 5], [35, 20, 20], [0, 0, 0], [100, 60, 70]], dtype=float)


def slice_hu(k: int | np.ndarray) -> np.ndarray:
    return -1400.0 + 100.0 * np.asarray(k)


def lung_box(y0: int) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, y0 : y0 + 16, 8:40] = 2  # any label > 0 is lung
    return mask


@pytest.fixture()
def cohort(tmp_path):
    root = tmp_path / "cohort"
    volume = np.broadcast_to(slice_hu(np.arange(SHAPE[0]))[:, None, None], SHAPE).astype(np.float32)
    for sid in ("a", "b"):
        write_image(root / "scans" / f"{sid}.mha", volume, GEOMETRY)
    write_image(root / "lung_masks" / "a.mha", lung_box(12), GEOMETRY)
    write_levels_csv(root / "levels.csv", {"a": LEVELS, "b": LEVELS})
    write_scores_csv(root / "scores.csv", {"a": SCORES, "b": SCORES[::-1].copy()})
    return load_cohort(root)


@pytest.fixture()
def computed_lungs(monkeypatch):
    """Scans without a mask file get sscjax.lung.lung_mask; here a known box stands in for it."""
    calls = []

    def fake_lung_mask(scan):
        calls.append(scan.source)
        return lung_box(4)

    monkeypatch.setattr("sscjax.lung.lung_mask", fake_lung_mask)
    return calls


def files_under(root):
    return sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_window_maps_the_hu_range_to_unit_interval():
    np.testing.assert_allclose(
        window(np.array([-3024.0, -1500.0, -1000.0, 0.0, 1500.0, 3000.0])), [0, 0, 1 / 6, 0.5, 1, 1], atol=1e-7
    )
    assert pytest.approx(1 / 6) == AIR


def test_resize_keeps_the_field_of_view():
    ramp = np.tile(np.arange(48, dtype=np.float32), (2, 40, 1))
    out = resize_slices(ramp, 32, order=1)
    assert out.shape == (2, 32, 32)
    # pixel centres aligned: output column j samples input x = (j + 0.5) * 48 / 32 - 0.5
    np.testing.assert_allclose(out[0, 16, 2:-2], (np.arange(2, 30) + 0.5) * 1.5 - 0.5, atol=0.02)
    mask = np.zeros((1, 40, 48), np.uint8)
    mask[0, 10:30, 12:36] = 1
    small = resize_slices(mask, 20, order=0)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1}
    assert small.sum() == pytest.approx(mask.sum() * 20 * 20 / (40 * 48), rel=0.1)
    square = np.ones((1, 32, 32), np.float32)
    assert resize_slices(square, 32, order=1) is square  # already the size: untouched


def test_level_slices_are_the_nearest_with_neighbours_and_labels(cohort, tmp_path, computed_lungs):
    s = load_slices(cohort, tmp_path / "work", image_size=32)
    a = s.take(s.scan_id == "a")
    assert len(a) == 14  # 5 levels x 3 slices, less the one below slice 0
    np.testing.assert_array_equal(a.slice_index[a.offset == 0], NEAREST)
    np.testing.assert_array_equal(a.level[a.offset == 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(a.slice_index, a.slice_index[a.offset == 0][a.level - 1] + a.offset)
    np.testing.assert_allclose(a.z_mm, -100.0 + 2.5 * a.slice_index)
    np.testing.assert_array_equal(a.scores, SCORES[a.level - 1])
    b = s.take(s.scan_id == "b")
    np.testing.assert_array_equal(b.scores, SCORES[::-1][b.level - 1])
    # images: the window of each slice's HU, resized to 32 x 32; pixel size follows the resize
    assert a.images.shape == (14, 32, 32) and a.images.dtype == np.float32
    np.testing.assert_allclose(
        a.images, window(slice_hu(a.slice_index))[:, None, None] * np.ones((1, 32, 32)), atol=1e-6
    )
    np.testing.assert_allclose(a.spacing_yx, np.tile([0.8 * 40 / 32, 0.8 * 48 / 32], (14, 1)))
    np.testing.assert_array_equal(a.native_shape, np.tile([40, 48], (14, 1)))
    # lungs: a's from its mask file (rows 12..27 of 40), b's computed (rows 4..19); output row j samples
    # input row 1.25 j + 0.125 (nearest), so rows 10..21 and 3..15 of 32
    rows_a, rows_b = np.flatnonzero(a.lung[0].any(axis=1)), np.flatnonzero(b.lung[0].any(axis=1))
    assert (rows_a[0], rows_a[-1]) == (10, 21) and (rows_b[0], rows_b[-1]) == (3, 15)
    assert computed_lungs == [str(cohort.scan_paths["b"])]
    assert np.array_equal(s.healthy, (s.scores[:, 0] == 0))
    level_only = load_slices(cohort, tmp_path / "work", image_size=32, neighbours=False)
    assert np.all(level_only.offset == 0) and len(level_only) == 10


def test_slices_are_cached_outside_the_cohort_and_rebuilt_when_sources_change(
    cohort, tmp_path, monkeypatch, computed_lungs
):
    before = files_under(cohort.root)
    first = load_slices(cohort, tmp_path / "work", image_size=32)
    assert files_under(cohort.root) == before  # nothing written into the cohort
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["a.32px.npz", "b.32px.npz"]

    def no_reading(*args, **kwargs):
        raise AssertionError("the scan was read although its slices are cached")

    with monkeypatch.context() as m:
        m.setattr(slices_module, "read_scan", no_reading)
        again = load_slices(cohort, tmp_path / "work", image_size=32)
    assert all(np.array_equal(getattr(first, f), getattr(again, f)) for f in ("images", "lung", "scores", "scan_id"))

    mask_path = cohort.lung_mask_paths["a"]
    write_image(mask_path, lung_box(0), GEOMETRY)
    os.utime(mask_path, ns=(1, 1))  # a changed file with a different time
    changed = load_slices(cohort, tmp_path / "work", image_size=32, ids=["a"])
    assert np.flatnonzero(changed.lung[0].any(axis=1))[0] == 0
    cohort.scores["a"] = SCORES * 0
    assert np.all(load_slices(cohort, tmp_path / "work", image_size=32, ids=["a"]).scores == 0)


def test_the_cache_may_not_lie_in_the_cohort(cohort):
    with pytest.raises(ConfigError, match="outside the cohort"):
        load_slices(cohort, cohort.root / "cache", image_size=32)


def test_a_lung_mask_that_does_not_fit_its_scan_is_refused(cohort, tmp_path):
    write_image(cohort.lung_mask_paths["a"], np.ones((20, 40, 40), np.uint8), GEOMETRY)
    with pytest.raises(ScanError, match="a.mha"):
        load_slices(cohort, tmp_path / "work", image_size=32, ids=["a"])


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory):
    from sscjax.phantom import write_cohort

    root = write_cohort(tmp_path_factory.mktemp("phantom") / "cohort", 2, "small", seed=5)
    return load_cohort(root)


def test_phantom_level_slices_are_the_true_nearest_slices_with_the_cohort_scores(phantom_cohort, tmp_path):
    truth = np.genfromtxt(
        phantom_cohort.root / "truth" / "exact_scores.csv", delimiter=",", names=True, dtype=None, encoding="utf-8"
    )
    s = load_slices(phantom_cohort, tmp_path / "work", image_size=128, neighbours=False)
    assert len(s) == 10 and np.all(s.offset == 0)
    reversed_ids = [
        p["scan_id"]
        for p in json.loads((phantom_cohort.root / "truth" / "phantom.json").read_text())["patients"]
        if p["stored_reversed"]
    ]
    assert reversed_ids == ["phantom_000"]  # stored head first: the indices must still be the canonical ones
    for sid in phantom_cohort.ids:
        mine, true = s.take(s.scan_id == sid), truth[truth["scan_id"] == sid]
        np.testing.assert_array_equal(mine.slice_index, true["slice_index"])
        np.testing.assert_array_equal(mine.scores, phantom_cohort.scores[sid])
        scan = read_scan(phantom_cohort.scan_paths[sid])
        lung = read_image(phantom_cohort.lung_mask_paths[sid]).array
        k = scan.geometry.nearest_slice(phantom_cohort.levels_mm[sid], scan.n_slices)
        np.testing.assert_array_equal(mine.slice_index, k)
        np.testing.assert_allclose(mine.z_mm, scan.z_mm[k])
        np.testing.assert_array_equal(mine.images, window(scan.array[k]))  # 128 px: no resizing
        np.testing.assert_array_equal(mine.lung, lung[k] > 0)


def test_phantom_cohort_feeds_the_training_pipeline(phantom_cohort, tmp_path):
    from sscjax.data.snet_loader import SNetLoader
    from sscjax.data.synthesis import load_patterns

    patterns = load_patterns(phantom_cohort.pattern_paths)
    gg = read_image(phantom_cohort.pattern_paths["gg"])
    np.testing.assert_array_equal(patterns.gg, window(gg.array[0]))
    assert patterns.spacing_mm == pytest.approx(gg.geometry.spacing[0])
    s = load_slices(phantom_cohort, tmp_path / "work", image_size=64)  # shrunk: textures sampled 2 px apart
    loader = SNetLoader(s, 8, seed=0, patterns=patterns)
    np.testing.assert_allclose(loader.texture_step[0], s.spacing_yx[0].mean() / patterns.spacing_mm)
    batch = loader.batch(0)
    assert batch["image"].shape == (8, 64, 64, 1) and batch["image"].min() >= 0 and batch["image"].max() <= 1
    tot, gg_score, ret = batch["target"][batch["synthetic"]].T
    assert np.all(tot > 0) and np.all(np.maximum(gg_score, ret) <= tot + 1e-4)
