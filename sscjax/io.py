"""CT scans and their geometry: reading, canonical orientation, world <-> index, resampling, writing.

World coordinates are ITK/DICOM patient coordinates (LPS, +z toward the head). Every scan read here is
put in one canonical orientation (direction ~ identity: x toward the patient's left, y toward posterior,
slices from feet to head) by flipping axes, with origin and direction changed so that every voxel keeps
its world position.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sscjax.domain import HU_RANGE
from sscjax.errors import ScanError, SscError

SCAN_EXTENSIONS = (".nii.gz", ".mha", ".mhd", ".nii", ".nrrd", ".dcm")
WRITE_EXTENSIONS = (".nii.gz", ".mha", ".nii", ".nrrd")

# An axis may deviate this much from its world axis before the scan counts as oblique.
MAX_OBLIQUE_DEG = 1.0
# DICOM slice gaps may differ from their median by this fraction before the series counts as uneven.
SLICE_GAP_TOLERANCE = 0.05

# What a scan must be for the method to score it (docs/security.md); every command that reads a CT checks these.
# Pixel spacing: clinical chest CT uses 0.3-1 mm pixels, the synthetic phantoms up to about 3.5 mm; beyond 5 mm
# no lung structure survives, and sizes in the wrong unit (m, um) fall outside.
PIXEL_MM = (0.1, 5.0)
# Slice spacing: 0.5-5 mm for volumetric CT, 10 mm (at most 15) for incremental HRCT; wider gaps put a level's
# nearest slice more than 7.5 mm from the level itself.
SLICE_MM = (0.1, 15.0)
# A volume that must hold the five Goh levels (L-Net, cascade, training): each level slice with its neighbours
# above and below is 15 distinct slices, and even a child's L1..L5 span is several times 30 mm.
MIN_LEVEL_SLICES = 15
MIN_LEVEL_EXTENT_MM = 30.0
# Direction cosines are stored with about 6 decimals; a larger departure of D^T D from the identity is a shear or
# scale that would change every volume and distance (1e-3: 0.1 % in volume, 0.06 deg of shear).
ORTHONORMAL_TOLERANCE = 1e-3
# A mask's origin may lie off its scan's, and its spacing drift over the image, by this fraction of a voxel.
MASK_GEOMETRY_TOL = 0.1
# CT values in HU are 16-bit: padding outside the scan circle (-3024, -2048, -32768) below air, metal up to about
# 30000 on the extended scale; values outside this range are not Hounsfield units.
PLAUSIBLE_HU = (-32768.0, 32767.0)
# Why a CT without air (about -1000 HU) is refused: its values were stored without their rescale.
RAW_VALUES_HINT = "looks like raw scanner values without the HU rescale (DICOM RescaleSlope/RescaleIntercept)"
# The identity of a DICOM series that results carry (scores.json's `dicom`): key -> DICOM tag (group|element).
DICOM_TAGS = {
    "patient_id": "0010|0020",
    "study_instance_uid": "0020|000d",
    "series_instance_uid": "0020|000e",
    "modality": "0008|0060",
    "study_date": "0008|0020",
    "series_description": "0008|103e",
}

_UMASK = os.umask(0)
os.umask(_UMASK)
_STDERR_LOCK = threading.Lock()  # one reader at a time may divert the stderr descriptor
# ITK and GDCM warnings ("No Series were found", uneven sampling) are for developers; problems are raised here.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


def _xyz(values: Iterable[float]) -> tuple[float, float, float]:
    """Three (x, y, z) values as plain floats."""
    x, y, z = (float(v) for v in values)
    return x, y, z


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel array lies in the world: spacing and origin (x, y, z) in mm, direction 3x3."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def matrix(self) -> np.ndarray:
        """The direction as a 3x3 matrix whose columns are the x, y, z index axes in the world."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def z_step(self) -> float:
        """World z (mm) travelled per slice index step."""
        return float(self.spacing[2] * self.matrix[2, 2])

    def z_of_index(self, k: float | np.ndarray) -> float | np.ndarray:
        """World z (mm) of slice index `k` (fractional indices allowed)."""
        return self.origin[2] + np.asarray(k, dtype=np.float64) * self.z_step

    def index_of_z(self, z: float | np.ndarray) -> float | np.ndarray:
        """Continuous slice index of world z (mm)."""
        return (np.asarray(z, dtype=np.float64) - self.origin[2]) / self.z_step

    def nearest_slice(self, z: float | np.ndarray, n_slices: int) -> int | np.ndarray:
        """Index of the slice nearest to world z (round half up); refuses z more than half a slice outside."""
        k = self.index_of_z(z)
        if np.any(k < -0.5) or np.any(k > n_slices - 0.5):
            lo, hi = sorted((float(self.z_of_index(0)), float(self.z_of_index(n_slices - 1))))
            raise ScanError(
                f"z = {np.round(z, 2).tolist()} mm lies outside the scan (slices span {lo:.2f} .. {hi:.2f} mm)"
            )
        nearest = np.clip(np.floor(k + 0.5), 0, n_slices - 1).astype(int)
        return int(nearest) if nearest.ndim == 0 else nearest

    def slice_geometry(self, k: int) -> Geometry:
        """The geometry of slice `k` alone, as a one-slice volume."""
        origin = np.asarray(self.origin) + self.matrix[:, 2] * self.spacing[2] * k
        return replace(self, origin=_xyz(origin))


@dataclass
class Scan:
    """A CT volume in HU, (z, y, x) in canonical orientation, with its geometry and where it came from
    (`file_geometry`: the geometry as stored in the file, before the canonical flips; None if made in memory;
    `dicom`: the series' identity, `DICOM_TAGS` from its header, for DICOM input only)."""

    array: np.ndarray
    geometry: Geometry
    source: str = ""
    file_geometry: Geometry | None = None
    dicom: dict[str, str | None] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def z_mm(self) -> np.ndarray:
        """World z (mm) of every slice, increasing with the index."""
        return np.asarray(self.geometry.z_of_index(np.arange(self.n_slices)))


def scan_id(path: str | Path) -> str:
    """The id of a scan: its file name without the scan extension, or the folder name of a DICOM series."""
    name = Path(path).name
    for ext in SCAN_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def extension_of(path: Path) -> str:
    """The scan extension of a file name (".nii.gz" counts as one), lower case."""
    name = path.name.lower()
    return next((ext for ext in SCAN_EXTENSIONS if name.endswith(ext)), path.suffix.lower())


PARTIAL_WRITES = ".*.tmp*"  # the temporary files of `atomic_write` (".NAME.XXXX.tmpEXT")
STALE_S = 60.0  # a temporary file untouched this long is what a killed run left, not a write in progress


def remove_partial_writes(folder: str | Path) -> None:
    """Remove the temporary files that killed runs left in `folder` (an atomic write stopped between writing its
    temporary file and renaming it), leaving alone any younger than STALE_S: a write in progress elsewhere."""
    now = time.time()
    for path in Path(folder).glob(PARTIAL_WRITES):
        if path.is_file() and now - path.stat().st_mtime > STALE_S:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same extension); it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = extension_of(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{ext}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give outputs the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(folder: str | Path) -> Path:
    """Refuse an output folder that cannot be written, before any work is done: the folder (made if missing) is
    probed with a temporary file, and whatever the probe made is removed again."""
    folder = Path(folder)
    missing, existing = [], folder
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise SscError(f"{folder}: cannot write outputs here ({existing} is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ssc-write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SscError(f"{folder}: cannot write outputs here ({e.strerror or e})") from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
    return folder


def _json_ready(value):
    """JSON has no NaN or infinity: undefined numbers become null; numpy scalars and arrays become Python's."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON, atomically (NaN as null)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_json_ready(data), indent=1, allow_nan=False) + "\n")
    return path


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    """Write rows of dicts as a CSV with a header, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or (list(rows[0]) if rows else []))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _unsupported(path: Path) -> ScanError:
    return ScanError(f"{path}: not a supported scan format (use {', '.join(SCAN_EXTENSIONS)} or a DICOM folder)")


def _stored_header(image: sitk.Image | sitk.ImageFileReader) -> tuple[Geometry, tuple[int, int, int]]:
    """Geometry and (z, y, x) shape as stored; a 2D image is one slice (spacing 1 mm, origin 0 along z)."""
    dim = image.GetDimension()
    size = list(image.GetSize()) + [1] * (3 - dim)
    direction = np.eye(3)
    direction[:dim, :dim] = np.reshape(image.GetDirection(), (dim, dim))
    geometry = Geometry(
        tuple(image.GetSpacing()) + (1.0,) * (3 - dim),
        tuple(image.GetOrigin()) + (0.0,) * (3 - dim),
        tuple(float(v) for v in direction.ravel()),
    )
    return geometry, (size[2], size[1], size[0])


def _check_geometry(geometry: Geometry, n_slices: int, source: str) -> None:
    """Refuse geometry nothing can be measured in: spacing outside PIXEL_MM or (with several slices) SLICE_MM, a
    non-finite origin, a sheared or scaled direction, axes more than MAX_OBLIQUE_DEG from axial."""
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ScanError(f"{source}: spacing {geometry.spacing} mm is not positive")
    limits = [("pixel", spacing[:2], PIXEL_MM)] + ([("slice", spacing[2:], SLICE_MM)] if n_slices > 1 else [])
    for what, values, (lo, hi) in limits:
        if np.any((values < lo) | (values > hi)):
            raise ScanError(
                f"{source}: {what} spacing {np.round(values, 4).tolist()} mm lies outside the "
                f"{lo:g}..{hi:g} mm of a chest CT"
            )
    if not np.all(np.isfinite(geometry.origin)):
        raise ScanError(f"{source}: origin {geometry.origin} is not a finite position")
    matrix = geometry.matrix
    departure = float(np.abs(matrix.T @ matrix - np.eye(3)).max()) if np.all(np.isfinite(matrix)) else math.inf
    if not departure <= ORTHONORMAL_TOLERANCE:
        raise ScanError(
            f"{source}: direction matrix is not orthonormal (sheared or scaled axes: D^T D departs "
            f"{departure:.3g} from the identity, at most {ORTHONORMAL_TOLERANCE:g} allowed)"
        )
    cos_tol = math.cos(math.radians(MAX_OBLIQUE_DEG))
    diagonal = np.abs(np.diag(geometry.matrix))
    if np.any(diagonal < cos_tol):
        angles = np.degrees(np.arccos(np.clip(diagonal, -1, 1)))
        raise ScanError(
            f"{source}: not an axial acquisition (axes deviate {np.round(angles, 1).tolist()} deg from x, y, z; "
            "oblique or sagittal/coronal scans are not supported)"
        )


def _backward_axes(geometry: Geometry) -> list[int]:
    """The index axes (0 = x, 1 = y, 2 = z) whose direction points against their world axis."""
    return [axis for axis in range(3) if geometry.matrix[axis, axis] < 0]


def canonical_geometry(geometry: Geometry, shape_zyx: tuple[int, int, int]) -> Geometry:
    """The geometry after flipping backward axes: direction ~ identity, same world position of every voxel."""
    matrix = geometry.matrix.copy()
    origin = np.asarray(geometry.origin, dtype=np.float64)
    for axis in _backward_axes(geometry):
        origin = origin + matrix[:, axis] * geometry.spacing[axis] * (shape_zyx[2 - axis] - 1)
        matrix[:, axis] *= -1
    return Geometry(geometry.spacing, _xyz(origin), tuple(float(v) for v in matrix.ravel()))


def canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Flip the axes that point backwards, so direction ~ identity and slices go from feet to head."""
    flip_axes = tuple(2 - axis for axis in _backward_axes(geometry))
    if flip_axes:
        array = np.ascontiguousarray(np.flip(array, axis=flip_axes))
    return array, canonical_geometry(geometry, array.shape)


def _dicom_series(folder: Path, series: str | None) -> list[str]:
    """File names of the chosen series in a DICOM folder: the named one, else the one with most slices."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ScanError(f"{folder}: no DICOM series found in this folder")
    if series is not None:
        if series not in ids:
            raise ScanError(f"{folder}: series {series} not found (series here: {', '.join(ids)})")
        ids = (series,)
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in ids}
    chosen = max(files.values(), key=len)
    return list(chosen)


def _dicom_identity(reader: sitk.ImageFileReader) -> dict[str, str | None]:
    """The `DICOM_TAGS` of a DICOM header read by `reader` (padding stripped; None where absent or empty)."""
    values = {key: reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else "" for key, tag in DICOM_TAGS.items()}
    return {key: value.strip(" \x00") or None for key, value in values.items()}


def _check_dicom_positions(folder: Path, files: list[str]) -> None:
    """Refuse series with missing, duplicated or unevenly spaced slices (positions along the slice normal), or
    whose slice origins drift in-plane along the series (a gantry tilt: the slices are not stacked squarely)."""
    if len(files) < 2:
        return
    reader = sitk.ImageFileReader()
    stored, normal = [], None
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        if normal is None:
            normal = np.asarray(reader.GetDirection()).reshape(3, 3)[:, 2]
        stored.append(reader.GetOrigin())
    assert normal is not None  # at least two files were read
    origins = np.asarray(stored, dtype=np.float64)
    positions = origins @ normal
    order = np.argsort(positions)
    gaps = np.diff(positions[order])
    step = float(np.median(gaps))
    if step <= 1e-6 or np.any(gaps <= 1e-6):
        raise ScanError(f"{folder}: DICOM series has several slices at the same position")
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > SLICE_GAP_TOLERANCE * step:
        kind = "missing slice(s)" if gaps[worst] > 1.5 * step else "unevenly spaced slices"
        raise ScanError(
            f"{folder}: DICOM series has {kind}: gap of {gaps[worst]:.2f} mm after slice {worst} "
            f"where the series spacing is {step:.2f} mm"
        )
    travel = origins[order[-1]] - origins[order[0]]
    along = float(travel @ normal)
    drift = float(np.linalg.norm(travel - along * normal))
    tilt = math.degrees(math.atan2(drift, along))
    if tilt > MAX_OBLIQUE_DEG:
        raise ScanError(
            f"{folder}: DICOM series is gantry-tilted: slice origins drift {drift:.1f} mm in-plane over "
            f"{along:.1f} mm along the slices ({tilt:.1f} deg; at most {MAX_OBLIQUE_DEG:g} deg); tilted series "
            "are not supported"
        )


@contextlib.contextmanager
def _library_output() -> Iterator[Callable[[], str]]:
    """Divert what the image libraries print to the stderr file descriptor themselves (MetaIO, NrrdIO) while the
    block runs, so that none of it reaches the user; yields a function that returns the text printed so far."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as buffer:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(buffer.fileno(), 2)
        try:
            yield lambda: (buffer.seek(0), buffer.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _read_failure(path: Path, error: RuntimeError, printed: str) -> ScanError:
    """One line for a file the image library could not read. Its exception often ends in a stale errno ("No such
    file or directory" for a file that exists), so the reason given is what the library printed, if it did (less
    object addresses, prefixes and the quoted file name, which the line names once already)."""
    lines = [line.strip() for line in (printed.strip() or str(error)).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Exception thrown", "Reason:"))] or ["unknown error"]
    detail = re.sub(r'\(0x[0-9a-f]+\)|^(sitk::ERROR|ITK ERROR): | for "[^"]*"', "", lines[0 if printed.strip() else -1])
    return ScanError(f"{path}: cannot read the image: the file is truncated or corrupt ({detail[:160]})")


def _check_header(
    image: sitk.Image | sitk.ImageFileReader, source: str, volume: bool
) -> tuple[Geometry, tuple[int, int, int]]:
    """The stored geometry and (z, y, x) shape of an image header that passes every check, before voxels are read;
    `volume`: it must be a CT volume that can hold the five Goh levels."""
    components = (
        image.GetNumberOfComponents()
        if isinstance(image, sitk.ImageFileReader)
        else image.GetNumberOfComponentsPerPixel()
    )
    if components != 1:
        raise ScanError(f"{source}: has {components} values per pixel; a CT has one")
    if image.GetDimension() not in (2, 3):
        raise ScanError(f"{source}: has {image.GetDimension()} dimensions; expected a 3D volume")
    geometry, shape = _stored_header(image)
    if volume and shape[0] < 2:
        raise ScanError(f"{source}: is a single 2D slice, but a CT volume is needed here")
    _check_geometry(geometry, shape[0], source)
    extent = shape[0] * geometry.spacing[2]
    if volume and (shape[0] < MIN_LEVEL_SLICES or extent < MIN_LEVEL_EXTENT_MM):
        raise ScanError(
            f"{source}: {shape[0]} slices spanning {extent:.1f} mm; the five Goh levels need a chest CT "
            f"of at least {MIN_LEVEL_SLICES} slices and {MIN_LEVEL_EXTENT_MM:g} mm"
        )
    return geometry, shape


def _read_sitk(
    path: Path, series: str | None, volume: bool, header_only: bool
) -> tuple[sitk.Image | None, Geometry, tuple[int, int, int], dict[str, str | None] | None]:
    """(image, stored geometry, (z, y, x) shape, DICOM identity or None) of a file or DICOM folder whose header
    passed `_check_header`; no image with `header_only` (a DICOM folder is always read whole)."""
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise ScanError(f"{path}: no permission to read it")
    if path.is_file() and extension_of(path) not in SCAN_EXTENSIONS:
        raise _unsupported(path)
    if path.is_file() and series is not None:
        raise ScanError(f"{path}: is a file; a series UID chooses among the series of a DICOM folder")
    reader = sitk.ImageFileReader()
    with _library_output() as printed:
        try:
            if path.is_dir():
                files = _dicom_series(path, series)
                _check_dicom_positions(path, files)
                reader.SetFileName(files[0])
                reader.ReadImageInformation()
                series_reader = sitk.ImageSeriesReader()
                series_reader.SetFileNames(files)
                image = series_reader.Execute()
                return image, *_check_header(image, str(path), volume), _dicom_identity(reader)
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            geometry, shape = _check_header(reader, str(path), volume)
            dicom = _dicom_identity(reader) if extension_of(path) == ".dcm" else None
            return (None if header_only else reader.Execute()), geometry, shape, dicom
        except RuntimeError as e:
            raise _read_failure(path, e, printed()) from None


def _check_values(array: np.ndarray, source: str) -> None:
    """Refuse CT values that are not Hounsfield units: NaN or infinite voxels, values outside PLAUSIBLE_HU, and
    unsigned values (no air at about -1000 HU: the rescale to HU was not applied)."""
    lo, hi = float(array.min()), float(array.max())  # NaN propagates, so finite extremes mean finite voxels
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        raise ScanError(f"{source}: {bad} of {array.size} voxels are NaN or infinite; a CT holds finite HU values")
    if array.dtype.kind == "u":
        raise ScanError(f"{source}: unsigned values {lo:g}..{hi:g} with no air (about -1000 HU): {RAW_VALUES_HINT}")
    if lo < PLAUSIBLE_HU[0] or hi > PLAUSIBLE_HU[1]:
        raise ScanError(
            f"{source}: values {lo:g}..{hi:g} lie outside {PLAUSIBLE_HU[0]:g}..{PLAUSIBLE_HU[1]:g}; "
            "not a CT in Hounsfield units"
        )


def _read(path: Path, series: str | None, volume: bool, dtype, hu: bool) -> Scan:
    """A checked image as a canonical Scan (values checked as HU if `hu`), converted to `dtype` if given."""
    image, stored, shape, dicom = _read_sitk(path, series, volume, header_only=False)
    assert image is not None  # only a header-only read has no image
    array = sitk.GetArrayFromImage(image).reshape(shape)
    if hu:
        _check_values(array, str(path))
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    array, geometry = canonical(array, stored)
    return Scan(array, geometry, str(path), stored, dicom)


def read_image(path: str | Path, series: str | None = None, *, volume: bool = False, dtype=None) -> Scan:
    """Read any scalar image (CT, mask, pattern) as a canonical (z, y, x) array with its geometry."""
    return _read(Path(path), series, volume, dtype, hu=False)


def read_scan(path: str | Path, series: str | None = None, *, volume: bool = True) -> Scan:
    """Read a CT scan (file or DICOM folder) in HU as float32, canonical orientation. Every command reads CTs
    here, so all refuse the same scans: bad geometry (`_check_geometry`), values that are not HU (`_check_values`)
    and, with `volume`, anything too short to hold the five Goh levels (False accepts single slices). `series`:
    the series instance UID to read from a DICOM folder (default: its series with the most slices)."""
    return _read(Path(path), series, volume, np.float32, hu=True)


def read_geometry(path: str | Path, series: str | None = None) -> tuple[Geometry, tuple[int, int, int]]:
    """Canonical geometry and (z, y, x) shape of a scan; files are read from their header only."""
    _, geometry, shape, _ = _read_sitk(Path(path), series, volume=False, header_only=True)
    return canonical_geometry(geometry, shape), shape


def read_mask(path: str | Path, scan: Scan, tol: float = MASK_GEOMETRY_TOL) -> np.ndarray:
    """A mask file (any label > 0) as uint8 0/1 on `scan`'s canonical grid, read and flipped as scans are; ScanError
    naming the file when its geometry is not the scan's (shape; spacing and origin within `tol` of a voxel over
    the image; direction)."""
    mask = read_image(path)
    if mask.shape != scan.shape:
        raise ScanError(f"{path}: mask of shape {mask.shape} (z, y, x), but the scan {scan.source} is {scan.shape}")
    voxel = np.asarray(scan.geometry.spacing)
    differences = {
        "spacing": np.abs(np.subtract(mask.geometry.spacing, voxel)) * scan.shape[::-1] > tol * voxel,
        "origin": np.abs(np.subtract(mask.geometry.origin, scan.geometry.origin)) > tol * voxel,
        "direction": np.abs(np.subtract(mask.geometry.direction, scan.geometry.direction)) > ORTHONORMAL_TOLERANCE,
    }
    for what, off in differences.items():
        if np.any(off):
            mine, theirs = (np.round(getattr(g, what), 3).tolist() for g in (mask.geometry, scan.geometry))
            raise ScanError(f"{path}: mask {what} {mine} is not the scan's {theirs} ({scan.source}, both canonical)")
    return (mask.array > 0).astype(np.uint8)


def in_file_orientation(array: np.ndarray, scan: Scan) -> tuple[np.ndarray, Geometry]:
    """A (z, y, x) array on `scan`'s canonical grid (a mask, a map) in the scan file's own storage order, with the
    file's geometry: written so, it overlays the file's voxel array voxel for voxel (undoes `canonical`)."""
    stored = scan.file_geometry or scan.geometry
    flip_axes = tuple(2 - axis for axis in _backward_axes(stored))
    return (np.ascontiguousarray(np.flip(array, axis=flip_axes)) if flip_axes else array), stored


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) or (y, x) array with the given geometry."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array[None] if array.ndim == 2 else array)
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    image.SetDirection(tuple(float(v) for v in geometry.direction))
    return image


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry) -> Path:
    """Write a (z, y, x) array (or one (y, x) slice) with its geometry, atomically; format from the extension."""
    path = Path(path)
    if extension_of(path) not in WRITE_EXTENSIONS:
        raise ScanError(f"{path}: cannot write this format (use {', '.join(WRITE_EXTENSIONS)})")
    image = to_sitk(array, geometry)
    with atomic_write(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def resampled_geometry(
    geometry: Geometry, shape_zyx: tuple[int, int, int], new_shape_zyx: tuple[int, int, int]
) -> Geometry:
    """Geometry of the same field of view (voxel edges aligned) sampled on a `new_shape_zyx` matrix."""
    old = np.asarray(shape_zyx[::-1], dtype=np.float64)
    new = np.asarray(new_shape_zyx[::-1], dtype=np.float64)
    spacing = np.asarray(geometry.spacing) * old / new
    origin = np.asarray(geometry.origin) + geometry.matrix @ ((spacing - np.asarray(geometry.spacing)) / 2)
    return Geometry(_xyz(spacing), _xyz(origin), geometry.direction)


def resample(scan: Scan, shape_zyx: tuple[int, int, int], order: int = 1, fill: float | None = None) -> Scan:
    """Resample to a fixed (z, y, x) matrix over the same field of view (order 0: nearest, 1: linear)."""
    geometry = resampled_geometry(scan.geometry, scan.shape, shape_zyx)
    reference = sitk.Image([int(s) for s in shape_zyx[::-1]], sitk.sitkUInt8)
    reference.SetSpacing(geometry.spacing)
    reference.SetOrigin(geometry.origin)
    reference.SetDirection(geometry.direction)
    interpolator = sitk.sitkNearestNeighbor if order == 0 else sitk.sitkLinear
    default = float(scan.array.min()) if fill is None else fill
    image = to_sitk(scan.array, scan.geometry)
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())
    return Scan(sitk.GetArrayFromImage(out), geometry, scan.source)


def clip_hu(array: np.ndarray, lo: float = HU_RANGE[0], hi: float = HU_RANGE[1]) -> np.ndarray:
    """Clip Hounsfield units to [lo, hi]."""
    return np.clip(array, lo, hi)


def is_dicom_folder(path: Path) -> bool:
    """Whether a folder holds a DICOM series itself (rather than scans in sub-entries)."""
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def find_scans(path: str | Path) -> list[Path]:
    """The scans a path names: a scan file, a DICOM folder, or a folder of scan files and DICOM folders."""
    path = Path(path)
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if path.is_file() and extension_of(path) not in SCAN_EXTENSIONS:
        raise _unsupported(path)
    if path.is_file() or is_dicom_folder(path):
        return [path]
    found = sorted(
        p
        for p in path.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and extension_of(p) in SCAN_EXTENSIONS and extension_of(p) != ".dcm") or is_dicom_folder(p))
    )
    if not found:
        raise ScanError(f"{path}: no scans found (files {', '.join(SCAN_EXTENSIONS)} or DICOM folders)")
    return found
