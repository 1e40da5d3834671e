"""The authors' heat maps (`explain.occlusion = "authors"`) reproduce the fixture their algorithm made with PyTorch
(fixtures/authors_heatmaps: texture, maps, derived scores) on their S-Net imported as a run, with fewer forward passes
than their loop's 1 + 1024; `--lung-mask` replaces the computed lung mask of a scan, read and flipped as the scan
is, and is refused in one line when its geometry is not the scan's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ssc as ssc

from sscjax import authors_runs, cascade, explain, heatmaps
from sscjax.data.slices import window
from sscjax.domain import SCORES
from sscjax.io import Geometry, write_image

FIXTURES = Path(__file__).parent / "fixtures"
HEATMAPS = FIXTURES / "authors_heatmaps"
SNET_FILE = FIXTURES / "authors_networks" / "snet_convnext.pt"
MAP_TOL = 1e-4  # percentage points
EXPECTED = json.loads((HEATMAPS / "expected.json").read_text())
SIZE = EXPECTED["image_size"]
SLICES = 16  # of the test volume: enough for a scan's five levels
HEAD_FIRST = Geometry((2.0, 2.0, 2.5), (-128.0, -128.0, 40.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def fixture_array(name: str) -> np.ndarray:
    return np.load(HEATMAPS / f"{name}.npy")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The fixture S-Net imported as a run (its heat maps default to the authors' mode)."""
    folder, _ = authors_runs.import_authors(SNET_FILE, "snet", tmp_path_factory.mktemp("authors") / "snet")
    return folder


@pytest.fixture(scope="module")
def explained(run):
    """(predict, settings, cfg, maps (H, W, 3), lung) of the fixture slice through the run, as `ssc explain` runs it."""
    models = cascade.load_models([], [run])
    settings = models.snets[0].config.explain
    predict, _ = explain.snet_predict(models, bounded=False)
    cfg = explain.scaled_config(SIZE, settings)
    image, lung = window(fixture_array("slice_hu")), fixture_array("lung_mask") > 0
    maps = heatmaps.heatmaps(predict, image, lung, window(fixture_array("healthy_seed_hu")), cfg)
    return predict, settings, cfg, maps, lung


def expected_maps() -> np.ndarray:
    return fixture_array("expected_maps").transpose(1, 2, 0)


def test_the_texture_is_the_authors():
    texture = heatmaps.authors_texture(window(fixture_array("healthy_seed_hu")), (SIZE, SIZE))
    np.testing.assert_array_equal(texture, fixture_array("texture"))


def test_imported_snets_default_to_the_authors_mode_at_their_geometry(explained):
    _, settings, cfg, _, _ = explained
    assert settings.occlusion == "authors" and settings.default_threshold() == -0.6
    assert (cfg.patch, cfg.stride) == (EXPECTED["patch"], EXPECTED["stride"])  # 64 / 16 at 512 px, scaled


def test_the_maps_are_the_authors_with_fewer_forward_passes(explained, record_property):
    _, _, cfg, maps, lung = explained
    difference = np.abs(maps - expected_maps()).max()
    assert difference < MAP_TOL
    assert not maps[~lung].any()
    passes = len(heatmaps.lung_positions(lung, cfg)) + 1
    record_property("max_map_difference_pp", float(difference))
    record_property("forward_passes", f"{passes} (their loop: {EXPECTED['forward_passes_of_their_loop']})")
    assert passes == 624 < EXPECTED["forward_passes_of_their_loop"]


def test_the_derived_scores_are_the_authors(explained):
    predict, settings, _, maps, lung = explained
    assert heatmaps.derived_scores(maps, lung, settings.default_threshold()).tolist() == EXPECTED["derived_at_-0.6"]
    # Their second threshold is a value of their TOT map (16 tied pixels, not counted as below it): the score is
    # exact on their maps, and on ours at that threshold less the maps' tolerance (no other value lies that close).
    t = EXPECTED["threshold_q30_TOT"]
    derived = EXPECTED["derived_at_q30_TOT"]
    assert heatmaps.derived_scores(expected_maps(), lung, t).tolist() == derived
    assert heatmaps.derived_scores(maps, lung, t - MAP_TOL).tolist() == derived
    scores = np.asarray(predict(window(fixture_array("slice_hu"))[None, :, :, None]))[0]
    np.testing.assert_allclose(scores, EXPECTED["scores"], atol=1e-3)


def test_the_authors_loop_is_a_second_reference(explained):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from original_loop import authors_heatmaps_sequential

    predict, _, cfg, maps, lung = explained
    image, seed = window(fixture_array("slice_hu")), window(fixture_array("healthy_seed_hu"))
    loop, passes = authors_heatmaps_sequential(predict, image, lung, seed, cfg.patch, cfg.stride)
    assert passes == EXPECTED["forward_passes_of_their_loop"]
    assert np.abs(loop - expected_maps()).max() < MAP_TOL and np.abs(loop - maps).max() < MAP_TOL


@pytest.mark.parametrize("pixel, corner", [((0, 0), 1.0), ((1, 1), 4.0)])
def test_the_box_blur_mirrors_without_the_edge(pixel, corner):
    """OpenCV's reflect-101: the edge pixel is not repeated (symmetric padding would see (0, 0) four times from the
    corner) but pixel 1 is mirrored to -1 (zero padding would see (1, 1) once)."""
    image = np.zeros((6, 7), np.float32)
    image[pixel] = 25.0
    blurred = np.asarray(heatmaps.box_blur(image))
    assert blurred[0, 0] == corner and blurred[pixel[0] + 2, pixel[1] + 2] == 1.0 and blurred[5, 6] == 0.0


# ---------------------------------------------------------------- --lung-mask


def head_first_case(folder: Path, canonical_k: int) -> tuple[Path, Path, Path]:
    """(scan, lung mask, healthy seed) files: a volume of the fixture slice stored head first, and a mask whose
    only lung is the fixture's, on canonical slice `canonical_k` (stored slice SLICES - 1 - k)."""
    volume = np.repeat(fixture_array("slice_hu")[None], SLICES, axis=0)
    mask = np.zeros(volume.shape, np.uint8)
    mask[SLICES - 1 - canonical_k] = fixture_array("lung_mask")
    scan = write_image(folder / "scan.mha", volume, HEAD_FIRST)
    lung = write_image(folder / "lung.mha", mask, HEAD_FIRST)
    seed = write_image(folder / "healthy.mha", fixture_array("healthy_seed_hu")[None], HEAD_FIRST)
    return scan, lung, seed


def test_a_lung_mask_in_the_scans_geometry_is_the_lung_of_the_maps(monkeypatch, capsys, tmp_path, run):
    k = 3
    scan, lung, seed = head_first_case(tmp_path, k)
    args = ("explain", "--scan", scan, "--snet", run, "--slice-index", k, "--healthy", seed, "--lung-mask", lung)
    code, _, err = ssc(monkeypatch, capsys, *args, "--out", tmp_path / "out", "--pattern", "TOT")
    assert code == 0, err
    tot = np.load(tmp_path / "out" / "scan" / "explain" / f"slice{k}_TOT_delta.npy")
    assert np.abs(tot - expected_maps()[..., 0]).max() < MAP_TOL  # the fixture's lung on canonical slice k


@pytest.mark.parametrize(
    "change, says",
    [
        (dict(origin=(-128.0, -128.0, 45.0)), "origin"),
        (dict(spacing=(2.1, 2.0, 2.5)), "spacing"),
        (dict(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), "origin"),  # feet first: another place
    ],
)
def test_a_lung_mask_of_another_geometry_is_refused_in_one_line(monkeypatch, capsys, tmp_path, run, change, says):
    import dataclasses

    scan, lung, seed = head_first_case(tmp_path, 0)
    mask = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    other = write_image(tmp_path / "other.mha", mask, dataclasses.replace(HEAD_FIRST, **change))
    for command in (("explain", "--slice-index", 0, "--healthy", seed), ("cascade", "--levels", "0,-5,-10,-15,-20")):
        args = (*command, "--scan", scan, "--snet", run, "--lung-mask", other, "--out", tmp_path / "out")
        code, out, err = ssc(monkeypatch, capsys, *args)
        message = (err + out).strip().splitlines()
        assert code != 0 and any(str(other) in line and says in line for line in message), err + out
        assert lung.is_file()


# ---------------------------------------------------------------- a real CT slice

REAL_SLICE = FIXTURES / "real_ct" / "chest_ct_slice_rle.dcm"


@pytest.mark.skipif(not REAL_SLICE.is_file(), reason="needs the real CT fixture")
def test_a_real_ct_slice_gets_the_authors_maps_inside_a_given_lung_mask(monkeypatch, capsys, tmp_path, run):
    """`ssc explain --occlusion authors --lung-mask` on a real 512x512 chest CT slice (stacked into a volume) with
    the imported authors' S-Net: the maps are their loop's on that slice (at patch 256 / stride 128 to keep it short),
    inside the given mask (the computed lung with its left half cut away) and zero outside it."""
    import SimpleITK as sitk

    from sscjax.io import read_image
    from sscjax.lung import lung_mask

    image = sitk.ReadImage(str(REAL_SLICE))
    volume = sitk.JoinSeries([image[:, :, 0]] * SLICES)
    volume.SetOrigin(image.GetOrigin())
    volume.SetSpacing((*image.GetSpacing()[:2], 5.0))
    sitk.WriteImage(volume, str(tmp_path / "real.mha"))
    scan = read_image(tmp_path / "real.mha", volume=True)
    given = lung_mask(scan).astype(np.uint8)
    given[..., : given.shape[2] // 2] = 0
    mask = write_image(tmp_path / "lung.mha", given, scan.geometry)
    seed = write_image(tmp_path / "healthy.mha", fixture_array("healthy_seed_hu")[None], scan.geometry)
    k, sizes = SLICES // 2, ("--set", "explain.patch_px=256", "--set", "explain.stride_px=128")
    args = ("explain", "--scan", tmp_path / "real.mha", "--snet", run, "--slice-index", k, "--healthy", seed)
    code, _, err = ssc(monkeypatch, capsys, *args, "--lung-mask", mask, *sizes, "--out", tmp_path / "out")
    assert code == 0, err
    maps = np.stack([np.load(tmp_path / "out" / "real" / "explain" / f"slice{k}_{s}_delta.npy") for s in SCORES], -1)

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from original_loop import authors_heatmaps_sequential

    predict, _ = explain.snet_predict(cascade.load_models([], [run]), bounded=False)
    lung = given[k] > 0
    loop, passes = authors_heatmaps_sequential(
        predict, window(scan.array[k]), lung, window(fixture_array("healthy_seed_hu")), 256, 128
    )
    assert maps.shape == (512, 512, 3) and passes == 1 + 4 * 4
    assert np.abs(maps - loop).max() < MAP_TOL
    assert not maps[~lung].any() and (maps[lung] != 0).mean() > 0.5
