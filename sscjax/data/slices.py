"""The S-Net's training material: the five scored slices of each scan (and the slices just above and below,
with the same label), windowed to [0, 1], resized to one fixed in-plane size, with their 2D lung masks.

Each slice is the original slice nearest to its level's world z (`Geometry.nearest_slice`). Images hold the
HU window [-1500, 1500] mapped linearly to [0, 1] (float32): the window is applied once, here, and every later
stage (synthesis, augmentation, loader, model) works in these window units. Slices whose in-plane size is not
`image_size` x `image_size` are resampled over the same field of view (pixel centres aligned; images linear
after a Gaussian anti-alias filter when shrinking, masks nearest); `spacing_yx` records the resulting pixel
size. A neighbour that would lie outside the scan is left out. Extraction reads whole scans, so it runs once
per scan and is cached as one .npz per scan in a folder the caller chooses (never the cohort), keyed on the
source files (names, sizes, modification times), the scan's levels and scores, and the image size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from sscjax.domain import HU_RANGE, N_LEVELS
from sscjax.errors import ConfigError, ScanError
from sscjax.io import Scan, atomic_write, read_mask, read_scan

if TYPE_CHECKING:
    from sscjax.data.cohort import Cohort

OFFSETS = (-1, 0, 1)
CACHE_VERSION = 2  # 2: made from scans that passed read_scan's checks (finite HU, geometry); 1 may hold unchecked ones

Progress = Callable[[int, int], None]


def window(hu: np.ndarray | float) -> np.ndarray:
    """HU -> model input units: clip to [-1500, 1500] and map linearly to [0, 1] (float32)."""
    lo, hi = HU_RANGE
    return ((np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class SliceSet:
    """N slices with everything the S-Net pipeline needs, as parallel arrays (sample i is row i of each)."""

    images: np.ndarray  # (N, H, W) float32 in [0, 1] (HU window)
    lung: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N, 3) float32: TOT, GG, RET in %
    scan_id: np.ndarray  # (N,) str
    level: np.ndarray  # (N,) int8, 1..5
    offset: np.ndarray  # (N,) int8: -1 below, 0 the level slice, +1 above
    slice_index: np.ndarray  # (N,) int32: index of the slice in its (canonical) scan
    z_mm: np.ndarray  # (N,) float64: world z of that slice
    spacing_yx: np.ndarray  # (N, 2) float64: pixel size in mm after resizing
    native_shape: np.ndarray  # (N, 2) int32: in-plane (y, x) size of the scan before resizing

    def __len__(self) -> int:
        return len(self.scan_id)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def healthy(self) -> np.ndarray:
        """(N,) bool: TOT = 0 and some lung on the slice (the slices data synthesis may start from)."""
        return (self.scores[:, 0] == 0) & self.lung.any(axis=(1, 2))

    def take(self, index: np.ndarray | Sequence[int]) -> SliceSet:
        """The samples at `index` (integer positions or a boolean mask)."""
        return SliceSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def level_only(self) -> SliceSet:
        """Only the level slices themselves (offset 0): what validation and test use."""
        return self.take(self.offset == 0)

    def of_scans(self, ids: Iterable[str]) -> SliceSet:
        """The samples of the given scans (e.g. a fold's training ids)."""
        return self.take(np.isin(self.scan_id, list(ids)))

    @staticmethod
    def concatenate(parts: Sequence[SliceSet]) -> SliceSet:
        return SliceSet(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(SliceSet)})


def resize_slices(slices: np.ndarray, size: int, order: int) -> np.ndarray:
    """(n, h, w) -> (n, size, size) over the same field of view, pixel centres aligned (order 1 linear with a
    Gaussian anti-alias filter when shrinking, 0 nearest); unchanged if already that size."""
    _n, h, w = slices.shape
    if (h, w) == (size, size):
        return slices
    factors = np.array([h / size, w / size])
    if order > 0 and np.any(factors > 1):
        slices = ndimage.gaussian_filter(slices, (0, *np.maximum(0.0, (factors - 1) / 2)), mode="nearest")
    return ndimage.zoom(slices, (1, size / h, size / w), order=order, mode="nearest", grid_mode=True)


def extract_level_slices(
    scan: Scan, lung: np.ndarray, levels_mm: np.ndarray, scores: np.ndarray, image_size: int
) -> dict[str, np.ndarray]:
    """The level slices of one scan and their neighbours, as SliceSet fields (scan_id excepted).

    levels_mm: (5,) world z of L1..L5; scores: (5, 3) TOT, GG, RET per level; lung: (z, y, x) mask of the scan.
    """
    n = scan.n_slices
    try:
        nearest = np.asarray(scan.geometry.nearest_slice(np.asarray(levels_mm, dtype=np.float64), n))
    except ScanError as e:
        raise ScanError(f"{scan.source}: a level {e}") from None
    index = nearest[:, None] + np.asarray(OFFSETS)[None, :]  # (5 levels, 3 offsets)
    inside = (index >= 0) & (index < n)
    level = np.broadcast_to(np.arange(1, N_LEVELS + 1)[:, None], index.shape)[inside]
    offset = np.broadcast_to(np.asarray(OFFSETS)[None, :], index.shape)[inside]
    index = index[inside]
    native = np.asarray(scan.array.shape[1:])
    spacing = np.asarray(scan.geometry.spacing[1::-1], dtype=np.float64) * native / image_size
    return {
        "images": resize_slices(window(scan.array[index]), image_size, order=1),
        "lung": resize_slices((lung[index] > 0).astype(np.uint8), image_size, order=0).astype(bool),
        "scores": np.asarray(scores, dtype=np.float32)[level - 1],
        "level": level.astype(np.int8),
        "offset": offset.astype(np.int8),
        "slice_index": index.astype(np.int32),
        "z_mm": np.asarray(scan.geometry.z_of_index(index), dtype=np.float64),
        "spacing_yx": np.tile(spacing, (len(index), 1)),
        "native_shape": np.tile(native.astype(np.int32), (len(index), 1)),
    }


def _lung_volume(scan: Scan, mask_path: Path | None) -> np.ndarray:
    """The scan's lung mask: from its mask file (any label > 0 is lung, `sscjax.io.read_mask`) or computed from
    the CT."""
    if mask_path is None:
        from sscjax.lung import lung_mask

        return lung_mask(scan)
    return read_mask(mask_path, scan)


def _file_stamps(path: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a file, or of every file in a (DICOM) folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _cache_key(cohort: Cohort, sid: str, image_size: int) -> str:
    """A hash of everything one scan's cached slices depend on."""
    mask_path = cohort.lung_mask_paths.get(sid)
    content = {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "scan": _file_stamps(cohort.scan_paths[sid]),
        "mask": _file_stamps(mask_path) if mask_path is not None else "computed",
        "levels_mm": np.asarray(cohort.levels_mm[sid], dtype=np.float64).tolist(),
        "scores": np.asarray(cohort.scores[sid], dtype=np.float64).tolist(),
    }
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _cached_scan_slices(cohort: Cohort, sid: str, cache_dir: Path, image_size: int) -> dict[str, np.ndarray]:
    """One scan's slices from its cache file, extracted (and cached) again if its sources changed."""
    path = cache_dir / f"{sid}.{image_size}px.npz"
    key = _cache_key(cohort, sid, image_size)
    if path.is_file():
        try:
            with np.load(path) as cached:
                if str(cached["key"]) == key:
                    return {name: cached[name] for name in cached.files if name != "key"}
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache file is rebuilt below
    scan = read_scan(cohort.scan_paths[sid])
    lung = _lung_volume(scan, cohort.lung_mask_paths.get(sid))
    arrays = extract_level_slices(scan, lung, cohort.levels_mm[sid], cohort.scores[sid], image_size)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.asarray(key), **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays may fill allow_pickle
    return arrays


def load_slices(
    cohort: Cohort,
    cache_dir: str | Path,
    *,
    image_size: int = 512,
    neighbours: bool = True,
    ids: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> SliceSet:
    """The SliceSet of a cohort's scans (default all; samples ordered by scan id, level, offset).

    neighbours=False keeps only the level slices (validation, test). The cache always holds the neighbours too.
    progress(done, total) is called after each scan.
    """
    cache_dir = Path(cache_dir)
    if cache_dir.resolve().is_relative_to(Path(cohort.root).resolve()):
        raise ConfigError(
            f"{cache_dir}: the slice cache must lie outside the cohort folder {cohort.root} "
            "(inputs are never modified); use a work folder"
        )
    wanted = sorted(cohort.ids if ids is None else ids)
    unknown = sorted(set(wanted) - set(cohort.ids))
    if unknown:
        raise ConfigError(f"{cohort.root}: no scan(s) {', '.join(unknown)} in this cohort")
    parts = []
    for done, sid in enumerate(wanted, 1):
        arrays = _cached_scan_slices(cohort, sid, cache_dir, image_size)
        part = SliceSet(scan_id=np.full(len(arrays["level"]), sid), **arrays)
        parts.append(part if neighbours else part.level_only())
        if progress is not None:
            progress(done, len(wanted))
    return SliceSet.concatenate(parts) if parts else empty_slice_set(image_size)


def empty_slice_set(image_size: int) -> SliceSet:
    """A SliceSet of no samples (shapes and dtypes as a real one)."""
    return SliceSet(
        images=np.zeros((0, image_size, image_size), np.float32),
        lung=np.zeros((0, image_size, image_size), bool),
        scores=np.zeros((0, 3), np.float32),
        scan_id=np.zeros(0, str),
        level=np.zeros(0, np.int8),
        offset=np.zeros(0, np.int8),
        slice_index=np.zeros(0, np.int32),
        z_mm=np.zeros(0),
        spacing_yx=np.zeros((0, 2)),
        native_shape=np.zeros((0, 2), np.int32),
    )
