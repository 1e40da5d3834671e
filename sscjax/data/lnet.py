"""L-Net data: scans resampled once to a fixed matrix and cached, level labels, training crops, sliding windows.

A prepared volume is the scan resampled (linear) to `size` (z, y, x) over its own field of view, HU clipped to
[-1500, 1500] and rounded to int16, stored as RUNS/cache/lnet-<z>x<y>x<x>/<id>.npy (memory-mapped when used)
beside <id>.json (resampled and source geometry, and the source's size, mtime and content hash: a changed
source is prepared again). Labels are the five level positions as continuous slice indices of the resampled
volume (0 = lowest slice).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscjax.configs import AUTHORS, Conventions
from sscjax.domain import N_LEVELS
from sscjax.errors import ConfigError
from sscjax.io import Geometry, Scan, atomic_write, clip_hu, read_scan, resample, write_json

CACHE_VERSION = 2  # 2: made from scans that passed read_scan's checks (finite HU, geometry); 1 may hold unchecked ones
HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class PreparedVolume:
    """A resampled, clipped scan (int16 HU, (z, y, x)) with its geometry and the original scan's geometry."""

    array: np.ndarray
    geometry: Geometry
    source_geometry: Geometry
    source_shape: tuple[int, int, int]


def prepare_volume(scan: Scan, size: tuple[int, int, int]) -> PreparedVolume:
    """Resample a scan to `size` over its field of view, clip HU, round to int16."""
    z, y, x = size
    resampled = resample(scan, (z, y, x), order=1)
    array = np.rint(clip_hu(resampled.array)).astype(np.int16)
    return PreparedVolume(array, resampled.geometry, scan.geometry, scan.shape)


def cache_dir(workdir: str | Path, size: tuple[int, int, int]) -> Path:
    """Where volumes prepared for matrix `size` are cached under a run root."""
    return Path(workdir) / "cache" / f"lnet-{'x'.join(str(s) for s in size)}"


def _source_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _signature(path: Path) -> dict:
    """Cheap change detection: number, total size and newest mtime of the source's files."""
    stats = [p.stat() for p in _source_files(path)]
    return {"files": len(stats), "bytes": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats)}


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for f in _source_files(path):
        digest.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(f, "rb") as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _geometry_dict(g: Geometry) -> dict:
    return {"spacing": list(g.spacing), "origin": list(g.origin), "direction": list(g.direction)}


def _geometry(d: dict) -> Geometry:
    return Geometry(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


def _cached(meta_path: Path, array_path: Path, source: Path, size: tuple[int, int, int]) -> dict | None:
    """The cache entry's metadata if it is still valid for `source` (re-stamped when only mtimes changed)."""
    if not (meta_path.is_file() and array_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("size") != list(size):
        return None
    signature = _signature(source)
    if meta.get("signature") == signature:
        return meta
    if meta.get("signature", {}).get("bytes") != signature["bytes"] or meta.get("sha256") != _content_hash(source):
        return None
    meta["signature"] = signature
    write_json(meta_path, meta)
    return meta


def load_prepared(source: str | Path, scan_id: str, cache: str | Path, size: tuple[int, int, int]) -> PreparedVolume:
    """The prepared volume of a scan, from the cache (memory-mapped) or prepared now and cached."""
    source, cache = Path(source), Path(cache)
    array_path, meta_path = cache / f"{scan_id}.npy", cache / f"{scan_id}.json"
    meta = _cached(meta_path, array_path, source, size)
    if meta is None:
        prepared = prepare_volume(read_scan(source), size)
        with atomic_write(array_path) as tmp:
            np.save(tmp, prepared.array)
        meta = {
            "version": CACHE_VERSION,
            "source": str(source.absolute()),
            "size": list(size),
            "signature": _signature(source),
            "sha256": _content_hash(source),
            "geometry": _geometry_dict(prepared.geometry),
            "source_geometry": _geometry_dict(prepared.source_geometry),
            "source_shape": list(prepared.source_shape),
        }
        write_json(meta_path, meta)
    return PreparedVolume(
        np.load(array_path, mmap_mode="r"),
        _geometry(meta["geometry"]),
        _geometry(meta["source_geometry"]),
        tuple(meta["source_shape"]),
    )


@dataclass(frozen=True)
class LevelSet:
    """Prepared volumes of some scans with their level positions (n, 5) in resampled slices."""

    ids: list[str]
    volumes: list[PreparedVolume]
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def slice_mm(self) -> np.ndarray:
        """(n,) mm per resampled slice of each volume."""
        return np.asarray([abs(v.geometry.z_step) for v in self.volumes])


def level_set(
    scan_paths: dict[str, Path],
    levels_mm: dict[str, np.ndarray],
    ids: list[str],
    cache: str | Path,
    size: tuple[int, int, int],
    progress: Callable[[int, int], None] | None = None,
) -> LevelSet:
    """Prepare (or load from the cache) the scans `ids`; labels from their world z levels (mm)."""
    volumes = []
    for done, i in enumerate(ids, 1):
        volumes.append(load_prepared(scan_paths[i], i, cache, size))
        if progress is not None:
            progress(done, len(ids))
    positions = np.asarray(
        [v.geometry.index_of_z(np.asarray(levels_mm[i], dtype=np.float64)) for i, v in zip(ids, volumes)]
    ).reshape(len(ids), N_LEVELS)
    return LevelSet(list(ids), volumes, positions.astype(np.float32))


def crop_bounds(positions: np.ndarray, crop: int, n_slices: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) crop start per row such that every level lies at least `margin` slices inside."""
    lo = np.maximum(np.ceil(positions.max(axis=-1) - (crop - 1 - margin)), 0).astype(int)
    hi = np.minimum(np.floor(positions.min(axis=-1) - margin), n_slices - crop).astype(int)
    return lo, hi


def crop_starts(positions: np.ndarray, crop: int, n_slices: int, margin: int, draw: np.ndarray) -> np.ndarray:
    """Crop starts uniform over each row's `crop_bounds`, from uniform draws in [0, 1)."""
    lo, hi = crop_bounds(positions, crop, n_slices, margin)
    return lo + np.floor(draw * (hi - lo + 1)).astype(int)


def check_crops(levels: LevelSet, crop: int, margin: int) -> None:
    """Refuse settings where some scan's levels cannot all fit inside one crop."""
    if any(v.array.shape[0] < crop for v in levels.volumes):
        raise ConfigError(f"crop of {crop} slices is longer than the resampled volumes")
    lo, hi = crop_bounds(levels.positions, crop, levels.volumes[0].array.shape[0], margin)
    bad = [
        f"{i} (levels span {np.ptp(p):.0f} slices)" for i, p, a, b in zip(levels.ids, levels.positions, lo, hi) if a > b
    ]
    if bad:
        raise ConfigError(
            f"the five levels of {len(bad)} scan(s) do not fit in a {crop}-slice crop with a "
            f"{margin}-slice margin: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )


def moments(values: np.ndarray) -> tuple[float, float]:
    """(mean, population SD) of an array's values, without a float64 copy (exact int64 sums for integers)."""
    flat = np.asarray(values).reshape(-1)
    accumulate = np.int64 if np.issubdtype(flat.dtype, np.integer) else np.float64
    mean = flat.sum(dtype=accumulate) / flat.size
    return float(mean), float(np.sqrt(max(np.einsum("i,i->", flat, flat, dtype=accumulate) / flat.size - mean**2, 0.0)))


def zscored_crops(
    volumes: list[np.ndarray], starts: np.ndarray, crop: int, scale: tuple[float, float] | None = None
) -> np.ndarray:
    """(b, crop, y, x, 1) float32: crop i is volumes[i][starts[i]:starts[i] + crop], z-scored over its own voxels, or
    with `scale` = (mean, SD) given (a constant crop becomes 0). No float64 copy of the batch is made."""
    out = np.empty((len(starts), crop, *np.shape(volumes[0])[1:], 1), np.float32)
    for i, (volume, start) in enumerate(zip(volumes, starts)):
        block = np.asarray(volume[start : start + crop])
        mean, sd = moments(block) if scale is None else scale
        np.subtract(block[..., None], mean, out=out[i], dtype=np.float32)
        out[i] /= np.float32(sd if sd > 1e-6 else 1.0)
    return out


def training_crops(levels: LevelSet, rows: np.ndarray, starts: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops (b, crop, y, x, 1) z-scored per crop, and their labels (b, 5): positions relative to the start."""
    targets = levels.positions[rows] - starts[:, None].astype(np.float32)
    return zscored_crops([levels.volumes[r].array for r in rows], starts, crop), targets


def window_starts(n_slices: int, crop: int, stride: int, conventions: Conventions = "sscjax") -> np.ndarray:
    """First slices of the sliding windows: 0, stride, ... and always the last possible start; with the authors'
    conventions 0, stride, ... while start < n_slices - crop (their code's: the window flush with the top is left out)."""
    if conventions == AUTHORS:
        starts = np.arange(0, n_slices - crop, stride)
        if not starts.size:
            raise ConfigError(f"the authors' L-Net windows of {crop} slices need a volume of more; it has {n_slices}")
        return starts
    starts = np.arange(0, n_slices - crop + 1, stride)
    return np.unique(np.append(starts, n_slices - crop))


def windows(volume: np.ndarray, starts: np.ndarray, crop: int, scale: tuple[float, float] | None = None) -> np.ndarray:
    """The windows (w, crop, y, x, 1) of a volume at `starts`, each z-scored over its own voxels, or with `scale` =
    (mean, SD) of the whole volume (the authors' conventions)."""
    return zscored_crops([volume] * len(starts), starts, crop, scale)


def median_positions(window_positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-level median over windows of the positions predicted in each window, in volume slices."""
    return np.median(window_positions + starts[:, None], axis=0)
