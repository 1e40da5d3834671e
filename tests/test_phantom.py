"""Phantom cohorts: exact truth re-derived from the masks, levels tied to anatomy, round trips, determinism."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from scipy import ndimage

from sscjax import io
from sscjax.errors import ConfigError, SscError
from sscjax.phantom import generate_patient, patient_seed, write_cohort
from sscjax.phantom.anatomy import ABDOMEN, AIR, BLOOD, CORTEX, FAT, LIVER, LUMEN, MUSCLE
from sscjax.phantom.fields import SliceGrid
from sscjax.phantom.patient import build_patient, level_truth, round_half_up_5
from sscjax.phantom.presets import get_preset
from sscjax.phantom.render import SliceDrawer

SEEDS = [patient_seed(11, i) for i in range(6)]
COHORT_SEED = 3


@pytest.fixture(scope="module")
def case():
    """A diseased small phantom (checked below) whose truth the tests re-derive."""
    return generate_patient(patient_seed(0, 1), "small", "case")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "phantoms"
    write_cohort(out, 3, "small", seed=COHORT_SEED)
    return out


def _fine(model, pixel=0.5, half=90.0):
    """A fine pixel grid over the mediastinum, to check anatomy below the preset's resolution."""
    an = model.anatomy
    x = np.arange(an.x_mid - half, an.x_mid + half, pixel)
    y = np.arange(an.y0 - an.cav_front, an.y0 + an.cav_back, pixel)
    return SliceDrawer(model, SliceGrid(x, y))


def _at(polyline, z):
    """The (x, y) where a polyline (rows x y z, z monotonic along it) crosses height z."""
    p = np.asarray(polyline)
    order = np.argsort(p[:, 2])
    return np.array([np.interp(z, p[order, 2], p[order, i]) for i in (0, 1)])


def _pixel(drawer, xy):
    iy = int(np.argmin(np.abs(drawer.grid.y - xy[1])))
    ix = int(np.argmin(np.abs(drawer.grid.x - xy[0])))
    return iy, ix


# ---- truth -------------------------------------------------------------------------------------------------
def test_scores_are_the_area_ratios_of_the_masks(case):
    assert case.exact_scores[:, 0].max() > 5, "the fixture patient should be diseased"
    for level, k in enumerate(case.level_slices):
        lung = case.lung_mask[k].astype(bool)
        lesion = case.lesion_mask[k]
        n = lung.sum()
        assert n > 200
        gg = ((lesion & 1) > 0) & lung
        ret = ((lesion & 2) > 0) & lung
        expected = 100.0 * np.array([(gg | ret).sum(), gg.sum(), ret.sum()]) / n
        np.testing.assert_allclose(case.exact_scores[level], expected, rtol=0, atol=1e-12)
        tot, g, r = case.exact_scores[level]
        assert max(g, r) <= tot <= g + r + 1e-12
    np.testing.assert_array_equal(case.scores, round_half_up_5(case.exact_scores))
    assert np.all(case.lesion_mask[case.lung_mask == 0] == 0), "lesions lie inside the lung mask"
    assert set(np.unique(case.lesion_mask)) <= {0, 1, 2, 3} and set(np.unique(case.lung_mask)) == {0, 1}


def test_round_half_up_to_5():
    np.testing.assert_array_equal(
        round_half_up_5(np.array([0, 2.4999, 2.5, 7.5, 12.49, 97.5, 100])), [0, 0, 5, 10, 10, 100, 100]
    )


def test_level_order_and_definitions(case):
    lv = case.levels_mm
    assert np.all(np.diff(lv) < 0), "L1 highest ... L5 lowest"
    assert lv[3] == (lv[2] + lv[4]) / 2
    an = case.params["anatomy"]
    assert lv[4] == pytest.approx(an["dome_r"] + 10.0, abs=1e-9)
    assert an["dome_l"] < an["dome_r"], "the right dome is higher"
    assert 25 <= lv[0] - lv[1] <= 40 and 30 <= lv[1] - lv[2] <= 50 and 60 <= lv[2] - lv[4] <= 110
    np.testing.assert_array_equal(case.level_slices, case.scan.geometry.nearest_slice(lv, case.scan.n_slices))
    assert np.all(np.round(lv, 2) == lv)


def test_level_truth_matches_the_volume(case):
    slices, exact = level_truth(patient_seed(0, 1), "small")
    np.testing.assert_array_equal(slices, case.level_slices)
    np.testing.assert_array_equal(exact, case.exact_scores)


def test_severity_distribution_is_skewed_like_ssc():
    tot = round_half_up_5(np.stack([level_truth(patient_seed(1, i), "small")[1] for i in range(30)]))[:, :, 0]
    assert 0.35 <= np.mean(tot == 0) <= 0.7, "about half of all levels are healthy"
    assert np.any(tot.max(axis=1) == 0), "some patients are fully healthy"
    assert tot[:, 3:].mean() > 2 * tot[:, :2].mean(), "the bases are more affected than the upper levels"
    assert np.mean(tot >= 50) < 0.1 and tot.max() <= 90


# ---- levels tied to anatomy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_carina_splits_the_trachea_at_L2(seed):
    model, _ = build_patient(seed, get_preset("small"))
    drawer = _fine(model)
    zc = model.anatomy.levels[1]
    counts = {}
    for dz in (-2.0, 4.0, 20.0):
        air = drawer.draw(zc + dz).labels == LUMEN
        counts[dz] = ndimage.label(air)[1]
    assert counts == {-2.0: 2, 4.0: 1, 20.0: 1}


@pytest.mark.parametrize("seed", SEEDS)
def test_great_vessels_arise_from_the_arch_at_L1(seed):
    model, _ = build_patient(seed, get_preset("small"))
    drawer = _fine(model)
    l1 = model.anatomy.levels[0]
    lm = model.mediastinum.landmarks
    arch = lm["arch"]
    r_arch = model.anatomy.aorta_r[1]
    assert arch[:, 2].max() + r_arch == pytest.approx(l1), "the arch's upper surface is at L1"
    # below L1 the slice cuts the arch lengthwise: one long blood region; above, three separate round vessels
    below = drawer.draw(l1 - 6).labels == BLOOD
    comp, _ = ndimage.label(below)
    top = arch[np.argmax(arch[:, 2])]
    region = comp == comp[_pixel(drawer, top[:2])]
    assert comp[_pixel(drawer, top[:2])] > 0
    ys, xs = np.nonzero(region)
    assert np.hypot(np.ptp(xs), np.ptp(ys)) * 0.5 > 35, "the arch runs front-right to back-left"
    above = drawer.draw(l1 + 8).labels == BLOOD
    comp, _ = ndimage.label(above)
    ids = [comp[_pixel(drawer, _at(v, l1 + 8))] for v in lm["great_vessels"]]
    assert min(ids) > 0 and len(set(ids)) == 3, "three great vessels, separate"
    assert max(np.sum(comp == i) for i in ids) < 0.5 * region.sum(), "each vessel is much smaller than the arch cut"


@pytest.mark.parametrize("seed", SEEDS)
def test_superior_pulmonary_veins_join_the_left_atrium_at_L3(seed):
    model, _ = build_patient(seed, get_preset("small"))
    drawer = _fine(model, half=110.0)
    l3 = model.anatomy.levels[2]
    labels = drawer.draw(l3).labels
    comp, _ = ndimage.label(labels == BLOOD)
    la = model.anatomy.heart_parts()[2][0]
    atrium = comp[_pixel(drawer, la[:2])]
    assert atrium > 0
    for vein in model.mediastinum.landmarks["superior_veins"]:
        for t in np.linspace(0, 1, 6):
            point = vein[0] + t * (vein[1] - vein[0])
            assert comp[_pixel(drawer, point[:2])] == atrium


@pytest.mark.parametrize("seed", SEEDS)
def test_L5_lies_10mm_above_the_right_dome(seed):
    model, _ = build_patient(seed, get_preset("small"))
    an = model.anatomy
    drawer = _fine(model, pixel=1.0, half=an.cav_half_x)
    xr, _, yd = an.dome_centres
    dome = an.dome_r
    assert an.levels[4] == pytest.approx(dome + 10)
    just_below = drawer.draw(dome - 1.0)
    just_above = drawer.draw(dome + 1.0)
    assert (just_below.labels == LIVER).sum() > 0, "the liver dome shows just under the dome top"
    assert (just_above.labels == LIVER).sum() == 0 and (just_above.labels == ABDOMEN).sum() == 0
    at_l5 = drawer.draw(an.levels[4])
    assert at_l5.lung[_pixel(drawer, (xr, yd))], "lung above the right dome at L5"


# ---- image values ------------------------------------------------------------------------------------------
def test_hu_of_tissues_are_plausible(case):
    model, layout = build_patient(patient_seed(0, 1), get_preset("small"))
    drawer = SliceDrawer(model, layout.grid(128))
    k = case.level_slices[2]
    labels = drawer.draw(float(case.scan.z_mm[k])).labels
    hu = case.scan.array[k]

    def median(label):
        inner = ndimage.binary_erosion(labels == label, iterations=2)
        return float(np.median(hu[inner])) if inner.any() else np.nan

    healthy = ndimage.binary_erosion(case.lung_mask[k].astype(bool) & (case.lesion_mask[k] == 0), iterations=2)
    assert -900 < np.median(hu[healthy]) < -780
    assert -130 < median(FAT) < -60
    assert 20 < median(MUSCLE) < 70
    assert median(AIR) < -970
    assert hu[labels == CORTEX].max() > 300 and hu.max() > 500
    air = ndimage.binary_erosion(labels == AIR, iterations=3)
    assert 3 < hu[air].std() < 30


# ---- cohort files ------------------------------------------------------------------------------------------
def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cohort_files_read_back_canonical(cohort):
    meta = json.loads((cohort / "truth" / "phantom.json").read_text())
    assert meta["preset"] == "small" and len(meta["patients"]) == 3
    levels = {r["scan_id"]: r for r in _rows(cohort / "levels.csv")}
    scores = _rows(cohort / "scores.csv")
    exact = _rows(cohort / "truth" / "exact_scores.csv")
    reversed_seen = set()
    for i, patient in enumerate(meta["patients"]):
        sid = patient["scan_id"]
        assert patient["seed"] == patient_seed(COHORT_SEED, i)
        case = generate_patient(patient["seed"], "small", sid)
        raw = sitk.ReadImage(str(cohort / "scans" / f"{sid}.mha"))
        assert raw.GetPixelID() == sitk.sitkInt16
        assert raw.GetDirection()[8] == (-1.0 if case.stored_reversed else 1.0)
        reversed_seen.add(case.stored_reversed)
        scan = io.read_scan(cohort / "scans" / f"{sid}.mha")
        np.testing.assert_array_equal(scan.array, case.scan.array)
        np.testing.assert_allclose(scan.geometry.origin, case.scan.geometry.origin, atol=1e-6)
        np.testing.assert_allclose(scan.geometry.direction, np.eye(3).ravel(), atol=1e-12)
        for folder, truth in (("lung_masks", case.lung_mask), ("truth/lesions", case.lesion_mask)):
            np.testing.assert_array_equal(io.read_image(cohort / folder / f"{sid}.mha").array, truth)
        lv = np.array([float(levels[sid][f"L{j}"]) for j in range(1, 6)])
        np.testing.assert_array_equal(scan.geometry.nearest_slice(lv, scan.n_slices), case.level_slices)
        rows = [r for r in exact if r["scan_id"] == sid]
        assert [int(r["slice_index"]) for r in rows] == case.level_slices.tolist()
        np.testing.assert_allclose(
            [[float(r[p]) for p in ("TOT", "GG", "RET")] for r in rows], case.exact_scores, atol=1e-6
        )
        got = [[int(r[p]) for p in ("TOT", "GG", "RET")] for r in scores if r["scan_id"] == sid]
        np.testing.assert_array_equal(got, case.scores)
    assert reversed_seen == {True, False}, "the cohort seed should give both storage orders"
    assert (cohort / "README.md").read_text().startswith("# Synthetic chest-CT cohort")
    assert not (cohort / "splits.json").exists()


def test_patterns_are_one_slice_texture_patches(cohort):
    means = {}
    for name in ("gg", "ret", "healthy"):
        image = io.read_image(cohort / "patterns" / f"{name}.mha")
        assert image.array.shape == (1, 32, 32)
        means[name] = float(image.array.mean())
    assert means["healthy"] < -700 and -720 < means["gg"] < -450 and means["ret"] > means["healthy"] + 50


def test_same_seed_same_patient_and_different_seeds_differ(case):
    again = generate_patient(patient_seed(0, 1), "small", "case")
    np.testing.assert_array_equal(again.scan.array, case.scan.array)
    np.testing.assert_array_equal(again.lesion_mask, case.lesion_mask)
    assert again.params == case.params
    other = build_patient(patient_seed(0, 2), get_preset("small"))[0].anatomy
    assert other.levels != tuple(case.levels_mm)


def test_write_cohort_refuses_a_non_empty_folder_and_overwrites_only_its_own_files(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SscError, match="not empty"):
        write_cohort(out, 1, "small")
    write_cohort(out, 2, "small", seed=7, overwrite=True)
    write_cohort(out, 1, "small", seed=7, overwrite=True)
    assert sorted(p.name for p in (out / "scans").iterdir()) == ["phantom_000.mha"]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError):
        generate_patient(0, "huge")


def test_cli_writes_a_cohort_and_reports_a_summary(tmp_path):
    from sscjax.cli.phantom import phantom

    result = CliRunner().invoke(phantom, [str(tmp_path / "c"), "--patients", "1", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "Wrote 1 patient(s)" in result.output and "healthy" in result.output
    result = CliRunner().invoke(phantom, [str(tmp_path / "c"), "--patients", "1"])
    assert isinstance(result.exception, SscError)
