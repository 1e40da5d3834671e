"""Lung masks: real CT slices, a synthetic chest with exact truth, phantoms, scans without lungs, `ssc lung`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ssc as _run_ssc
from scipy import ndimage as ndi

from sscjax.errors import ScanError
from sscjax.io import Geometry, Scan, read_image, read_scan, write_image
from sscjax.lung import LungSettings, lung_mask, lung_mask_slice, lung_sizes

REAL = Path(__file__).parent / "fixtures" / "real_ct"
SLICE = REAL / "chest_ct_slice_rle.dcm"
SMALL = REAL / "chest_ct_small.dcm"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and sizes (pixels, largest first) of the 4-connected components of a 2D mask."""
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(sizes)[::-1]
    relabel = np.zeros(n + 1, dtype=int)
    relabel[order + 1] = np.arange(1, n + 1)
    return relabel[labels], sizes[order]


def outside_body(hu: np.ndarray) -> np.ndarray:
    """Air (or scanner padding) connected to the image border: everything outside the body contour."""
    labels, _ = ndi.label(hu < -500)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def _segment_distance(p, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(sum((pi - ai) * di for pi, ai, di in zip(p, a, d)) / float(d @ d), 0, 1)
    return np.sqrt(sum((pi - (ai + t * di)) ** 2 for pi, ai, di in zip(p, a, d)))


def synthetic_chest(shape=(48, 120, 136), spacing=(2.5, 2.5, 3.0), seed=0):
    """A 40 HU body in air (-3024 padding outside the scan circle) with two ellipsoid lungs at -850 HU, the
    trachea and main bronchi (-1000), vessels, and subpleural basal disease: ground glass (-620) crossed by
    dense lines (0 HU) and a solid subpleural nodule. Returns the scan, the lung truth (vessels and disease
    included, airways outside the lungs excluded), the disease mask and the airway mask."""
    nz, ny, nx = shape
    sx, sy, sz = spacing
    z = (np.arange(nz) * sz)[:, None, None]
    y = ((np.arange(ny) - ny / 2) * sy)[None, :, None]
    x = ((np.arange(nx) - nx / 2) * sx)[None, None, :]
    top = nz * sz
    p = (x, y, z)
    hu = np.full(shape, -1000.0, np.float32)
    hu[np.broadcast_to((x / 150) ** 2 + (y / 105) ** 2 <= 1, shape)] = 40.0
    lungs = np.zeros(shape, bool)
    for cx in (-70, 70):
        lungs |= ((x - cx) / 52) ** 2 + ((y + 5) / 78) ** 2 + ((z - 0.5 * top) / (0.42 * top)) ** 2 <= 1
    hu[lungs] = -850.0
    carina = (0, -15, 0.62 * top)
    airway = _segment_distance(p, (0, -15, top + 10), carina) <= 8.0
    for side in (-1, 1):
        airway |= _segment_distance(p, carina, (side * 42, -8, 0.55 * top)) <= 5.5
    hu[airway] = -1000.0
    for side in (-1, 1):
        for end in ((side * 100, -40, 0.7 * top), (side * 95, 40, 0.3 * top), (side * 80, 10, 0.85 * top)):
            hu[(_segment_distance(p, (side * 40, 0, 0.5 * top), end) <= 2.5) & lungs] = 40.0
    core = ((np.abs(x) - 70) / 40) ** 2 + ((y + 5) / 66) ** 2 + ((z - 0.5 * top) / (0.42 * top - 12)) ** 2 <= 1
    disease = lungs & ~core & (z < 0.4 * top) & (y > 0)
    hu[disease] = -620.0
    hu[disease & (np.sin(x / 2.0) > 0.7)] = 0.0
    nodule = lungs & (((x - 118) / 9) ** 2 + ((y - 10) / 9) ** 2 + ((z - 0.45 * top) / 9) ** 2 <= 1)
    hu[nodule] = -60.0
    hu += np.random.default_rng(seed).normal(0, 25.0, shape).astype(np.float32)
    hu[np.broadcast_to(x**2 + y**2 > (nx / 2 * sx) ** 2, shape)] = -3024.0
    geometry = Geometry((sx, sy, sz), (-nx / 2 * sx, -ny / 2 * sy, 0.0))
    return Scan(hu, geometry, "synthetic.mha"), lungs, disease | nodule, airway & ~lungs


@pytest.fixture(scope="module")
def chest():
    return synthetic_chest()


@pytest.fixture(scope="module")
def real_slice():
    scan = read_scan(SLICE, volume=False)
    return scan, lung_mask(scan)


# ---- real CT ------------------------------------------------------------------------------------------


def test_real_slice_finds_both_lungs_inside_the_body(real_slice):
    scan, mask = real_slice
    hu, m = scan.array[0], mask[0].astype(bool)
    assert mask.shape == scan.shape and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    labels, sizes = components(m)
    pixel_cm2 = scan.geometry.spacing[0] * scan.geometry.spacing[1] / 100.0
    assert len(sizes) == 2  # two lungs and nothing else
    assert np.all((sizes * pixel_cm2 > 80) & (sizes * pixel_cm2 < 180)), sizes * pixel_cm2
    centre_x = [np.nonzero(labels == k)[1].mean() for k in (1, 2)]
    assert min(centre_x) < hu.shape[1] / 2 < max(centre_x)
    assert not (m & (hu < -1500)).any()  # no padding
    assert not (m & outside_body(hu)).any()  # no outside air
    # the lungs' air is all there: air inside the body, apart from the small airway lumens, is in the mask
    inside_air = (hu < -500) & ~outside_body(hu)
    air_labels, _ = components(inside_air)
    lung_air = np.isin(air_labels, [1, 2])
    assert (m & lung_air).sum() / lung_air.sum() > 0.995
    assert (m & ~(hu < -320)).sum() / m.sum() < 0.08  # vessels only


def test_real_slice_leaves_the_airways_out(real_slice):
    scan, mask = real_slice
    hu, m = scan.array[0], mask[0].astype(bool)
    # the main bronchi: small round dark lumens near the carina, between the lungs
    labels, sizes = components((hu < -900) & ~outside_body(hu))
    pixel_cm2 = scan.geometry.spacing[0] * scan.geometry.spacing[1] / 100.0
    small = [k + 1 for k, s in enumerate(sizes) if 0.3 < s * pixel_cm2 < 3]
    lumens = [k for k in small if abs(np.nonzero(labels == k)[1].mean() - hu.shape[1] / 2) < 60]
    assert len(lumens) == 2
    for k in lumens:
        assert not m[labels == k].any()


def test_cropped_field_of_view_slice():
    scan = read_scan(SMALL, volume=False)
    m = lung_mask(scan)[0].astype(bool)
    labels, sizes = components(m)
    pixel_cm2 = scan.geometry.spacing[0] * scan.geometry.spacing[1] / 100.0
    assert len(sizes) == 2 and np.all(sizes * pixel_cm2 > 5)
    centre_x = sorted(np.nonzero(labels == k)[1].mean() for k in (1, 2))
    assert centre_x[0] < 40 and centre_x[1] > 88  # the two posterior lung bases beside the spine
    assert (m & (scan.array[0] > -320)).sum() / m.sum() < 0.05


def test_slice_function_matches_the_scan_function(real_slice):
    scan, mask = real_slice
    hu = scan.array[0].copy()
    m = lung_mask_slice(hu, scan.geometry.spacing[1::-1])
    np.testing.assert_array_equal(m, mask[0])
    np.testing.assert_array_equal(hu, scan.array[0])  # input untouched


# ---- synthetic chest with exact truth --------------------------------------------------------------


@pytest.fixture(scope="module")
def fine_chest():
    return synthetic_chest(shape=(47, 151, 221), spacing=(1.5, 1.5, 2.5))  # partial blocks at the edges


@pytest.mark.parametrize(
    "case, work_mm", [("chest", (2.5, 1.5)), ("fine_chest", (5.0, 3.0))], ids=["full-resolution", "coarse-then-refined"]
)
def test_synthetic_volume(case, work_mm, request):
    scan, truth, disease, airway = request.getfixturevalue(case)
    before = scan.array.copy()
    m = lung_mask(scan, LungSettings(work_mm=work_mm)).astype(bool)
    np.testing.assert_array_equal(scan.array, before)
    assert dice(m, truth) >= 0.98
    assert (m & disease).sum() / disease.sum() >= 0.93  # dense subpleural disease stays inside
    assert (m & airway).sum() / airway.sum() < 0.05  # trachea and main bronchi are left out
    assert not (m & (scan.array < -1500)).any()
    sizes = lung_sizes(m, scan.geometry)
    half = truth.shape[2] // 2
    voxel_ml = np.prod(scan.geometry.spacing) / 1000.0
    for side, part in (("right", truth[..., :half]), ("left", truth[..., half:])):
        assert sizes[side] == pytest.approx(part.sum() * voxel_ml, rel=0.03)


def test_synthetic_single_slices(chest):
    scan, truth, _disease, airway = chest
    spacing_yx = scan.geometry.spacing[1::-1]
    for k in (12, 29, 36):  # basal disease, carina level, above the hilum (trachea between the lungs)
        m = lung_mask_slice(scan.array[k], spacing_yx).astype(bool)
        assert m.shape == truth.shape[1:]
        assert dice(m, truth[k]) >= 0.97, k
        assert not (m & airway[k]).any()


def test_slice_holes_vessels_in_heart_out():
    """Within a slice, small dense regions ringed by lung (vessels, nodules) are lung; a large one (the heart
    or the liver dome ringed by the lung base) is not."""
    y, x = np.mgrid[:160, :200] * 2.0  # 2 mm pixels
    hu = np.full(x.shape, -1000.0, np.float32)
    hu[((x - 200) / 170) ** 2 + ((y - 160) / 120) ** 2 <= 1] = 40.0
    lungs = np.zeros(x.shape, bool)
    for cx in (120, 280):
        lungs |= ((x - cx) / 65) ** 2 + ((y - 160) / 90) ** 2 <= 1
    hu[lungs] = -850.0
    vessel = (x - 100) ** 2 + (y - 130) ** 2 <= 5**2
    heart = (x - 290) ** 2 + (y - 170) ** 2 <= 30**2
    hu[vessel | heart] = 40.0
    hu += np.random.default_rng(2).normal(0, 15, hu.shape).astype(np.float32)
    m = lung_mask_slice(hu, (2.0, 2.0)).astype(bool)
    assert m[vessel].all()
    assert not m[heart].any()
    assert dice(m, lungs & ~heart) >= 0.98


# ---- no lungs -----------------------------------------------------------------------------------------


def _body_scan(shape, spacing=(2.5, 2.5, 3.0), inside=40.0, pocket_hu=None):
    _nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, ((x - nx / 2) / (0.4 * nx)) ** 2 + ((y - ny / 2) / (0.3 * ny)) ** 2 <= 1] = inside
    if pocket_hu is not None:  # bowel gas
        hu[:, ((x - nx / 2) / (0.15 * nx)) ** 2 + ((y - ny / 2) / (0.1 * ny)) ** 2 <= 1] = pocket_hu
    hu += np.random.default_rng(1).normal(0, 10, shape).astype(np.float32)
    return Scan(hu, Geometry(spacing, (0.0, 0.0, 0.0)), "phantom.mha")


@pytest.mark.parametrize(
    "scan",
    [
        _body_scan((20, 96, 96)),  # water phantom
        _body_scan((1, 96, 96)),  # one slice of it
        _body_scan((20, 96, 96), pocket_hu=-1000.0),  # abdomen: a body with gas
        _body_scan((1, 96, 96), inside=-1000.0),  # nothing but air
    ],
    ids=["water", "water-slice", "abdomen-gas", "air"],
)
def test_no_lungs_is_a_scan_error(scan):
    with pytest.raises(ScanError, match="phantom.mha"):
        lung_mask(scan)


# ---- phantoms -----------------------------------------------------------------------------------------


def test_phantom_lungs():
    """Dice against the phantoms' exact lung masks, on the volume and on the five level slices alone."""
    phantom = pytest.importorskip("sscjax.phantom")
    for seed in (0, 1, 2):
        case = phantom.generate_patient(seed, preset="small", scan_id=f"p{seed}")
        m = lung_mask(case.scan)
        assert m.shape == case.lung_mask.shape
        assert dice(m, case.lung_mask) >= 0.97, seed
        spacing_yx = case.scan.geometry.spacing[1::-1]
        for k in case.level_slices:
            assert dice(lung_mask_slice(case.scan.array[k], spacing_yx), case.lung_mask[k]) >= 0.95, (seed, k)
            assert not (m[k].astype(bool) & outside_body(case.scan.array[k])).any()


# ---- the command --------------------------------------------------------------------------------------


def test_command_writes_the_mask_with_the_scan_geometry(tmp_path, monkeypatch, capsys, real_slice):
    scan, mask = real_slice
    out = tmp_path / "mask.nii.gz"
    code, stdout, _ = _run_ssc(monkeypatch, capsys, "lung", str(SLICE), "-o", str(out))
    assert code == 0
    written = read_image(out)
    np.testing.assert_array_equal(written.array, mask)
    assert written.geometry.spacing == pytest.approx(scan.geometry.spacing)
    assert written.geometry.origin == pytest.approx(scan.geometry.origin)
    sizes = lung_sizes(mask, scan.geometry)
    assert f"right lung: {sizes['right']:.1f} cm^2" in stdout
    assert f"left lung: {sizes['left']:.1f} cm^2" in stdout


def test_command_on_a_volume_reports_millilitres(tmp_path, monkeypatch, capsys, chest):
    scan, _truth, _, _ = chest
    path = write_image(tmp_path / "chest.mha", scan.array, scan.geometry)
    code, stdout, _ = _run_ssc(monkeypatch, capsys, "lung", str(path), "-o", str(tmp_path / "mask.nrrd"))
    assert code == 0
    mask = read_image(tmp_path / "mask.nrrd").array
    np.testing.assert_array_equal(mask, lung_mask(scan))
    assert "right lung:" in stdout and " mL" in stdout


def test_command_refuses_to_overwrite_its_input(tmp_path, monkeypatch, capsys):
    path = tmp_path / "scan.nii.gz"
    write_image(path, _body_scan((1, 64, 64)).array, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code, stdout, stderr = _run_ssc(monkeypatch, capsys, "lung", str(path), "-o", str(tmp_path / "." / "scan.nii.gz"))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "would overwrite the input scan" in stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_command_without_lungs_fails_in_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "water.mha"
    water = _body_scan((4, 64, 64))
    write_image(path, water.array, water.geometry)
    out = tmp_path / "mask.mha"
    code, stdout, stderr = _run_ssc(monkeypatch, capsys, "lung", str(path), "-o", str(out))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "no lungs found" in stderr and str(path) in stderr
    assert not out.exists()


def test_raw_values_without_the_hu_rescale_are_named_as_the_likely_cause():
    raw = _body_scan((20, 96, 96))
    raw.array[:] = np.clip(raw.array + 1024, 0, None)  # air at about 24: stored values, rescale not applied
    with pytest.raises(ScanError, match="no lungs found .* without the HU rescale"):
        lung_mask(raw)
    with pytest.raises(ScanError) as water:
        lung_mask(_body_scan((20, 96, 96)))
    assert "rescale" not in str(water.value)  # a body in air is no raw scan


def _stored_flipped(canonical: Scan, flip_xyz: tuple[bool, bool, bool]) -> tuple[np.ndarray, Geometry]:
    """The canonical array and geometry as a file stores them with the given index axes reversed (same world)."""
    matrix, origin = canonical.geometry.matrix.copy(), np.asarray(canonical.geometry.origin)
    for axis in np.flatnonzero(flip_xyz):
        origin = origin + matrix[:, axis] * canonical.geometry.spacing[axis] * (canonical.shape[2 - axis] - 1)
        matrix[:, axis] *= -1
    array = np.flip(canonical.array, axis=tuple(2 - a for a in np.flatnonzero(flip_xyz)))
    return array, Geometry(canonical.geometry.spacing, tuple(origin), tuple(matrix.ravel()))


@pytest.mark.parametrize("flip_xyz", [(False, False, True), (True, True, False)], ids=["head-first", "flipped-xy"])
def test_command_writes_the_mask_in_the_scan_file_storage_order(tmp_path, monkeypatch, capsys, chest, flip_xyz):
    import SimpleITK as sitk

    scan = chest[0]
    array, geometry = _stored_flipped(scan, flip_xyz)
    path = write_image(tmp_path / "stored.mha", array, geometry)
    code, _, err = _run_ssc(monkeypatch, capsys, "lung", str(path), "-o", str(tmp_path / "mask.nii.gz"))
    assert code == 0, err
    written, original = sitk.ReadImage(str(tmp_path / "mask.nii.gz")), sitk.ReadImage(str(path))
    for get in ("GetOrigin", "GetDirection", "GetSpacing", "GetSize"):
        assert getattr(written, get)() == pytest.approx(getattr(original, get)(), abs=1e-4), get
    expected, _ = _stored_flipped(Scan(lung_mask(scan), scan.geometry), flip_xyz)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)  # overlays the file voxel by voxel


def test_command_refuses_an_unwritable_output_before_computing(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    monkeypatch.setattr("sscjax.lung.lung_mask", lambda scan: pytest.fail("computed before refusing"))
    code, stdout, stderr = _run_ssc(monkeypatch, capsys, "lung", str(SLICE), "-o", str(tmp_path / "taken" / "m.mha"))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and f"{tmp_path / 'taken'}: cannot write outputs here" in stderr
