"""`ssc data check / split / import-goh` end to end through the real entry point (exit codes, messages)."""

import json
import os

import numpy as np
import openpyxl
import pytest
import SimpleITK as sitk
from conftest import run_ssc as ssc
from test_cohort import make_cohort

from sscjax.data.cohort import load_cohort
from sscjax.data.goh import GOH_COLUMNS, patient_key
from sscjax.data.splits import make_splits
from sscjax.errors import ScanError
from sscjax.io import read_scan


def test_help_of_every_command(monkeypatch, capsys):
    for args in (
        ["data", "--help"],
        ["data", "check", "--help"],
        ["data", "split", "--help"],
        ["data", "import-goh", "--help"],
    ):
        code, out, _ = ssc(monkeypatch, capsys, *args)
        assert code == 0 and "Usage:" in out


def test_check_good_cohort(tmp_path, monkeypatch, capsys):
    ids, scores = make_cohort(tmp_path)
    code, out, err = ssc(monkeypatch, capsys, "data", "check", tmp_path)
    assert code == 0, err
    all_scores = np.stack([scores[i] for i in ids])
    healthy = round(100 * np.mean(all_scores[..., 0] == 0))
    assert f"6 patients, 30 scored levels, {healthy} % of levels healthy" in out
    tot_row = next(line for line in out.splitlines() if line.strip().startswith("TOT") and "/" not in line)
    assert sum(map(int, tot_row.split()[1:])) == 30 and int(tot_row.split()[1]) == int(np.sum(all_scores[..., 0] == 0))
    assert "20..20 slices of 6..6 x 6..6 pixels" in out and "lung masks: 6; texture patterns: gg, healthy, ret" in out
    assert "splits: none yet" in out and "warning" not in out
    code, out, _ = ssc(monkeypatch, capsys, "data", "check", "--no-scans", tmp_path)
    assert code == 0 and "headers not read" in out


def test_check_broken_cohort_lists_problems_and_exits_2(tmp_path, monkeypatch, capsys):
    make_cohort(tmp_path)
    (tmp_path / "scans" / "p02.mha").unlink()
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    lines[3] = "p00,3,0,0,120"
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    code, out, err = ssc(monkeypatch, capsys, "data", "check", tmp_path)
    assert code == 2 and out == ""
    assert "2 problem(s) in the cohort" in err
    assert f"{tmp_path / 'scores.csv'} line 4: score(s) outside 0..100 %: RET = 120" in err
    assert f"{tmp_path / 'scans'}: no scan for 'p02' (listed in levels.csv line 4)" in err
    assert "Traceback" not in err


def test_check_reads_every_scan_as_the_commands_do(tmp_path, monkeypatch, capsys):
    """A NaN voxel or a negative slice spacing in the header: the problem list holds read_scan's own refusal."""
    make_cohort(tmp_path, masks=False)
    nan_scan, flipped = tmp_path / "scans" / "p01.mha", tmp_path / "scans" / "p04.mha"
    image = sitk.ReadImage(str(nan_scan), sitk.sitkFloat32)
    image[2, 3, 4] = float("nan")
    sitk.WriteImage(image, str(nan_scan))
    flipped.write_bytes(flipped.read_bytes().replace(b" 2.5\nDimSize", b" -2.5\nDimSize"))
    code, out, err = ssc(monkeypatch, capsys, "data", "check", tmp_path)
    assert code == 2 and out == ""
    assert "2 problem(s) in the cohort" in err
    assert f"  {nan_scan}: 1 of 720 voxels are NaN or infinite; a CT holds finite HU values\n" in err
    assert f"  {flipped}: spacing (0.8, 0.8, -2.5) mm is not positive\n" in err
    for path in (nan_scan, flipped):
        with pytest.raises(ScanError) as refused:
            read_scan(path)
        assert f"  {refused.value}\n" in err


def test_check_shows_tot_warnings(tmp_path, monkeypatch, capsys):
    make_cohort(tmp_path, masks=False, patterns=False)
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    lines[1] = "p00,1,50,5,5"
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    code, out, _ = ssc(monkeypatch, capsys, "data", "check", tmp_path)
    assert code == 0 and "1 warning(s):" in out
    assert "line 2: TOT = 50 lies outside [max(GG, RET), GG + RET] = [5, 10]" in out


def test_split_writes_refuses_to_overwrite_and_forces(tmp_path, monkeypatch, capsys):
    ids, _ = make_cohort(tmp_path, n=9, masks=False, patterns=False)
    code, out, _ = ssc(monkeypatch, capsys, "data", "split", tmp_path, "--folds", 3, "--seed", 5)
    assert code == 0 and "2 test patients, 3 folds of 3/2/2 (seed 5)" in out
    written = json.loads((tmp_path / "splits.json").read_text())
    assert written == make_splits(ids, n_folds=3, seed=5).to_json()
    assert ssc(monkeypatch, capsys, "data", "split", tmp_path, "--folds", 3, "--seed", 5)[1].endswith("unchanged\n")
    code, _, err = ssc(monkeypatch, capsys, "data", "split", tmp_path, "--folds", 3, "--seed", 6)
    assert code == 2 and "differs" in err and "--force" in err
    assert json.loads((tmp_path / "splits.json").read_text()) == written
    code, _, _ = ssc(monkeypatch, capsys, "data", "split", tmp_path, "--n-test", 3, "--seed", 6, "--force")
    assert code == 0
    assert json.loads((tmp_path / "splits.json").read_text()) == make_splits(ids, n_test=3, seed=6).to_json()
    code, out, err = ssc(monkeypatch, capsys, "data", "check", tmp_path)
    assert code == 0 and "splits: 3 test, folds of 2/2/1/1 (seed 6)" in out, err
    code, _, err = ssc(monkeypatch, capsys, "data", "split", tmp_path, "--folds", 9, "--force")
    assert code == 2 and "too few" in err


# --- import-goh -----------------------------------------------------------------------------------------------


def _scan(path, dz=2.0, z0=-200.0, zdir=1.0, n=30):
    """A small scan stored with the given z direction (written by SimpleITK as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.arange(n * 16, dtype=np.int16).reshape(n, 4, 4))
    image.SetSpacing((0.7, 0.7, dz))
    image.SetOrigin((0.0, 0.0, z0))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, zdir))
    sitk.WriteImage(image, str(path))
    return path


def _sheet(path, rows, header=GOH_COLUMNS):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Notes", *header])
    for row in rows:
        sheet.append(["", *row])
    book.save(path)
    return path


def _row(pat_id, positions, scores):
    """A spreadsheet row: PatID, then per level pos, disext (TOT), gg, retp."""
    return [pat_id, *(v for n in range(5) for v in (positions[n], *scores[n]))]


SCORES = {
    1: np.array([[10, 5, 5], [0, 0, 0], [25, 20, 10], [40, 35, 15], [60, 30, 40]], float),
    2: np.array([[0, 0, 0], [5, 5, 0], [5, 0, 5], [15, 10, 5], [20, 15, 10]], float),
    3: np.zeros((5, 3)),
}
POSITIONS_MM = {
    1: [-150.0, -160.5, -171, -180, -190],
    2: [-145, -155, -165, -175, -185.25],
    3: [-150, -160, -170, -180, -190],
}


@pytest.fixture
def goh_source(tmp_path):
    """Scans in three layouts (Pat_001/CTimage.mha, Pat_002.mha, 003.nii.gz) plus one not in the sheet."""
    scans = tmp_path / "data"
    _scan(scans / "Pat_001" / "CTimage.mha")
    _scan(scans / "Pat_002.mha")
    _scan(scans / "003.nii.gz", zdir=-1.0, z0=-142.0)  # stored head first: slices -142 .. -200
    _scan(scans / "Pat_009.mha")
    rows = [_row(float(k) if k == 2 else k, POSITIONS_MM[k], SCORES[k]) for k in SCORES]  # Excel may store 2.0
    xlsx = _sheet(tmp_path / "GohScores.xlsx", rows)
    return xlsx, scans


def test_patient_key():
    assert {patient_key(n) for n in ("12", "012", "Pat_012", "pat-12", "Patient 12")} == {"12"}
    assert patient_key("Alpha") == "alpha"


def test_import_goh_round_trip_with_links(goh_source, tmp_path, monkeypatch, capsys):
    xlsx, scans = goh_source
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in scans.rglob("*") if p.is_file()}
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "elsewhere" / "deeper")  # links must hold through a linked folder
    out = tmp_path / "alias" / "cohort"
    code, text, err = ssc(monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out)
    assert code == 0, err
    assert "3 patients (links to their scans)" in text and "Pat_009.mha" in text and "passes" in text
    cohort = load_cohort(out)
    assert cohort.ids == ["003", "Pat_001", "Pat_002"]
    for sid, k in {"Pat_001": 1, "Pat_002": 2, "003": 3}.items():
        np.testing.assert_array_equal(cohort.scores[sid], SCORES[k])  # disext -> TOT, gg -> GG, retp -> RET
        np.testing.assert_array_equal(cohort.levels_mm[sid], POSITIONS_MM[k])
    link = out / "scans" / "Pat_001.mha"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (scans / "Pat_001" / "CTimage.mha").resolve()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in scans.rglob("*") if p.is_file()} == before
    code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out)
    assert code == 2 and "not an empty folder" in err


def test_import_goh_index_positions_and_copies(goh_source, tmp_path, monkeypatch, capsys):
    xlsx, scans = goh_source
    indices = {1: [25, 20, 14, 9, 5], 2: [29, 20, 10, 3, 0], 3: [28.0, 20, 14, 6, 1]}
    _sheet(xlsx, [_row(k, indices[k], SCORES[k]) for k in SCORES])
    out = tmp_path / "cohort"
    code, _, err = ssc(
        monkeypatch,
        capsys,
        "data",
        "import-goh",
        xlsx,
        "--scans",
        scans,
        "--out",
        out,
        "--positions",
        "index",
        "--copy",
    )
    assert code == 0, err
    cohort = load_cohort(out)
    # index 0 is the lowest slice: -200 mm for all three (003 is stored head first from -142 mm)
    for sid, k in {"Pat_001": 1, "Pat_002": 2, "003": 3}.items():
        np.testing.assert_allclose(cohort.levels_mm[sid], -200.0 + 2.0 * np.array(indices[k]))
    assert not any(p.is_symlink() for p in (out / "scans").iterdir())
    np.testing.assert_array_equal(read_scan(out / "scans" / "003.nii.gz").array, read_scan(scans / "003.nii.gz").array)


def test_import_goh_mhd_scans_keep_their_data_file(tmp_path, monkeypatch, capsys):
    scans = tmp_path / "data"
    _scan(scans / "Pat_001" / "CT.mhd")
    _scan(scans / "Pat_002" / "CT.mhd", z0=-201.0)
    xlsx = _sheet(tmp_path / "g.xlsx", [_row(k, POSITIONS_MM[k], SCORES[k]) for k in (1, 2)])
    for copy in ([], ["--copy"]):
        out = tmp_path / f"cohort{len(copy)}"
        code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out, *copy)
        assert code == 0, err
        for sid in ("Pat_001", "Pat_002"):
            original = read_scan(scans / sid / "CT.mhd")
            imported = read_scan(out / "scans" / f"{sid}.mhd")
            np.testing.assert_array_equal(imported.array, original.array)
            assert imported.geometry == original.geometry


def test_import_goh_missing_scans_and_bad_sheets(goh_source, tmp_path, monkeypatch, capsys):
    xlsx, scans = goh_source
    (scans / "Pat_002.mha").unlink()
    out = tmp_path / "cohort"
    code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out)
    assert code == 2 and f"{xlsx} row 3: no scan for PatID 2" in err and not out.exists()
    code, text, _ = ssc(
        monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out, "--skip-missing"
    )
    assert code == 0 and "left out (no scan): PatID 2" in text and load_cohort(out).ids == ["003", "Pat_001"]

    twice = _sheet(tmp_path / "twice.xlsx", [_row(k, POSITIONS_MM[1], SCORES[1]) for k in (1, "Pat_001")])
    code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", twice, "--scans", scans, "--out", tmp_path / "o1")
    assert code == 2 and "twice.xlsx row 3: PatID Pat_001 is the patient of row 2 again" in err
    bad = _sheet(tmp_path / "bad.xlsx", [_row(1, POSITIONS_MM[1], SCORES[1])], header=GOH_COLUMNS[:-1])
    code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", bad, "--scans", scans, "--out", tmp_path / "o2")
    assert code == 2 and "row 1: missing column(s) L5_retp" in err
    row = _row(1, POSITIONS_MM[1], SCORES[1])
    row[3] = "n/a"  # L1_gg
    row[-1] = None  # L5_retp
    bad = _sheet(tmp_path / "bad.xlsx", [row])
    code, _, err = ssc(monkeypatch, capsys, "data", "import-goh", bad, "--scans", scans, "--out", tmp_path / "o3")
    assert code == 2 and "bad.xlsx row 2: not a number: L1_gg = 'n/a', L5_retp = 'empty'" in err


def test_import_goh_reports_problems_of_the_written_cohort(goh_source, tmp_path, monkeypatch, capsys):
    xlsx, scans = goh_source
    swapped = POSITIONS_MM[1][::-1]
    _sheet(xlsx, [_row(1, swapped, SCORES[1]), *(_row(k, POSITIONS_MM[k], SCORES[k]) for k in (2, 3))])
    out = tmp_path / "cohort"
    code, text, err = ssc(monkeypatch, capsys, "data", "import-goh", xlsx, "--scans", scans, "--out", out)
    assert code == 2 and "3 patients" in text
    assert f"{out / 'levels.csv'} line 3: levels out of anatomical order" in err  # Pat_001 sorts after 003


def test_phantom_cohort_passes_check(tmp_path, monkeypatch, capsys):
    write_cohort = getattr(pytest.importorskip("sscjax.phantom"), "write_cohort", None)
    if write_cohort is None:
        pytest.skip("sscjax.phantom.write_cohort is not there yet")
    write_cohort(tmp_path / "phantom", 3, preset="small", seed=0)
    code, out, err = ssc(monkeypatch, capsys, "data", "check", "--require-patterns", tmp_path / "phantom")
    assert code == 0, err
    assert "3 patients, 15 scored levels" in out and "lung masks: 3; texture patterns: gg, healthy, ret" in out
    assert load_cohort(tmp_path / "phantom").ids == ["phantom_000", "phantom_001", "phantom_002"]
