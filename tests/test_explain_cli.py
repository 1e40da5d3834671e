"""`ssc explain` and `ssc explain calibrate` on phantoms with the tiny S-Net: maps on the slice's own grid,
the same numbers as the library's heat maps, constant occlusion, and thresholds chosen on validation slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_ssc as ssc

from sscjax import explain, heatmaps, snet
from sscjax.data import load_cohort
from sscjax.data.slices import resize_slices
from sscjax.io import read_image, read_scan
from sscjax.lung import lung_mask


@pytest.fixture(scope="module")
def scan_path(cohort):
    return load_cohort(cohort, check_scans=False).scan_paths["phantom_001"]


def test_explain_writes_maps_that_equal_the_library_heat_maps(
    monkeypatch, capsys, snet_trained, cohort, scan_path, tmp_path
):
    snet_run, _ = snet_trained
    scan = read_scan(scan_path)
    k = int(scan.n_slices * 0.35)
    code, out, err = ssc(
        monkeypatch,
        capsys,
        "explain",
        "--scan",
        scan_path,
        "--snet",
        snet_run,
        "--slice-index",
        k,
        "--pattern",
        "GG",
        "--threshold",
        "-0.5",
        "--set",
        "explain.chunk=5",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    folder = tmp_path / "phantom_001" / "explain"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"slice{k}_GG_{kind}" for kind in ("delta.mha", "delta.npy", "derived.mha", "overlay.png")] + ["explain.json"]
    )
    saved = np.load(folder / f"slice{k}_GG_delta.npy")
    image = read_image(folder / f"slice{k}_GG_delta.mha")
    np.testing.assert_array_equal(image.array[0], saved)
    assert image.geometry.z_of_index(0) == pytest.approx(scan.z_mm[k])
    assert saved.shape == scan.shape[1:]

    model = snet.SNet.read(snet_run)
    config = model.config
    size = config.data.image_size
    lung = resize_slices(lung_mask(scan)[[k]].astype(np.float32), size, order=0)[0] > 0.5
    texture = explain.read_texture(cohort / "patterns" / "healthy.mha", scan.geometry.spacing[0] * scan.shape[2] / size)
    maps = heatmaps.heatmaps(
        model.function(),
        snet.prepare_slices(scan.array[[k]], size)[0, ..., 0],
        lung,
        texture,
        explain.scaled_config(size),
    )
    np.testing.assert_allclose(saved, explain.to_native(maps, scan.shape[1:])[..., 1], atol=1e-3)
    assert np.abs(saved).max() > 0.05
    summary = json.loads((folder / "explain.json").read_text())
    assert summary["heatmap"]["chunk"] == 5  # --set reached the heat maps (the chunk never changes them)
    (entry,) = summary["slices"]
    derived = heatmaps.derived_scores(maps, lung, -0.5)
    assert entry["patterns"]["GG"]["derived"] == pytest.approx(derived[1], abs=1e-3)
    assert entry["patterns"]["GG"]["threshold"] == -0.5
    assert f"slice{k}" in out and "GG" in out


def test_constant_occlusion_gives_other_maps(monkeypatch, capsys, snet_trained, scan_path, tmp_path):
    snet_run, _ = snet_trained
    k = int(read_scan(scan_path).n_slices * 0.35)
    maps = {}
    for occlusion in ("replace", "constant"):
        code, _, err = ssc(
            monkeypatch,
            capsys,
            "explain",
            "--scan",
            scan_path,
            "--snet",
            snet_run,
            "--slice-index",
            k,
            "--pattern",
            "TOT",
            "--occlusion",
            occlusion,
            "--set",
            "explain.stride_px=32",
            "--out",
            tmp_path / occlusion,
        )
        assert code == 0, err
        maps[occlusion] = np.load(tmp_path / occlusion / "phantom_001" / "explain" / f"slice{k}_TOT_delta.npy")
    assert np.abs(maps["replace"] - maps["constant"]).max() > 0.05


def test_calibration_chooses_thresholds_on_validation_slices_and_explain_uses_them(
    monkeypatch, capsys, lnet_trained, snet_trained, scan_path, tmp_path
):
    snet_run, _ = snet_trained
    # a coarser stride than the default (4 px at 64 px slices, not 2): a quarter of the positions, the same search;
    # two of the four validation patients
    code, _, err = ssc(
        monkeypatch,
        capsys,
        "explain",
        "calibrate",
        "--model",
        snet_run,
        "--patients",
        "2",
        "--set",
        "explain.stride_px=32",
    )
    assert code == 0, err
    record = json.loads((snet_run / "explain" / "calibration.json").read_text())
    valid = json.loads((snet_run / "splits.json").read_text())["valid"]
    assert len(valid) == 4 and record["patients"] == valid[:2]
    assert record["split"] == "valid" and record["n_slices"] == 5 * 2
    thresholds = np.array(record["thresholds"])
    assert np.all((thresholds >= -4) & (thresholds <= 0))
    assert (snet_run / "explain" / "calibration.png").stat().st_size > 10_000
    assert all(r <= 1 for r in record["r2"] if r is not None)  # R^2 has no lower bound: a poor fit is below 0
    code, _out, err = ssc(
        monkeypatch,
        capsys,
        "explain",
        "--scan",
        scan_path,
        "--lnet",
        lnet_trained[1],
        "--snet",
        snet_run,
        "--set",
        "explain.stride_px=32",  # the thresholds do not depend on the stride
        "--out",
        tmp_path,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "phantom_001" / "explain" / "explain.json").read_text())
    assert [s["name"] for s in summary["slices"]] == ["L1", "L2", "L3", "L4", "L5"]
    assert [summary["slices"][0]["patterns"][p]["threshold"] for p in ("TOT", "GG", "RET")] == pytest.approx(thresholds)
    assert len(list((tmp_path / "phantom_001" / "explain").glob("*_overlay.png"))) == 15


def test_explain_needs_a_scan_or_a_subcommand(monkeypatch, capsys):
    code, _, err = ssc(monkeypatch, capsys, "explain")
    assert code == 2 and "give --scan" in err
