"""`ssc cascade` on phantoms: levels -> nearest slices -> scores, outputs with geometry, many scans, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ssc as ssc

from sscjax import metrics, provenance, snet
from sscjax.data import load_cohort
from sscjax.domain import SCORES
from sscjax.io import Geometry, read_image, read_scan, write_image


@pytest.fixture(scope="module")
def runs(lnet_trained, snet_trained):
    return lnet_trained[1], snet_trained[0]


@pytest.fixture(scope="module")
def phantoms(cohort):
    """(cohort, ids stored head first, ids stored feet first) of the shared phantom cohort."""
    patients = json.loads((cohort / "truth" / "phantom.json").read_text())["patients"]
    reversed_ids = [p["scan_id"] for p in patients if p["stored_reversed"]]
    return load_cohort(cohort), reversed_ids, [p["scan_id"] for p in patients if not p["stored_reversed"]]


def test_cascade_scores_the_nearest_slices_and_writes_them_with_geometry(monkeypatch, capsys, runs, phantoms, tmp_path):
    lnet_run, snet_run = runs
    cohort, _, _ = phantoms
    sid = cohort.ids[0]
    code, out, err = ssc(
        monkeypatch,
        capsys,
        "cascade",
        "--scan",
        cohort.scan_paths[sid],
        "--lnet",
        lnet_run,
        "--snet",
        snet_run,
        "--out",
        tmp_path,
    )
    assert code == 0, err
    result = json.loads((tmp_path / sid / "scores.json").read_text())
    assert result["scan"] == sid and result["models"] == {
        "levels": "lnet",
        "lnet": [str(lnet_run)],
        "snet": [str(snet_run)],
    }
    scan = read_scan(cohort.scan_paths[sid])
    z = np.array([lv["z_mm"] for lv in result["levels"]])
    index = np.array([lv["slice_index"] for lv in result["levels"]])
    assert [lv["level"] for lv in result["levels"]] == [1, 2, 3, 4, 5] and np.all(np.diff(index) <= 0)
    np.testing.assert_array_equal(index, scan.geometry.nearest_slice(z, scan.n_slices))
    expected = snet.SNet.read(snet_run).score(scan.array[index])
    scores = np.array([[lv[p] for p in SCORES] for lv in result["levels"]])
    np.testing.assert_allclose(scores, expected, atol=2e-3)
    rounded = np.array([[lv[f"{p}_5"] for p in SCORES] for lv in result["levels"]])
    np.testing.assert_array_equal(rounded, metrics.round_to_step(scores))
    assert result["mean"]["TOT"] == pytest.approx(scores[:, 0].mean(), abs=2e-3)
    for k, lv in enumerate(result["levels"], start=1):
        written = read_image(tmp_path / sid / f"L{k}.mha")
        np.testing.assert_array_equal(written.array[0], scan.array[lv["slice_index"]])
        assert written.geometry.z_of_index(0) == pytest.approx(scan.z_mm[lv["slice_index"]])
        assert written.geometry.spacing == pytest.approx(scan.geometry.spacing)
    with open(tmp_path / sid / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["TOT"]) for r in rows] == pytest.approx(scores[:, 0], abs=1e-3)
    assert (tmp_path / sid / "montage.png").stat().st_size > 10_000
    assert f"L5 {z[4]:10.1f}"[:5] in out and str(tmp_path / "scores.csv") in out


def test_levels_by_hand_pick_the_true_slices_of_a_scan_stored_head_first(monkeypatch, capsys, runs, phantoms, tmp_path):
    _, snet_run = runs
    cohort, reversed_ids, _ = phantoms
    sid = reversed_ids[0]
    truth = [
        r
        for r in csv.DictReader((cohort.root / "truth" / "exact_scores.csv").read_text().splitlines())
        if r["scan_id"] == sid
    ]
    levels = ",".join(f"{z:.2f}" for z in cohort.levels_mm[sid])
    code, _, err = ssc(
        monkeypatch,
        capsys,
        "cascade",
        "--scan",
        cohort.scan_paths[sid],
        "--levels",
        levels,
        "--snet",
        snet_run,
        "--out",
        tmp_path,
        "--all-slices",
    )
    assert code == 0, err
    result = json.loads((tmp_path / sid / "scores.json").read_text())
    assert [lv["slice_index"] for lv in result["levels"]] == [int(r["slice_index"]) for r in truth]
    assert result["models"]["levels"] == "given" and result["models"]["lnet"] == []
    assert [lv["z_mm"] for lv in result["levels"]] == pytest.approx(cohort.levels_mm[sid])
    with open(tmp_path / sid / "all_slices.csv", newline="") as f:
        table = list(csv.DictReader(f))
    lung = read_image(cohort.lung_mask_paths[sid]).array
    rows = [int(r["slice_index"]) for r in table]
    assert rows == list(range(rows[0], rows[-1] + 1))
    assert lung[rows[0]].any() and lung[rows[-1]].any() and not lung[rows[-1] + 1 :].sum() > 50
    for lv in result["levels"]:
        row = table[rows.index(lv["slice_index"])]
        assert float(row["TOT"]) == pytest.approx(lv["TOT"], abs=2e-3)
    assert (tmp_path / sid / "all_slices.png").is_file()


def test_many_scans_skip_done_ones_and_report_bad_ones(monkeypatch, capsys, runs, phantoms, tmp_path):
    _, snet_run = runs
    cohort, _, straight = phantoms
    folder = tmp_path / "scans"
    folder.mkdir()
    for sid in straight[:2]:
        shutil.copy(cohort.scan_paths[sid], folder / f"{sid}.mha")
    write_image(folder / "flat.mha", np.zeros((40, 40), np.int16), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    water = np.zeros((30, 40, 40), np.int16)
    write_image(folder / "water.mha", water, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    levels = ("--lnet", runs[0])
    out = tmp_path / "out"
    code, stdout, err = ssc(monkeypatch, capsys, "cascade", "--scan", folder, *levels, "--snet", snet_run, "--out", out)
    assert code == 1
    assert "3 of 5 scan(s) failed" in err
    assert "flat.mha: is a single 2D slice" in err and "broken.nii.gz: cannot read" in err
    assert not any(f"{folder / name}: {folder / name}" in err for name in ("flat.mha", "broken.nii.gz", "water.mha"))
    assert "water.mha" in err and "no lungs" in err.lower()
    done = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert done == sorted(straight[:2])
    first = (out / straight[0] / "scores.json").read_text()
    (folder / "flat.mha").unlink()
    (folder / "broken.nii.gz").unlink()
    (folder / "water.mha").unlink()
    (out / "scores.provenance.json").unlink()  # the resumed batch, though it scores nothing, writes it whole again
    code, stdout, err = ssc(monkeypatch, capsys, "cascade", "--scan", folder, *levels, "--snet", snet_run, "--out", out)
    assert code == 0 and "2 scan(s) already done" in stdout
    assert (out / straight[0] / "scores.json").read_text() == first
    with open(out / "scores.csv", newline="") as f:
        assert sorted({r["scan_id"] for r in csv.DictReader(f)}) == sorted(straight[:2])
    side = json.loads((out / "scores.provenance.json").read_text())
    assert {sid: scan["input"]["sha256"] for sid, scan in side["scans"].items()} == {
        sid: hashlib.sha256((folder / f"{sid}.mha").read_bytes()).hexdigest() for sid in straight[:2]
    }
    assert side["models"] == {"lnet": [provenance.run_record(runs[0])], "snet": [provenance.run_record(snet_run)]}


def test_an_ensemble_of_folds_reports_their_spread(runs, phantoms):
    from sscjax import cascade

    _, snet_run = runs
    cohort, _, _ = phantoms
    scan = read_scan(cohort.scan_paths[cohort.ids[1]])
    one = cascade.run_cascade(scan, cascade.load_models([], [snet_run]), cohort.levels_mm[cohort.ids[1]])
    two = cascade.run_cascade(scan, cascade.load_models([], [snet_run, snet_run]), cohort.levels_mm[cohort.ids[1]])
    np.testing.assert_allclose(two.scores, one.scores, atol=1e-4)
    np.testing.assert_allclose(two.spread, 0, atol=1e-4)
    assert two.to_json()["levels"][0]["spread"] == {"TOT": 0.0, "GG": 0.0, "RET": 0.0}


def test_wrong_network_and_bad_levels_exit_2_in_one_line(monkeypatch, capsys, runs, phantoms, tmp_path):
    _lnet_run, snet_run = runs
    cohort, _, _ = phantoms
    scan = cohort.scan_paths[cohort.ids[0]]
    code, _, err = ssc(
        monkeypatch, capsys, "cascade", "--scan", scan, "--lnet", snet_run, "--snet", snet_run, "--out", tmp_path
    )
    assert code == 2 and err.strip().count("\n") == 0 and "is a run of the snet, not of the lnet" in err
    code, _, err = ssc(
        monkeypatch, capsys, "cascade", "--scan", scan, "--levels", "1,2,3,4,5", "--snet", snet_run, "--out", tmp_path
    )
    assert code == 2 and "L1 > L2 > L3 > L4 > L5" in err
    code, _, err = ssc(
        monkeypatch,
        capsys,
        "cascade",
        "--scan",
        scan,
        "--levels",
        "900,800,700,600,500",
        "--snet",
        snet_run,
        "--out",
        tmp_path,
    )
    assert code == 1 and "outside the scan" in err
    code, _, err = ssc(monkeypatch, capsys, "cascade", "--scan", scan, "--workdir", tmp_path / "nothing")
    assert code == 2 and "no trained lnet runs found" in err
    assert not any(tmp_path.glob("*/scores.json"))


RAW = np.array([130.0, -2.8, -7.0])  # TOT, GG, RET as an overshooting network puts them out


@pytest.fixture(scope="module")
def overshooting(phantoms, snet_trained, tmp_path_factory):
    """The cascade of one phantom scan with an S-Net whose outputs are forced outside 0..100 (the trained network
    with a zero head whose bias is RAW): (result, out folder, the montage captions)."""
    import jax.numpy as jnp

    from sscjax import cascade, plots
    from sscjax.run_files import load_model

    cohort, _, _ = phantoms
    sid = cohort.ids[0]
    module, config = load_model(snet_trained[0])
    module.head.kernel.set_value(jnp.zeros_like(module.head.kernel.get_value()))
    module.head.bias.set_value(jnp.asarray(RAW / snet.PERCENT, jnp.float32))
    model = snet.SNet(module, config)
    result = cascade.run_cascade(
        read_scan(cohort.scan_paths[sid]), cascade.Models([], [model]), cohort.levels_mm[sid], all_slices=True
    )
    out = tmp_path_factory.mktemp("overshoot")
    captions, montage = [], plots.level_montage

    def recording(images, spacing, text, *args):
        captions.extend(text)
        return montage(images, spacing, text, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "level_montage", recording)
        cascade.write_result(result, out)
    cascade.collect_scores(out, {"lnet": [], "snet": []})
    return result, out / sid, captions


def test_scores_outside_0_100_reach_no_file_and_the_raw_output_is_kept(overshooting):
    _, folder, captions = overshooting
    result = json.loads((folder / "scores.json").read_text())
    for lv in result["levels"]:
        assert [lv[p] for p in SCORES] == [100.0, 0.0, 0.0]
        assert [lv[f"{p}_5"] for p in SCORES] == [100, 0, 0]
        assert lv["raw"] == pytest.approx(dict(zip(SCORES, RAW)))
    assert result["mean"] == {"TOT": 100.0, "GG": 0.0, "RET": 0.0, "TOT_5": 100.0, "GG_5": 0.0, "RET_5": 0.0}
    clipped = [w for w in result["warnings"] if w["code"] == "output_clipped"]
    assert [w["level"] for w in clipped] == [1, 2, 3, 4, 5]
    assert "TOT 130.0 %, RET -7.0 %, shown clipped to 0..100 %" in clipped[0]["message"]  # GG -2.8: within 5
    assert [w["level"] for w in result["warnings"] if w["code"] == "tot_above_pattern_sum"] == [1, 2, 3, 4, 5]
    for table in (folder / "scores.csv", folder.parent / "scores.csv", folder / "all_slices.csv"):
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and all([float(r[p]) for p in SCORES] == [100.0, 0.0, 0.0] for r in rows), table
    assert len(captions) == 5 and all("TOT 100.0  GG 0.0  RET 0.0" in c for c in captions)


def test_two_scans_with_one_id_are_refused_before_any_work(tmp_path):
    from sscjax import cascade
    from sscjax.errors import ScanError

    for pair in ([tmp_path / "a" / "p.mha", tmp_path / "b" / "p.mha"], [tmp_path / "P.mha", tmp_path / "p.nii.gz"]):
        with pytest.raises(ScanError, match=f"{pair[0]} and {pair[1]}: both have the scan id"):
            cascade.output_ids(pair)
    assert cascade.output_ids([tmp_path / "p.mha", tmp_path / "q.nii.gz"]) == {
        "p": tmp_path / "p.mha",
        "q": tmp_path / "q.nii.gz",
    }


@pytest.mark.parametrize(
    "text,message",
    [
        ("nan,1,2,3,4", "must be finite"),
        ("50,40,inf,20,10", "must be finite"),
        ("4,3,2,1", "expected five numbers in mm (L1..L5), got 4"),
        ("5,4,x,2,1", "separated by commas"),
    ],
)
def test_bad_levels_say_what_is_wrong(text, message):
    from sscjax import cascade
    from sscjax.errors import ScanError

    with pytest.raises(ScanError, match=re.escape(message)):
        cascade.parse_levels(text)


def test_a_rerun_removes_what_killed_writes_left(overshooting):
    import os
    import time

    from sscjax import cascade
    from sscjax.io import STALE_S

    result, folder, _ = overshooting
    stale, fresh = folder / ".montage.png.k1ll3d.tmp.png", folder / ".L1.mha.wr1t1ng.tmp.mha"
    stale.write_bytes(b"half a png")
    fresh.write_bytes(b"a write in progress")
    old = time.time() - 2 * STALE_S
    os.utime(stale, (old, old))
    cascade.write_result(result, folder.parent)
    assert not stale.exists() and fresh.exists()
    fresh.unlink()


def test_warnings_and_provenance_reach_scores_json_and_the_console(monkeypatch, capsys, runs, phantoms, tmp_path):
    import jax

    _, snet_run = runs
    cohort, _, _ = phantoms
    sid = cohort.ids[0]
    scan = read_scan(cohort.scan_paths[sid])
    levels = np.array(cohort.levels_mm[sid], float)
    levels[0] = scan.z_mm[-1] - 2.0  # L1 two mm below the top slice: the scan seems to stop inside the lungs
    platform = jax.devices()[0].platform
    code, out, err = ssc(
        monkeypatch,
        capsys,
        "cascade",
        "--scan",
        cohort.scan_paths[sid],
        "--snet",
        snet_run,
        "--levels",
        ",".join(f"{z:.2f}" for z in levels),
        "--out",
        tmp_path,
        "--device",
        "cpu" if platform == "cpu" else "gpu",
    )
    assert code == 0, err
    result = json.loads((tmp_path / sid / "scores.json").read_text())
    edge = [w for w in result["warnings"] if w["code"] == "level_at_scan_edge"]
    assert edge == [
        {
            "code": "level_at_scan_edge",
            "level": 1,
            "message": "L1 lies 2.0 mm from the top slice of the "
            "scan (limit 10 mm): the scan may not cover the lungs from apex to base",
        }
    ]
    assert f"{len(result['warnings'])} quality warning(s):" in out
    assert f"level_at_scan_edge: {edge[0]['message']}" in out
    assert out.index("level_at_scan_edge") > out.index("  mean ")
    record = result["provenance"]
    assert record["input"]["sha256"] == hashlib.sha256(Path(cohort.scan_paths[sid]).read_bytes()).hexdigest()
    assert record["models"] == {"lnet": [], "snet": [provenance.run_record(snet_run)]}
    assert record["models"]["snet"][0]["checkpoint_step"] > 0
    assert record["device"]["platform"] == platform and record["jax"] == jax.__version__


def test_quality_limits_are_settings_of_the_cascade_and_recorded(monkeypatch, capsys, runs, phantoms, tmp_path):
    _, snet_run = runs
    cohort, _, _ = phantoms
    sid = cohort.ids[0]
    levels = ",".join(f"{z:.2f}" for z in cohort.levels_mm[sid])
    args = ["cascade", "--scan", cohort.scan_paths[sid], "--snet", snet_run, "--levels", levels]
    code, _, err = ssc(monkeypatch, capsys, *args, "--out", tmp_path / "default")
    assert code == 0, err
    default = json.loads((tmp_path / "default" / sid / "scores.json").read_text())
    # a clean phantom with its true levels: nothing but the 50-step test network's overshoots below 0 %
    assert {w["code"] for w in default["warnings"]} <= {"output_clipped"}
    assert default["provenance"]["quality_limits"]["lung_hu"] == [-950.0, -500.0]
    strict = ["--set", "quality.lung_hu=[-950,-900]", "--out", tmp_path / "strict"]
    code, out, err = ssc(monkeypatch, capsys, *args, *strict)
    assert code == 0, err
    result = json.loads((tmp_path / "strict" / sid / "scores.json").read_text())
    assert "lung_hu_implausible" in {w["code"] for w in result["warnings"]} and "lung_hu_implausible:" in out
    assert result["provenance"]["quality_limits"]["lung_hu"] == [-950.0, -900.0]
    code, _, err = ssc(monkeypatch, capsys, *args, "--set", "quality.lung_hu=[-950]", "--out", tmp_path / "bad")
    assert code == 2 and "quality.lung_hu" in err and not (tmp_path / "bad").exists()


REAL_SLICE = Path(__file__).parent / "fixtures" / "real_ct" / "chest_ct_slice_rle.dcm"


def real_ct_warnings(monkeypatch, capsys, snet_run, folder: Path, n: int, spacing: float, slices) -> tuple[set, str]:
    """The cascade's warnings ({(code, level)}) and printed output for the real slice (carina, 0.66 mm pixels, 238 cm^2
    of lung at -791 HU) repeated `n` times `spacing` mm apart, with the levels on the given slice positions."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(REAL_SLICE))
    volume = sitk.JoinSeries([image[:, :, 0]] * n)
    volume.SetOrigin(image.GetOrigin())
    volume.SetSpacing((*image.GetSpacing()[:2], spacing))
    sitk.WriteImage(volume, str(folder / "real.mha"))
    z = image.GetOrigin()[2] + spacing * np.asarray(slices, float)
    code, out, err = ssc(
        monkeypatch, capsys, "cascade", "--scan", folder / "real.mha", "--snet", snet_run,
        "--levels", ",".join(map(str, z)), "--out", folder / "out",
    )  # fmt: skip
    assert code == 0, err
    warnings = json.loads((folder / "out" / "real" / "scores.json").read_text())["warnings"]
    return {(w["code"], w.get("level")) for w in warnings}, out


@pytest.mark.skipif(not REAL_SLICE.is_file(), reason="needs the real CT fixture")
def test_real_ct_stacked_to_a_short_thick_scan_trips_the_coverage_warnings_not_the_lung_ones(
    monkeypatch, capsys, runs, tmp_path
):
    # 16 slices 6 mm apart: real lung values, 2.3 L of lung, 90 mm; L1 on the top slice, L5 on the bottom one
    found, out = real_ct_warnings(monkeypatch, capsys, runs[1], tmp_path, 16, 6.0, [15, 11, 7.5, 4, 0])
    assert {("thick_slices", None), ("level_at_scan_edge", 1), ("level_at_scan_edge", 5)} <= found
    assert not {"lung_hu_implausible", "lung_volume_implausible"} & {code for code, _ in found}  # real lung, 2.3 L
    assert "thick_slices: slice spacing 6.00 mm exceeds 5 mm" in out


@pytest.mark.skipif(not REAL_SLICE.is_file(), reason="needs the real CT fixture")
def test_real_ct_stacked_to_a_thin_partial_scan_trips_the_volume_and_level_gap_warnings(
    monkeypatch, capsys, runs, tmp_path
):
    # 20 slices 2 mm apart: 0.9 L of lung, a partial scan; L4 lies 4 mm below L3
    found, _ = real_ct_warnings(monkeypatch, capsys, runs[1], tmp_path, 20, 2.0, [17, 13, 9, 7, 2])
    assert {("lung_volume_implausible", None), ("levels_too_close", 4)} <= found
    assert not {"thick_slices", "lung_hu_implausible"} & {code for code, _ in found}


@pytest.mark.slow
def test_clean_test_phantoms_show_no_warning_with_the_whole_tiny_schedules(lnet_trained_full, snet_trained_full):
    from sscjax import cascade, runs

    run = snet_trained_full[0]
    cohort = load_cohort(runs.read_config(run).data_dir)
    models = cascade.load_models([lnet_trained_full[1]], [run])
    for sid in runs.read_splits(run)["test"]:
        result = cascade.run_cascade(read_scan(cohort.scan_paths[sid]), models)
        assert [w.to_json() for w in result.warnings] == [], sid


def changed_head_run(run_dir: Path, folder: Path, change) -> Path:
    """A copy of a trained run whose head kernel and bias (numpy, outputs last) `change(kernel, bias)` edits in
    place: a model made to disagree with its original in a known way."""
    from flax import nnx

    from sscjax.run_files import load_model, write_run

    model, config = load_model(run_dir)
    kernel, bias = np.array(model.head.kernel[...]), np.array(model.head.bias[...])
    change(kernel, bias)
    model.head.kernel = nnx.Param(kernel)
    model.head.bias = nnx.Param(bias)
    return write_run(folder, config, model)


def test_models_made_to_disagree_trip_the_fold_and_score_warnings_end_to_end(
    monkeypatch, capsys, runs, phantoms, tmp_path
):
    lnet_run, snet_run = runs
    cohort, _, _ = phantoms
    sid = cohort.ids[0]

    def swap_l2_l3(kernel, bias):
        kernel[..., [1, 2]], bias[[1, 2]] = kernel[..., [2, 1]], bias[[2, 1]]

    def l3_as_l4(kernel, bias):
        kernel[..., 2], bias[2] = kernel[..., 3], bias[3]  # the tiny L-Net's outputs are per-slice scores

    def raise_gg(kernel, bias):
        bias[1] += 0.8  # GG 80 points higher

    swapped = changed_head_run(lnet_run, tmp_path / "lnet_swapped", swap_l2_l3)
    moved = changed_head_run(lnet_run, tmp_path / "lnet_moved", l3_as_l4)
    high_gg = changed_head_run(snet_run, tmp_path / "snet_high_gg", raise_gg)

    def warnings(name, *models):
        code, out, err = ssc(
            monkeypatch, capsys, "cascade", "--scan", cohort.scan_paths[sid], *models, "--out", tmp_path / name
        )
        assert code == 0, err
        found = json.loads((tmp_path / name / sid / "scores.json").read_text())["warnings"]
        assert all(f"{w['code']}: {w['message']}" in out for w in found)
        return {(w["code"], w.get("level")) for w in found}

    found = warnings("swapped", "--lnet", swapped, "--snet", snet_run, "--snet", high_gg)
    assert ("levels_out_of_order", 3) in found
    assert {("score_folds_disagree", k) for k in range(1, 6)} <= found
    assert {("tot_below_max_pattern", k) for k in range(1, 6)} <= found
    assert not any(code == "level_folds_disagree" for code, _ in found)  # one L-Net fold
    found = warnings("moved", "--lnet", lnet_run, "--lnet", moved, "--snet", snet_run)
    assert [level for code, level in found if code == "level_folds_disagree"] == [3]
    assert not any(code in ("score_folds_disagree", "tot_below_max_pattern") for code, _ in found)  # one S-Net fold
