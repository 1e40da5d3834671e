"""Hostile CT scans given to every command that reads one (`ssc lung`, `ssc levels`, `ssc cascade`, `ssc data check`):
broken files, images that are no CT volume, geometry nothing can be measured in, values that are not HU. All are
refused by the one check in `sscjax.io.read_scan`, in one line naming the file; each file is made here, tiny."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hostile import Case, check_case

from sscjax import io
from sscjax.errors import ScanError

FIXTURES = Path(__file__).parent / "fixtures" / "real_ct"
LEVELS = "-20,-30,-40,-50,-60"  # world mm inside every volume made here (slices from -90 mm up)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def volume(n: int = 30, dtype=np.float32, fill: float = -1000.0, yx: int = 24) -> np.ndarray:
    """A small (z, y, x) block of air with a water cylinder, the base of the bad scans."""
    array = np.full((n, yx, yx), fill, dtype)
    yy, xx = np.mgrid[:yx, :yx] - (yx - 1) / 2
    array[:, yy**2 + xx**2 < (yx / 3) ** 2] = 0
    return array


def stored(
    tmp: Path,
    name: str,
    array: np.ndarray,
    spacing=(2.0, 2.0, 3.0),
    direction=AXIAL,
    origin=(0.0, 0.0, -90.0),
    vector: bool = False,
) -> Path:
    """Write `array` exactly as given (no canonical flips), like a scanner or another tool would."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin[: image.GetDimension()])
    image.SetDirection(direction)
    path = tmp / name
    sitk.WriteImage(image, str(path))
    return path


def edited_header(tmp: Path, name: str, old: str, new: str) -> Path:
    """A MetaImage whose header line `old` is replaced by `new` (what SimpleITK would not write itself)."""
    path = stored(tmp, name, volume().astype(np.int16))
    text = path.read_bytes()
    assert old.encode() in text
    path.write_bytes(text.replace(old.encode(), new.encode(), 1))
    return path


def truncated(tmp: Path, name: str) -> Path:
    path = stored(tmp, name, volume().astype(np.int16))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def dicom_series(folder: Path, n: int = 20, step: float = 3.0, drift: float = 0.0) -> Path:
    """A CT series, one file per slice; slice i's origin is (-20, -30 + drift * i, -90 + step * i) mm."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, plane in enumerate(volume(n, np.int16)):
        image = sitk.GetImageFromArray(plane)
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.3",
            "0020|000e": "1.2.3.4",
            "0008|0018": f"1.2.3.4.{i}",
            "0020|0013": str(i),
            "0020|0032": f"-20\\{-30 + drift * i}\\{-90 + step * i}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "2\\2",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{i:03d}.dcm"))
        writer.Execute(image)
    return folder


def with_voxels(value: float, count: int = 7):
    """A float scan with `count` voxels set to `value` (NaN, infinity, a huge number)."""

    def make(tmp: Path) -> Path:
        array = volume()
        array.reshape(-1)[np.linspace(0, array.size - 1, count).astype(int)] = value
        return stored(tmp, "scan.mha", array)

    return make


# scans: tmp -> path of the scan made there
SCANS = {
    "truncated": lambda tmp: truncated(tmp, "scan.mha"),
    "truncated-nrrd": lambda tmp: truncated(tmp, "scan.nrrd"),
    "garbage": lambda tmp: (tmp / "scan.mha").write_bytes(np.random.default_rng(0).bytes(4096)) and tmp / "scan.mha",
    "4d": lambda tmp: stored(
        tmp, "scan.mha", np.zeros((2, 20, 8, 8), np.int16), (1.0,) * 4, tuple(np.eye(4).ravel()), (0.0,) * 4
    ),
    "rgb": lambda tmp: stored(tmp, "scan.mha", np.zeros((20, 8, 8, 3), np.uint8), vector=True),
    "2d": lambda tmp: stored(tmp, "scan.mha", volume()[0], (2.0, 2.0), (1.0, 0.0, 0.0, 1.0)),
    "coronal": lambda tmp: stored(tmp, "scan.mha", volume().astype(np.int16), direction=(1, 0, 0, 0, 0, 1, 0, -1, 0)),
    "oblique": lambda tmp: stored(
        tmp,
        "scan.mha",
        volume().astype(np.int16),
        direction=(1, 0, 0, 0, np.cos(0.1), -np.sin(0.1), 0, np.sin(0.1), np.cos(0.1)),
    ),
    "no-series": lambda tmp: (
        (tmp / "dicom").mkdir() or ((tmp / "dicom" / "a.dcm").write_bytes(b"junk") and tmp / "dicom")
    ),
    "nan": with_voxels(np.nan),
    "inf": with_voxels(-np.inf),
    "huge-values": with_voxels(1e9),
    "3-slices": lambda tmp: stored(tmp, "scan.mha", volume(3).astype(np.int16), (0.7, 0.7, 1.5)),
    "huge-pixels": lambda tmp: stored(tmp, "scan.mha", volume().astype(np.int16), (500.0, 500.0, 3.0)),
    "huge-slices": lambda tmp: stored(tmp, "scan.mha", volume().astype(np.int16), (0.7, 0.7, 300.0)),
    "negative-spacing": lambda tmp: edited_header(tmp, "scan.mha", "ElementSpacing = 2 2 3", "ElementSpacing = 2 2 -3"),
    "sheared": lambda tmp: edited_header(
        tmp, "scan.mha", "TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0 0 0 1 0 0 0.05 1"
    ),
    "gantry-tilt": lambda tmp: dicom_series(tmp / "dicom", drift=0.5),
    "unsigned": lambda tmp: stored(tmp, "scan.mha", (volume() + 1024).astype(np.uint16)),
}
# scan -> (text of its refusal, lower case)
REFUSALS = {
    "truncated": "truncated or corrupt",
    "truncated-nrrd": "truncated or corrupt",
    "garbage": "truncated or corrupt",
    "4d": "has 4 dimensions",
    "rgb": "has 3 values per pixel",
    "2d": "single 2d slice",
    "coronal": "not an axial acquisition",
    "oblique": "not an axial acquisition",
    "no-series": "no dicom series",
    "nan": "7 of 17280 voxels are nan or infinite",
    "inf": "7 of 17280 voxels are nan or infinite",
    "huge-values": "not a ct in hounsfield units",
    "3-slices": "3 slices spanning 4.5 mm",
    "huge-pixels": "pixel spacing [500.0, 500.0] mm lies outside",
    "huge-slices": "slice spacing [300.0] mm lies outside",
    "negative-spacing": "spacing (2.0, 2.0, -3.0) mm is not positive",
    "sheared": "not orthonormal",
    "gantry-tilt": "gantry-tilted",
    "unsigned": "without the hu rescale",
}


def lung(scan: str):
    return lambda tmp: ["lung", SCANS[scan](tmp), "-o", tmp / "mask.mha"]


def levels(scan: str):
    """`ssc levels` reads the scan before it loads the model: a bare folder stands for the run."""
    return lambda tmp: ["levels", SCANS[scan](tmp), "--model", (tmp / "run").mkdir() or tmp / "run"]


def cascade(scan: str):
    return lambda tmp: [
        "cascade",
        "--scan",
        SCANS[scan](tmp),
        "--levels",
        LEVELS,
        "--snet",
        tmp / "snet",
        "--out",
        tmp / "out",
    ]


def unwritable(tmp: Path) -> list:
    (tmp / "taken").write_text("a file where the mask's folder should be")
    return ["lung", stored(tmp, "scan.mha", volume().astype(np.int16)), "-o", tmp / "taken" / "mask.mha"]


def real_slice(tmp: Path) -> list:
    shutil.copy(FIXTURES / "chest_ct_slice_rle.dcm", tmp / "slice.dcm")
    return ["lung", tmp / "slice.dcm", "-o", tmp / "mask.nii.gz"]


def refused(command, scan: str, code: int = 2) -> Case:
    """The case of `scan` given to `command`: refused in one line (code 2), or in the cascade's list (code 1)."""
    return Case(
        f"{command.__name__}-{scan}",
        command(scan),
        code,
        REFUSALS[scan],
        outputs=("mask.mha",) if command is lung else (),
    )


CASES = [
    *(
        refused(lung, s)
        for s in ("truncated", "4d", "oblique", "inf", "huge-pixels", "sheared", "unsigned", "negative-spacing")
    ),
    *(
        refused(levels, s)
        for s in (
            "garbage",
            "rgb",
            "2d",
            "no-series",
            "nan",
            "huge-values",
            "3-slices",
            "huge-slices",
            "gantry-tilt",
            "unsigned",
        )
    ),
    *(
        refused(cascade, s, code=1)
        for s in ("truncated-nrrd", "coronal", "nan", "3-slices", "negative-spacing", "sheared", "unsigned")
    ),
    Case(
        "cascade-missing-file",
        lambda tmp: ["cascade", "--scan", tmp / "missing.mha", "--levels", LEVELS, "--snet", tmp / "snet"],
        2,
        "no such file or folder",
    ),
    Case(
        "lung-missing-file",
        lambda tmp: ["lung", tmp / "missing.mha", "-o", tmp / "mask.mha"],
        2,
        "does not exist",
        outputs=("mask.mha",),
    ),
    Case("levels-missing-file", lambda tmp: ["levels", tmp / "missing.mha", "--model", tmp], 2, "does not exist"),
    Case("lung-unwritable-output", unwritable, 2, "cannot write outputs here", names="{tmp}/taken"),
    Case("lung-real-slice", real_slice, 0, ""),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_scan(case, tmp_path, monkeypatch, capfd):
    # the scans are refused when read, before any model is used: loading the S-Net run is stood in for
    monkeypatch.setattr("sscjax.cascade.load_models", lambda lnet_runs, snet_runs: None)
    check_case(case, tmp_path, monkeypatch, capfd)


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_every_reader_refuses_alike_and_quietly(scan, tmp_path, capfd):
    """read_scan (levels, cascade, training), read_scan(volume=False) (ssc lung) and the cohort check give one
    refusal, with no library noise on the stderr descriptor and no Python warning."""
    from sscjax.data.cohort import _header

    path = SCANS[scan](tmp_path)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ScanError) as refused_:
            io.read_scan(path)
        problems = []
        assert _header(path, problems, whole_scan=True) is None
    message = str(refused_.value)
    assert problems == [message] and message.startswith(str(path)) and REFUSALS[scan] in message.lower()
    assert message.count(str(path)) == 1  # named once, at the start
    assert "\n" not in message and capfd.readouterr().err == ""
    if scan not in ("2d", "3-slices"):  # single slices and short volumes are fine for a lung mask
        with pytest.raises(ScanError) as for_lung:
            io.read_scan(path, volume=False)
        assert REFUSALS[scan] in str(for_lung.value).lower()


def test_level_prediction_is_finite_or_refused():
    """Defence in depth: a model that returns NaN (diverged weights) gives an error, never NaN levels."""
    from sscjax import lnet
    from sscjax.configs.lnet import LNetData
    from sscjax.errors import ModelError

    scan = io.Scan(volume(40), io.Geometry((2.0, 2.0, 2.5), (0.0, 0.0, -90.0)), "scan.mha")
    diverged = lnet.LevelModel(lambda windows: np.full((len(windows), 5), np.nan), LNetData(size=(80, 8, 8), crop=64))
    with pytest.raises(ModelError, match="scan.mha: the L-Net gave non-finite level positions"):
        lnet.predict_levels(diverged, scan)


def test_data_check_lists_the_refusals_of_read_scan(tmp_path, monkeypatch, capfd):
    """`ssc data check` prints a problem list (several lines by design): each bad scan's line is read_scan's."""
    from hostile import checksums, run_ssc_fd
    from test_cohort import make_cohort

    make_cohort(tmp_path, masks=False)
    bad = {"p01": "nan", "p02": "negative-spacing", "p03": "truncated"}
    for sid, scan in bad.items():
        (tmp_path / sid).mkdir()
        SCANS[scan](tmp_path / sid).replace(tmp_path / "scans" / f"{sid}.mha")
        (tmp_path / sid).rmdir()
    before = checksums(tmp_path)
    code, out, err = run_ssc_fd(monkeypatch, capfd, ["data", "check", tmp_path])
    assert code == 2 and out == "" and checksums(tmp_path) == before
    lines = [line for line in err.splitlines() if line.strip() and line != "reading scans"]
    assert lines[0] == "Error: 3 problem(s) in the cohort:", err
    expected = []
    for sid in bad:
        with pytest.raises(ScanError) as refused:
            io.read_scan(tmp_path / "scans" / f"{sid}.mha")
        expected.append(f"  {refused.value}")
    assert lines[1:] == expected, err
