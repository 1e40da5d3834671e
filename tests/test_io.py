"""Scans and geometry: canonical orientation, world <-> index, resampling, writing, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sscjax import io
from sscjax.errors import ScanError

FIXTURES = Path(__file__).parent / "fixtures" / "real_ct"


def _stored(tmp_path, array, spacing, origin, direction, name="scan.mha"):
    """Write an array as a file exactly as given (no canonicalisation), like a scanner would."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path, image


def _world_value(image, point):
    index = image.TransformPhysicalPointToIndex(point)
    return image[index]


@pytest.mark.parametrize("zdir", [1.0, -1.0])
@pytest.mark.parametrize("xdir", [1.0, -1.0])
def test_canonical_orientation_keeps_every_voxel_in_place(tmp_path, zdir, xdir):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(7, 5, 6)).astype(np.int16)
    direction = (xdir, 0, 0, 0, 1, 0, 0, 0, zdir)
    path, image = _stored(tmp_path, array, (0.7, 0.8, 2.5), (-120.0, 35.0, -310.0), direction)
    scan = io.read_scan(path, volume=False)
    assert scan.geometry.matrix[2, 2] > 0 and scan.geometry.matrix[0, 0] > 0
    # slices go from feet to head
    assert np.all(np.diff(scan.z_mm) > 0)
    canon = io.to_sitk(scan.array, scan.geometry)
    for idx in [(0, 0, 0), (5, 4, 6), (2, 3, 1)]:
        point = image.TransformIndexToPhysicalPoint(idx)
        assert canon[canon.TransformPhysicalPointToIndex(point)] == image[idx]


@pytest.mark.parametrize("zdir", [1.0, -1.0])
def test_world_index_round_trip_and_nearest_slice(tmp_path, zdir):
    path, image = _stored(
        tmp_path, np.zeros((40, 4, 4), np.int16), (1, 1, 1.25), (3.0, -7.0, -512.4), (1, 0, 0, 0, 1, 0, 0, 0, zdir)
    )
    scan = io.read_scan(path)
    g = scan.geometry
    k = np.arange(40)
    np.testing.assert_allclose(g.index_of_z(g.z_of_index(k)), k, atol=1e-9)
    # the world z of each canonical slice is a z the stored file also has
    stored_z = sorted(image.TransformIndexToPhysicalPoint((0, 0, int(i)))[2] for i in k)
    np.testing.assert_allclose(scan.z_mm, stored_z, atol=1e-6)
    # nearest, not truncated: 0.6 of a slice above slice 10 is slice 11; 0.4 of a slice is slice 10
    assert g.nearest_slice(g.z_of_index(10.6), 40) == 11
    assert g.nearest_slice(g.z_of_index(10.4), 40) == 10
    assert g.nearest_slice(g.z_of_index(10.5), 40) == 11
    np.testing.assert_array_equal(g.nearest_slice(g.z_of_index(np.array([0.2, 38.7])), 40), [0, 39])
    with pytest.raises(ScanError, match="outside the scan"):
        g.nearest_slice(g.z_of_index(40.2), 40)


def test_resampled_positions_map_back_to_original_slices(tmp_path):
    path, _ = _stored(
        tmp_path, np.zeros((300, 8, 8), np.int16), (0.7, 0.7, 0.8), (0, 0, -100.0), (1, 0, 0, 0, 1, 0, 0, 0, -1)
    )
    scan = io.read_scan(path)
    small = io.resample(scan, (64, 8, 8))
    # same field of view: first and last voxel edges coincide
    lo = scan.geometry.z_of_index(-0.5), small.geometry.z_of_index(-0.5)
    hi = scan.geometry.z_of_index(299.5), small.geometry.z_of_index(63.5)
    assert lo[0] == pytest.approx(lo[1]) and hi[0] == pytest.approx(hi[1])
    # resampled slice p sits at original index (p + 0.5) * 300 / 64 - 0.5
    p = np.array([0.0, 10.0, 31.5, 63.0])
    z = small.geometry.z_of_index(p)
    np.testing.assert_allclose(scan.geometry.index_of_z(z), (p + 0.5) * 300 / 64 - 0.5)
    expected = np.floor((p + 0.5) * 300 / 64 - 0.5 + 0.5).astype(int)
    np.testing.assert_array_equal(scan.geometry.nearest_slice(z, scan.n_slices), expected)


def test_resample_interpolates_linear_ramp_exactly(tmp_path):
    z = np.arange(50, dtype=np.float32)[:, None, None] * np.ones((1, 6, 6), np.float32)
    scan = io.Scan(z * 10.0, io.Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    out = io.resample(scan, (25, 6, 6))
    centre = scan.geometry.index_of_z(out.geometry.z_of_index(np.arange(1, 24)))
    np.testing.assert_allclose(out.array[1:24, 3, 3], centre * 10.0, atol=1e-3)


def test_write_read_round_trip_keeps_geometry(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    geometry = io.Geometry((0.6, 0.65, 1.5), (-10.0, 20.0, -300.0))
    for name in ["a.mha", "b.nii.gz", "c.nrrd"]:
        io.write_image(tmp_path / name, array, geometry)
        back = io.read_image(tmp_path / name)
        np.testing.assert_array_equal(back.array, array)
        np.testing.assert_allclose(back.geometry.spacing, geometry.spacing, rtol=1e-6)
        np.testing.assert_allclose(back.geometry.origin, geometry.origin, atol=1e-4)
        np.testing.assert_allclose(back.geometry.direction, geometry.direction, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    slice_path = io.write_image(tmp_path / "slice.mha", array[3], geometry.slice_geometry(3))
    one = io.read_image(slice_path)
    assert one.shape == (1, 6, 7) and one.geometry.z_of_index(0) == pytest.approx(geometry.z_of_index(3))


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with io.atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~io._UMASK


def test_real_dicom_fixtures_read_with_hu_and_geometry():
    big = io.read_scan(FIXTURES / "chest_ct_slice_rle.dcm", volume=False)
    assert big.shape == (1, 512, 512)
    assert (big.array.min(), big.array.max()) == (-3024.0, 1254.0)
    assert big.geometry.spacing[:2] == pytest.approx((0.661468, 0.661468))
    assert big.geometry.origin == pytest.approx((-158.135803, -179.035797, -75.699997))
    small = io.read_scan(FIXTURES / "chest_ct_small.dcm", volume=False)
    assert small.shape == (1, 128, 128)
    assert (small.array.min(), small.array.max()) == (-896.0, 1167.0)
    geometry, shape = io.read_geometry(FIXTURES / "chest_ct_small.dcm")
    assert shape == (1, 128, 128) and geometry == small.geometry


def test_2d_input_refused_where_a_volume_is_needed():
    with pytest.raises(ScanError, match="single 2D slice"):
        io.read_scan(FIXTURES / "chest_ct_small.dcm")


def test_corrupt_unsupported_and_missing_files(tmp_path):
    bad = tmp_path / "bad.mha"
    bad.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n\x00\x01"
    )
    with pytest.raises(ScanError, match="bad.mha: cannot read"):
        io.read_scan(bad, volume=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ScanError, match="not a supported scan format"):
        io.read_scan(notes)
    with pytest.raises(ScanError, match="no such file"):
        io.read_scan(tmp_path / "missing.mha")


def test_zero_spacing_refused(tmp_path):
    path = tmp_path / "flat.mha"
    header = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = 1 1 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    path.write_bytes(header.encode() + np.zeros(8, np.int16).tobytes())
    with pytest.raises(ScanError, match="spacing"):
        io.read_scan(path)


def test_oblique_acquisition_refused(tmp_path):
    a = np.radians(20)
    tilted = (1, 0, 0, 0, np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a))
    path, _ = _stored(tmp_path, np.zeros((4, 4, 4), np.int16), (1, 1, 1), (0, 0, 0), tilted)
    with pytest.raises(ScanError, match="not an axial acquisition"):
        io.read_scan(path)
    sagittal = (0, 0, 1, 1, 0, 0, 0, 1, 0)
    path, _ = _stored(tmp_path, np.zeros((4, 4, 4), np.int16), (1, 1, 1), (0, 0, 0), sagittal, "sag.mha")
    with pytest.raises(ScanError, match="not an axial acquisition"):
        io.read_scan(path)


def _dicom_series(folder: Path, z_positions, series_uid="1.2.3.4", shape=(6, 6), drift_mm=0.0):
    """One file per slice at z_positions; each further file's origin moves `drift_mm` in y (a gantry tilt)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, z in enumerate(z_positions):
        image = sitk.GetImageFromArray(np.full(shape, i * 10 - 1000, np.int16))
        image.SetSpacing((0.7, 0.7))
        tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": "1.2.3",
            "0008|0018": f"{series_uid}.{i}",
            "0020|0013": str(i),
            "0020|0032": f"-20\\{-30 + drift_mm * i}\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.7\\0.7",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{i:03d}.dcm"))
        writer.Execute(image)
    return folder


def test_dicom_series_folder_read_in_canonical_order(tmp_path):
    # files numbered head to feet, as many scanners store them
    folder = _dicom_series(tmp_path / "ct", [100 - 2.5 * i for i in range(8)])
    scan = io.read_scan(folder, volume=False)
    assert scan.shape == (8, 6, 6)
    assert scan.geometry.spacing[2] == pytest.approx(2.5)
    np.testing.assert_allclose(scan.z_mm, 100 - 2.5 * np.arange(8)[::-1])
    # file i has value i*10-1000 and z = 100 - 2.5 i: canonical slice 0 is the lowest, i = 7
    assert scan.array[0, 0, 0] == 7 * 10 - 1000
    geometry, shape = io.read_geometry(folder)
    assert shape == scan.shape and geometry == scan.geometry
    assert io.find_scans(folder) == [folder]


def test_dicom_folder_with_several_series_takes_largest_or_named(tmp_path):
    folder = tmp_path / "mixed"
    _dicom_series(folder, [0, 1, 2, 3, 4], series_uid="1.2.3.4")
    _dicom_series(folder, [0, 5, 10], series_uid="1.2.3.5")
    assert io.read_scan(folder, volume=False).n_slices == 5
    assert io.read_scan(folder, series="1.2.3.5", volume=False).n_slices == 3
    with pytest.raises(ScanError, match="series 9.9 not found"):
        io.read_scan(folder, series="9.9")


def test_dicom_series_with_missing_or_uneven_slices_refused(tmp_path):
    missing = _dicom_series(tmp_path / "missing", [0, 2, 4, 8, 10, 12])
    with pytest.raises(ScanError, match="missing slice"):
        io.read_scan(missing)
    uneven = _dicom_series(tmp_path / "uneven", [0, 2, 4, 5.3, 7.3, 9.3])
    with pytest.raises(ScanError, match="unevenly spaced"):
        io.read_scan(uneven)


def test_find_scans_in_a_folder_of_scans(tmp_path):
    geometry = io.Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    io.write_image(tmp_path / "p1.nii.gz", np.zeros((3, 3, 3), np.int16), geometry)
    io.write_image(tmp_path / "p2.mha", np.zeros((3, 3, 3), np.int16), geometry)
    _dicom_series(tmp_path / "p3", [0, 1, 2])
    (tmp_path / "readme.txt").write_text("not a scan")
    found = io.find_scans(tmp_path)
    assert [io.scan_id(p) for p in found] == ["p1", "p2", "p3"]


def test_gantry_tilted_dicom_series_refused(tmp_path):
    z = [2.5 * i for i in range(16)]
    tilted = _dicom_series(tmp_path / "tilted", z, drift_mm=0.5)  # 11.3 deg
    with pytest.raises(
        ScanError,
        match=r"tilted: DICOM series is gantry-tilted: slice origins drift 7.5 mm in-plane "
        r"over 37.5 mm along the slices \(11.3 deg; at most 1 deg\)",
    ):
        io.read_geometry(tilted)
    assert io.read_scan(_dicom_series(tmp_path / "square", z, drift_mm=0.02)).n_slices == 16  # 0.5 deg: rounding


# ---- what the method cannot score: one check in read_scan for every command


def _volume(n=20, fill=-1000.0, dtype=np.float32):
    return np.full((n, 6, 6), fill, dtype)


@pytest.mark.parametrize(
    "spacing, direction, message",
    [
        ((500.0, 500.0, 3.0), None, r"pixel spacing \[500.0, 500.0\] mm lies outside the 0.1..5 mm of a chest CT"),
        ((0.01, 0.7, 3.0), None, r"pixel spacing \[0.01, 0.7\] mm lies outside"),
        ((0.7, 0.7, 300.0), None, r"slice spacing \[300.0\] mm lies outside the 0.1..15 mm of a chest CT"),
        (
            (0.7, 0.7, 3.0),
            (1, 0, 0, 0, 1, 0, 0, 0.02, 1),
            r"direction matrix is not orthonormal \(sheared or scaled axes: "
            r"D\^T D departs 0.02 from the identity, at most 0.001 allowed\)",
        ),
        ((0.7, 0.7, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1.01), "direction matrix is not orthonormal .* departs 0.0201"),
    ],
    ids=["huge-pixels", "tiny-pixels", "huge-slices", "sheared", "scaled"],
)
def test_implausible_geometry_refused_by_header_and_full_read(tmp_path, spacing, direction, message):
    path, _ = _stored(tmp_path, _volume(), spacing, (0, 0, 0), direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for read in (io.read_scan, io.read_geometry, io.read_image):
        with pytest.raises(ScanError, match=f"scan.mha: {message}"):
            read(path)


def test_plausible_extremes_pass(tmp_path):
    path, _ = _stored(tmp_path, _volume(15), (5.0, 0.1, 15.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0.0005, 1))
    assert io.read_scan(path).shape == (15, 6, 6)


def test_negative_spacing_is_refused_alike_by_the_header_and_the_full_read(tmp_path):
    """ITK's full read turns a negative spacing into a flipped direction (the scan would be used upside down),
    its header read does not: both now go through the one header check."""
    path, _ = _stored(tmp_path, _volume().astype(np.int16), (2.0, 2.0, 3.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 2 2 3", b"ElementSpacing = 2 2 -3"))
    assert sitk.ReadImage(str(path)).GetDirection()[8] == -1.0  # what the full read alone would have used
    for read in (io.read_scan, io.read_geometry):
        with pytest.raises(ScanError, match=r"scan.mha: spacing \(2.0, 2.0, -3.0\) mm is not positive"):
            read(path)


@pytest.mark.parametrize(
    "value, message",
    [
        (np.nan, "3 of 720 voxels are NaN or infinite; a CT holds finite HU values"),
        (np.inf, "3 of 720 voxels are NaN or infinite"),
        (-1e6, "values -1e\\+06..-1000 lie outside -32768..32767; not a CT in Hounsfield units"),
    ],
    ids=["nan", "inf", "huge"],
)
def test_values_that_are_not_hounsfield_units_refused(tmp_path, value, message):
    array = _volume()
    array.reshape(-1)[[0, 100, 719]] = value
    path, _ = _stored(tmp_path, array, (0.7, 0.7, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ScanError, match=f"scan.mha: {message}"):
        io.read_scan(path, volume=False)
    assert io.read_image(path).shape == (20, 6, 6)  # masks and maps are not HU: not checked as such


def test_unsigned_values_named_as_raw_values_without_the_rescale(tmp_path):
    path, _ = _stored(
        tmp_path, _volume(fill=24, dtype=np.uint16), (0.7, 0.7, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    with pytest.raises(
        ScanError, match="scan.mha: unsigned values 24..24 with no air .* raw scanner values without the HU rescale"
    ):
        io.read_scan(path)


@pytest.mark.parametrize("padding", [-3024, -2048, -32768])
def test_scanner_padding_outside_the_scan_circle_is_valid(tmp_path, padding):
    array = _volume(dtype=np.int16)
    array[:, 0, :] = padding
    path, _ = _stored(tmp_path, array, (0.7, 0.7, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert io.read_scan(path).array.min() == padding


def test_volumes_too_short_for_the_five_levels(tmp_path):
    short, _ = _stored(tmp_path, _volume(3), (0.7, 0.7, 1.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(
        ScanError,
        match="scan.mha: 3 slices spanning 4.5 mm; the five Goh levels need a chest CT of at least 15 slices and 30 mm",
    ):
        io.read_scan(short)
    assert io.read_scan(short, volume=False).n_slices == 3  # fine for a lung mask
    thin, _ = _stored(tmp_path, _volume(20), (0.7, 0.7, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "thin.mha")
    with pytest.raises(ScanError, match="20 slices spanning 20.0 mm"):
        io.read_scan(thin)
    enough, _ = _stored(tmp_path, _volume(15), (0.7, 0.7, 2.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "ok.mha")
    assert io.read_scan(enough).n_slices == 15


def test_truncated_file_is_one_line_without_library_noise(tmp_path, capfd):
    path, _ = _stored(tmp_path, _volume().astype(np.int16), (0.7, 0.7, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    path.write_bytes(path.read_bytes()[:-200])
    capfd.readouterr()
    with pytest.raises(ScanError) as refused:
        io.read_scan(path)
    assert str(refused.value) == (
        f"{path}: cannot read the image: the file is truncated or corrupt "
        "(MetaImage: M_ReadElementsData: data not read completely)"
    )
    assert capfd.readouterr().err == ""
    with pytest.raises(ScanError, match="no DICOM series"):
        io.read_scan(tmp_path)  # a folder without DICOM: GDCM's "No Series were found" stays off stderr
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "direction", [(1, 0, 0, 0, 1, 0, 0, 0, -1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)], ids=["head-first", "flipped-xy"]
)
def test_in_file_orientation_undoes_the_canonical_flips(tmp_path, direction):
    array = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)
    path, image = _stored(tmp_path, array, (0.7, 0.8, 2.5), (-120.0, 35.0, -310.0), direction)
    scan = io.read_scan(path, volume=False)
    assert not np.array_equal(scan.array, array)
    back, geometry = io.in_file_orientation(scan.array, scan)
    np.testing.assert_array_equal(back, array)
    assert geometry == io.Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
