"""Cohort folders: loading, every validation problem (file, line, what), the TOT warning, summary, fingerprint."""

import os
import shutil

import numpy as np
import pytest

from sscjax.data.cohort import cohort_summary, load_cohort, score_histogram, write_levels_csv, write_scores_csv
from sscjax.data.splits import make_splits, write_splits
from sscjax.errors import CohortError, ScanError
from sscjax.io import Geometry, read_scan, write_image

N_SLICES, DZ, Z0 = 20, 2.5, -300.0  # slices span -300 .. -252.5 mm
LEVELS_MM = np.array([-255.0, -265.0, -275.0, -285.0, -295.0])


def scan_geometry(z0=Z0, dz=DZ):
    return Geometry((0.8, 0.8, dz), (-3.0, 4.0, z0))


def make_cohort(root, n=6, ext=".mha", masks=True, patterns=True, seed=0):
    """A valid tiny cohort (n <= 10): n scans of 20 slices of 6x6, levels inside, consistent scores, masks, patterns."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:02d}" for i in range(n)]
    for sid in ids:
        write_image(root / "scans" / f"{sid}{ext}", np.zeros((N_SLICES, 6, 6), np.int16), scan_geometry())
        if masks:
            write_image(root / "lung_masks" / f"{sid}.nii.gz", np.ones((N_SLICES, 6, 6), np.uint8), scan_geometry())
    if patterns:
        for name in ("gg", "ret", "healthy"):
            write_image(
                root / "patterns" / f"{name}.mha",
                rng.normal(-700, 50, (5, 5)).astype(np.float32),
                Geometry((0.8, 0.8, 1.0), (0.0, 0.0, 0.0)),
            )
    scores = {}
    for sid in ids:
        gg, ret = rng.integers(0, 8, (2, 5)) * 5.0
        tot = np.maximum(gg, ret) + np.minimum(gg, ret) * rng.integers(0, 2, 5)
        scores[sid] = np.stack([tot, gg, ret], axis=1)
    scores[ids[0]][:] = 0.0  # one entirely healthy patient
    write_levels_csv(root / "levels.csv", {sid: LEVELS_MM + 0.25 * i for i, sid in enumerate(ids)})
    write_scores_csv(root / "scores.csv", scores)
    return ids, scores


@pytest.fixture
def cohort_dir(tmp_path):
    root = tmp_path / "cohort"
    make_cohort(root)
    return root


def problems_of(root, **kwargs):
    with pytest.raises(CohortError) as e:
        load_cohort(root, **kwargs)
    return e.value.problems


def one_problem(root, *parts, **kwargs):
    """The one problem naming all `parts` (file, line, what); fails with the full list otherwise."""
    problems = problems_of(root, **kwargs)
    hits = [p for p in problems if all(part in p for part in parts)]
    assert len(hits) == 1, problems
    return hits[0]


def edit_line(path, line, new):
    lines = path.read_text().splitlines()
    lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_valid_cohort_loads_with_everything_in_place(cohort_dir):
    cohort = load_cohort(cohort_dir)
    assert cohort.ids == [f"p{i:02d}" for i in range(6)]
    assert cohort.scan_paths["p03"] == cohort_dir / "scans" / "p03.mha"
    np.testing.assert_array_equal(cohort.levels_mm["p02"], LEVELS_MM + 0.5)
    assert cohort.scores["p00"].shape == (5, 3) and not cohort.scores["p00"].any()
    assert sorted(cohort.lung_mask_paths) == cohort.ids and sorted(cohort.pattern_paths) == ["gg", "healthy", "ret"]
    assert cohort.warnings == [] and cohort.splits is None
    geometry, shape = cohort.scan_headers["p01"]
    assert shape == (N_SLICES, 6, 6) and geometry.spacing == pytest.approx((0.8, 0.8, DZ))
    rows = cohort.level_rows(["p02"])
    assert [(r.scan_id, r.level, r.z_mm) for r in rows] == [("p02", k + 1, LEVELS_MM[k] + 0.5) for k in range(5)]
    np.testing.assert_array_equal(rows[3].scores, cohort.scores["p02"][3])


def test_scores_read_back_exactly_in_tot_gg_ret_order(tmp_path):
    root = tmp_path / "c"
    _, scores = make_cohort(root, n=5, masks=False, patterns=False)
    (root / "scores.csv").write_text((root / "scores.csv").read_text().replace("p01,3,", "p01,3,  ", 1))
    cohort = load_cohort(root, check_scans=False)
    for sid, expected in scores.items():
        np.testing.assert_array_equal(cohort.scores[sid], expected)
    assert (root / "scores.csv").read_text().splitlines()[0] == "scan_id,level,TOT,GG,RET"


def test_rows_in_any_order_and_extra_files_are_fine(cohort_dir):
    lines = (cohort_dir / "scores.csv").read_text().splitlines()
    (cohort_dir / "scores.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    (cohort_dir / "truth").mkdir()
    (cohort_dir / "truth" / "x.json").write_text("{}")
    (cohort_dir / "README.md").write_text("phantom")
    (cohort_dir / "scans" / "p00.raw").write_text("not an image")
    (cohort_dir / "patterns" / "other.mha").write_text("ignored")
    assert load_cohort(cohort_dir).ids == [f"p{i:02d}" for i in range(6)]


def test_missing_folder_and_csvs(tmp_path):
    assert "no such cohort folder" in problems_of(tmp_path / "nothing")[0]
    problems = problems_of(tmp_path)
    assert any(str(tmp_path / "levels.csv") in p and "missing" in p and "scan_id,L1,L2,L3,L4,L5" in p for p in problems)
    assert any(
        str(tmp_path / "scores.csv") in p and "missing" in p and "scan_id,level,TOT,GG,RET" in p for p in problems
    )
    assert any(str(tmp_path / "scans") in p and "missing" in p for p in problems)


def test_empty_cohort(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "levels.csv").write_text("scan_id,L1,L2,L3,L4,L5\n")
    (tmp_path / "scores.csv").write_text("scan_id,level,TOT,GG,RET\n")
    assert "has no patients" in one_problem(tmp_path, str(tmp_path))


def test_missing_scan_and_scan_without_rows(cohort_dir):
    (cohort_dir / "scans" / "p04.mha").unlink()
    shutil.copy(cohort_dir / "scans" / "p01.mha", cohort_dir / "scans" / "extra.mha")
    problem = one_problem(cohort_dir, "no scan for 'p04'")
    assert str(cohort_dir / "scans") in problem and "levels.csv line 6" in problem
    assert "no rows" in one_problem(cohort_dir, str(cohort_dir / "scans" / "extra.mha"))


def test_scan_listed_in_only_one_csv(cohort_dir):
    levels = cohort_dir / "levels.csv"
    edit_line(levels, 3, "")  # drops p01 from levels.csv
    problem = one_problem(cohort_dir, str(levels), "no row for scan 'p01'")
    assert "scores.csv line 7" in problem
    scores = cohort_dir / "scores.csv"
    scores.write_text("\n".join(line for line in scores.read_text().splitlines() if not line.startswith("p02,")) + "\n")
    assert "levels.csv line 4" in one_problem(cohort_dir, str(scores), "no rows for scan 'p02'", check_scans=False)


def test_duplicates(cohort_dir):
    levels, scores = cohort_dir / "levels.csv", cohort_dir / "scores.csv"
    edit_line(levels, 5, levels.read_text().splitlines()[1])  # p00 again on line 5 (p03 lost)
    assert "scan_id 'p00' repeats line 2" in one_problem(cohort_dir, f"{levels} line 5")
    make_cohort(cohort_dir)
    edit_line(scores, 4, "p00,1,0,0,0")
    problems = problems_of(cohort_dir)
    assert any(f"{scores} line 4" in p and "scan 'p00' level 1 repeats line 2" in p for p in problems)
    assert any(f"{scores} line 2" in p and "lacks level(s) 3" in p for p in problems)
    make_cohort(cohort_dir)
    write_image(cohort_dir / "scans" / "p02.nii.gz", np.zeros((N_SLICES, 6, 6), np.int16), scan_geometry())
    problem = one_problem(cohort_dir, str(cohort_dir / "scans"), "'p02'")
    assert "2 files" in problem and "p02.mha" in problem and "p02.nii.gz" in problem


def test_wrong_columns(cohort_dir):
    levels, scores = cohort_dir / "levels.csv", cohort_dir / "scores.csv"
    edit_line(levels, 1, "scan_id,L1,L2,L3,L4,L6")
    edit_line(scores, 1, "scan_id,level,TOT,GG,RET,GG")
    assert "missing column(s) L5" in one_problem(cohort_dir, f"{levels} line 1")
    assert "repeated column(s) GG" in one_problem(cohort_dir, f"{scores} line 1")
    make_cohort(cohort_dir)
    edit_line(levels, 3, "p01,1,2,3")
    assert "4 values where the header has 6" in one_problem(cohort_dir, f"{levels} line 3")


def test_extra_column_is_a_warning(cohort_dir):
    lines = (cohort_dir / "levels.csv").read_text().splitlines()
    (cohort_dir / "levels.csv").write_text("\n".join([lines[0] + ",note", *(line + ",x" for line in lines[1:])]) + "\n")
    cohort = load_cohort(cohort_dir, check_scans=False)
    assert len(cohort.warnings) == 1 and "line 1: extra column(s) ignored: note" in cohort.warnings[0]


@pytest.mark.parametrize(
    "row, what",
    [
        ("p00,1,abc,0,0", "not a number: TOT = 'abc'"),
        ("p00,1,0,,0", "not a number: GG = ''"),
        ("p00,1,0,0,nan", "not a number: RET = 'nan'"),
        ("p00,1,105,5,100", "outside 0..100 %: TOT = 105"),
        ("p00,1,5,5,-5", "outside 0..100 %: RET = -5"),
    ],
)
def test_bad_scores(cohort_dir, row, what):
    scores = cohort_dir / "scores.csv"
    edit_line(scores, 2, row)
    assert what in one_problem(cohort_dir, f"{scores} line 2", check_scans=False)


@pytest.mark.parametrize("level", ["6", "0", "2.5", "x"])
def test_level_not_one_to_five(cohort_dir, level):
    scores = cohort_dir / "scores.csv"
    edit_line(scores, 3, f"p00,{level},0,0,0")
    problems = problems_of(cohort_dir, check_scans=False)
    assert any(f"{scores} line 3" in p and f"level '{level}' is not one of 1, 2, 3, 4, 5" in p for p in problems)
    assert any(f"{scores} line 2" in p and "scan 'p00' lacks level(s) 2" in p for p in problems)


def test_tot_outside_union_bounds_is_a_warning_not_an_error(cohort_dir):
    scores = cohort_dir / "scores.csv"
    edit_line(scores, 2, "p00,1,10,20,5")  # TOT < max(GG, RET)
    edit_line(scores, 3, "p00,2,30,20,5")  # TOT > GG + RET
    edit_line(scores, 4, "p00,3,20,20,5")  # fine
    cohort = load_cohort(cohort_dir, check_scans=False)
    assert len(cohort.warnings) == 2
    assert f"{scores} line 2: TOT = 10" in cohort.warnings[0] and "[20, 25]" in cohort.warnings[0]
    assert f"{scores} line 3: TOT = 30" in cohort.warnings[1]
    np.testing.assert_array_equal(cohort.scores["p00"][0], [10, 20, 5])


@pytest.mark.parametrize(
    "row, what",
    [
        ("p01,-254,-264,-264,-284,-294", "L2 = -264 is not above L3 = -264"),
        ("p01,-294,-264,-274,-284,-254", "L1 = -294 is not above L2 = -264"),
        ("p01,-254,-264,-274,-284,oops", "not a number: L5 = 'oops'"),
    ],
)
def test_levels_out_of_order_or_not_numbers(cohort_dir, row, what):
    levels = cohort_dir / "levels.csv"
    edit_line(levels, 3, row)
    problem = one_problem(cohort_dir, f"{levels} line 3", check_scans=False)
    assert what in problem
    if "above" in what:
        assert "out of anatomical order" in problem


def test_levels_outside_the_scan_by_more_than_half_a_slice(cohort_dir):
    levels = cohort_dir / "levels.csv"
    # slices span -300 .. -252.5; half a slice is 1.25 mm
    edit_line(levels, 2, "p00,-251.25,-265,-275,-285,-301.25")
    assert load_cohort(cohort_dir).levels_mm["p00"][0] == -251.25
    edit_line(levels, 2, "p00,-251.2,-265,-275,-285,-301.3")
    problem = one_problem(cohort_dir, f"{levels} line 2")
    assert "L1 = -251.2 mm, L5 = -301.3 mm outside the scan" in problem
    assert str(cohort_dir / "scans" / "p00.mha") in problem and "-300.00 .. -252.50 mm" in problem
    assert load_cohort(cohort_dir, check_scans=False).ids  # only opening the scans finds it


def test_unreadable_and_single_slice_scans(cohort_dir):
    (cohort_dir / "scans" / "p01.mha").write_bytes(b"garbage, not an image")
    write_image(cohort_dir / "scans" / "p02.mha", np.zeros((6, 6), np.int16), scan_geometry())
    problems = problems_of(cohort_dir)
    assert any(str(cohort_dir / "scans" / "p01.mha") in p and "cannot read" in p for p in problems)
    assert any(str(cohort_dir / "scans" / "p02.mha") in p and "single 2D slice" in p for p in problems)
    (cohort_dir / "scans" / "p03.dcm").write_bytes(b"x")
    assert "single DICOM file" in one_problem(cohort_dir, str(cohort_dir / "scans" / "p03.dcm"), check_scans=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.where(np.arange(N_SLICES)[:, None, None] == 3, np.nan, np.zeros((N_SLICES, 6, 6), np.float32)),
        lambda: np.zeros((N_SLICES, 6, 6), np.uint16),
        lambda: np.zeros((4, 6, 6), np.int16),
    ],
    ids=["nan", "unsigned", "4-slices"],
)
def test_scans_are_refused_with_the_message_every_command_gives(cohort_dir, make):
    """`ssc data check` reads each scan as the commands do: the same refusal, word for word."""
    path = cohort_dir / "scans" / "p02.mha"
    write_image(path, make(), scan_geometry())
    with pytest.raises(ScanError) as refused:
        read_scan(path)
    assert one_problem(cohort_dir, str(path)) == str(refused.value)


def test_broken_link(cohort_dir):
    (cohort_dir / "scans" / "p05.mha").unlink()
    os.symlink("../elsewhere/p05.mha", cohort_dir / "scans" / "p05.mha")
    assert "broken link" in one_problem(cohort_dir, str(cohort_dir / "scans" / "p05.mha"), check_scans=False)


def test_lung_mask_geometry_must_match_its_scan(cohort_dir):
    masks = cohort_dir / "lung_masks"
    write_image(masks / "p01.nii.gz", np.ones((N_SLICES, 6, 7), np.uint8), scan_geometry())
    write_image(masks / "p02.nii.gz", np.ones((N_SLICES, 6, 6), np.uint8), scan_geometry(z0=Z0 + 1))
    write_image(masks / "p03.nii.gz", np.ones((N_SLICES, 6, 6), np.uint8), scan_geometry(dz=2.0))
    problems = problems_of(cohort_dir)
    assert len(problems) == 3, problems
    assert "shape (z, y, x) (20, 6, 7) vs (20, 6, 6)" in one_problem(cohort_dir, str(masks / "p01.nii.gz"))
    assert "origin" in one_problem(cohort_dir, str(masks / "p02.nii.gz"))
    assert "spacing" in one_problem(cohort_dir, str(masks / "p03.nii.gz"))
    assert load_cohort(cohort_dir, check_scans=False).lung_mask_paths["p01"] == masks / "p01.nii.gz"


def test_mask_without_scan_is_ignored_with_a_warning(cohort_dir):
    write_image(cohort_dir / "lung_masks" / "ghost.nii.gz", np.ones((3, 6, 6), np.uint8), scan_geometry())
    cohort = load_cohort(cohort_dir)
    assert "ghost" not in cohort.lung_mask_paths and "no scan 'ghost'" in cohort.warnings[0]


def test_patterns_required_only_on_request_and_must_be_one_slice(tmp_path):
    root = tmp_path / "c"
    make_cohort(root, patterns=False)
    assert load_cohort(root).pattern_paths == {}
    problem = one_problem(root, str(root / "patterns"), require_patterns=True)
    assert "missing pattern(s) gg, ret, healthy" in problem
    write_image(root / "patterns" / "gg.mha", np.zeros((2, 5, 5), np.float32), scan_geometry())
    problems = problems_of(root, require_patterns=True)
    assert any(str(root / "patterns" / "gg.mha") in p and "has 2 slices" in p for p in problems)
    assert any("missing pattern(s) ret, healthy" in p for p in problems)


def test_splits_json_must_match_the_cohort(cohort_dir):
    splits = make_splits([f"p{i:02d}" for i in range(6)], n_folds=2, seed=3)
    write_splits(cohort_dir, splits)
    assert load_cohort(cohort_dir, check_scans=False).splits == splits
    (cohort_dir / "scans" / "p05.mha").unlink()
    edit_line(cohort_dir / "levels.csv", 7, "")
    (cohort_dir / "scores.csv").write_text(
        "\n".join(line for line in (cohort_dir / "scores.csv").read_text().splitlines() if not line.startswith("p05"))
        + "\n"
    )
    problem = one_problem(cohort_dir, str(cohort_dir / "splits.json"), check_scans=False)
    assert "not in the cohort: p05" in problem
    assert load_cohort(cohort_dir, check_scans=False, check_splits=False).ids == [f"p{i:02d}" for i in range(5)]


def test_all_problems_are_collected_at_once(cohort_dir):
    edit_line(cohort_dir / "levels.csv", 2, "p00,-255,-265,-265,-285,-295")
    edit_line(cohort_dir / "scores.csv", 5, "p00,4,200,0,0")
    (cohort_dir / "scans" / "p03.mha").unlink()
    problems = problems_of(cohort_dir)
    assert len(problems) == 3, problems
    message = str(CohortError(problems))
    assert message.startswith("3 problem(s) in the cohort:")


def test_score_histogram_bins():
    counts = score_histogram(np.array([0, 0, 5, 10, 10.5, 20, 55, 100, 99.9]))
    assert counts == [2, 2, 2, 0, 0, 0, 1, 0, 0, 0, 2]


def test_summary_numbers(cohort_dir):
    cohort = load_cohort(cohort_dir)
    summary = cohort_summary(cohort)
    scores = np.stack([cohort.scores[i] for i in cohort.ids])
    assert summary["patients"] == 6 and summary["levels_scored"] == 30
    assert summary["healthy_share"] == pytest.approx(np.mean(scores[..., 0] == 0))
    for p, name in enumerate(("TOT", "GG", "RET")):
        assert sum(summary["histograms"][name]) == 30
        assert summary["histograms"][name][0] == int(np.sum(scores[..., p] == 0))
        np.testing.assert_allclose(summary["mean_per_level"][name], scores[..., p].mean(0), atol=0.005)
        np.testing.assert_allclose(summary["median_per_level"][name], np.median(scores[..., p], 0), atol=0.005)
    assert summary["scans"]["shape_zyx"] == {"min": [20, 6, 6], "max": [20, 6, 6]}
    assert summary["scans"]["spacing_xyz_mm"]["max"] == pytest.approx([0.8, 0.8, 2.5])
    assert summary["l1_to_l5_mm"] == {"min": 40.0, "max": 40.0}
    assert summary["lung_masks"] == 6 and summary["patterns"] == ["gg", "healthy", "ret"]
    assert summary["scans"] is not None and cohort_summary(load_cohort(cohort_dir, check_scans=False))["scans"] is None


def test_fingerprint_is_stable_and_sees_changes(cohort_dir):
    first = load_cohort(cohort_dir).fingerprint()
    assert load_cohort(cohort_dir).fingerprint() == first
    scan = cohort_dir / "scans" / "p02.mha"
    stat = scan.stat()
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = load_cohort(cohort_dir).fingerprint()
    assert touched != first
    edit_line(cohort_dir / "scores.csv", 2, "p00,1,5,5,0")
    assert load_cohort(cohort_dir).fingerprint() != touched


def test_dicom_folder_scan(tmp_path):
    """A DICOM folder scans/<id>/ is a scan; its header geometry places the levels."""
    import SimpleITK as sitk

    root = tmp_path / "c"
    make_cohort(root, n=5, masks=False, patterns=False)
    (root / "scans" / "p01.mha").unlink()
    folder = root / "scans" / "p01"
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.zeros((N_SLICES, 6, 6), np.int16))
    for k in range(N_SLICES):
        image = volume[:, :, k]
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": "1.2.3.4",
            "0020|0013": str(k + 1),
            "0020|0032": f"-3\\4\\{Z0 + DZ * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
            "0018|0050": str(DZ),
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(image)
    cohort = load_cohort(root)
    assert cohort.scan_paths["p01"] == folder
    geometry, shape = cohort.scan_headers["p01"]
    assert shape == (N_SLICES, 6, 6) and geometry.z_of_index(0) == pytest.approx(Z0)
