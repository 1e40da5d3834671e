"""Replacement heat maps: how much each region of a slice drives the S-Net's TOT, GG and RET scores.

A patch of healthy lung texture slides over the slice (a grid of top-left corners, `stride` apart).
At each position it replaces the image inside the lung, blended with linearly fading edges, and the
S-Net scores the result; Delta P = score(replaced) - score(original) per pattern, averaged over all
positions whose patch covers a pixel. Delta P < 0 means the covered region was seen as diseased.
Positions whose patch touches no lung leave the image unchanged, so their Delta P is exactly 0 and
they are not computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sscjax.errors import ConfigError
from sscjax.io import atomic_write, remove_partial_writes, write_json

PATTERNS = ("TOT", "GG", "RET")
Predict = Callable[[jax.Array], jax.Array]  # (N, H, W, 1) images -> (N, 3) scores in %


def default_chunk(shape: tuple[int, int]) -> int:
    """Patch positions per forward batch when not set: 32, but 8 for slices of 256x256 pixels or more on a CPU
    (measured fastest there: larger batches fall out of cache). It bounds the device memory, never the maps."""
    return 8 if jax.default_backend() == "cpu" and shape[0] * shape[1] >= 256 * 256 else 32


@dataclass(frozen=True)
class HeatmapConfig:
    """Settings of the replacement heat maps; the paper's are patch 64 and stride 16 on 512x512 slices."""

    patch: int = 64
    stride: int = 16
    fade: int = 16  # width in pixels of the linear fade at each patch edge
    chunk: int | None = None  # patch positions per forward batch; None: default_chunk(image shape)
    occlusion: str = "replace"  # "replace" with healthy texture, or "constant" (classic occlusion)
    constant: float = 0.0  # the fill value of constant occlusion, in model input units

    def __post_init__(self):
        if self.patch % self.stride:
            raise ConfigError(f"heat-map patch {self.patch} must be a multiple of the stride {self.stride}")
        if not 0 < self.fade <= self.patch // 2:
            raise ConfigError(f"heat-map fade {self.fade} must lie in 1..patch/2 = {self.patch // 2}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"heat-map chunk {self.chunk} must be at least 1")
        if self.occlusion not in ("replace", "constant"):
            raise ConfigError(f"occlusion must be 'replace' or 'constant', not {self.occlusion!r}")


def fade_window(cfg: HeatmapConfig) -> np.ndarray:
    """(patch, patch) blending weights: 1 inside, falling linearly to 0 over `fade` pixels at each edge."""
    u = np.arange(cfg.patch) + 0.5
    ramp = np.minimum(1.0, np.minimum(u, cfg.patch - u) / cfg.fade)
    return np.outer(ramp, ramp).astype(np.float32)


def texture_patch(texture: np.ndarray, cfg: HeatmapConfig) -> np.ndarray:
    """The (patch, patch) replacement content: the healthy texture mirror-tiled or cropped to the patch size."""
    if cfg.occlusion == "constant":
        return np.full((cfg.patch, cfg.patch), cfg.constant, np.float32)
    texture = np.asarray(texture, np.float32)
    reps = (-(-cfg.patch // texture.shape[0]), -(-cfg.patch // texture.shape[1]))
    tiled = np.pad(texture, [(0, (r - 1) * s) for r, s in zip(reps, texture.shape)], mode="symmetric")
    return np.ascontiguousarray(tiled[: cfg.patch, : cfg.patch])


def grid_shape(shape: tuple[int, int], cfg: HeatmapConfig) -> tuple[int, int]:
    """Number of patch positions along y and x: corners at 0, stride, ... below the image size."""
    return -(-shape[0] // cfg.stride), -(-shape[1] // cfg.stride)


def lung_positions(lung: np.ndarray, cfg: HeatmapConfig) -> np.ndarray:
    """(P, 2) grid indices (iy, ix) of the positions whose patch touches the lung."""
    ny, nx = grid_shape(lung.shape, cfg)
    k = cfg.patch // cfg.stride
    cells = _pad_to(lung.astype(np.int64), (ny * cfg.stride, nx * cfg.stride))
    per_cell = cells.reshape(ny, cfg.stride, nx, cfg.stride).sum(axis=(1, 3))
    touched = _box_sum(per_cell, k, forward=True) > 0
    return np.argwhere(touched)


def _pad_to(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.pad(a, [(0, s - n) for s, n in zip(shape, a.shape)] + [(0, 0)] * (a.ndim - 2))


def _box_sum(grid: np.ndarray, k: int, forward: bool) -> np.ndarray:
    """Sum over a k x k window of the first two axes: forward (cells i..i+k-1) or backward (i-k+1..i)."""
    padded = np.pad(grid, [(k, k), (k, k)] + [(0, 0)] * (grid.ndim - 2))
    c = padded.cumsum(0).cumsum(1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (grid.ndim - 2))
    n0, n1 = grid.shape[:2]
    lo = np.arange(n0) + (k if forward else 1)
    lo1 = np.arange(n1) + (k if forward else 1)
    hi, hi1 = lo + k, lo1 + k
    return c[hi][:, hi1] - c[lo][:, hi1] - c[hi][:, lo1] + c[lo][:, lo1]


def _replace(image, lung, content, window, corner):
    """One replaced image: (Hp, Wp) padded arrays, the patch blended in at `corner` inside the lung."""
    weight = jax.lax.dynamic_update_slice(jnp.zeros_like(image), window, corner) * lung
    fill = jax.lax.dynamic_update_slice(jnp.zeros_like(image), content, corner)
    return image * (1 - weight) + fill * weight


def make_delta_fn(predict: Predict, shape: tuple[int, int], cfg: HeatmapConfig):
    """A jitted function (image, lung, content, corners (C, 2), base (1, 3)) -> Delta P (C, 3) for a chunk."""
    window = jnp.asarray(fade_window(cfg))
    h, w = shape

    @jax.jit
    def delta(image, lung, content, corners, base):
        pad = ((0, cfg.patch), (0, cfg.patch))
        image_p, lung_p = jnp.pad(image, pad), jnp.pad(lung, pad)
        replaced = jax.vmap(lambda c: _replace(image_p, lung_p, content, window, c)[:h, :w])(corners)
        return predict(replaced[..., None]) - base

    return delta


def heatmaps(predict: Predict, image: np.ndarray, lung: np.ndarray, texture: np.ndarray,
             cfg: HeatmapConfig = HeatmapConfig(), delta_fn=None) -> np.ndarray:
    """(H, W, 3) Delta P maps (TOT, GG, RET, in percentage points) of one slice in model input units.

    Positions are evaluated by `jax.vmap` in chunks of `cfg.chunk` (None: `default_chunk`); pass `delta_fn` (from
    `make_delta_fn`) to reuse one compiled function over many slices of the same size.
    """
    image = np.asarray(image, np.float32)
    lung_f = np.asarray(lung, np.float32)
    delta_fn = delta_fn or make_delta_fn(predict, image.shape, cfg)
    content = jnp.asarray(texture_patch(texture, cfg))
    base = jax.jit(predict)(jnp.asarray(image)[None, :, :, None])
    cells = lung_positions(lung_f > 0, cfg)
    deltas = np.zeros((len(cells), len(PATTERNS)), np.float32)
    size = cfg.chunk or default_chunk(image.shape)
    for start in range(0, len(cells), size):
        chunk = cells[start : start + size]
        corners = np.zeros((size, 2), np.int32)  # fixed chunk shape: one compilation
        corners[: len(chunk)] = chunk * cfg.stride
        out = delta_fn(jnp.asarray(image), jnp.asarray(lung_f), content, jnp.asarray(corners), base)
        deltas[start : start + len(chunk)] = np.asarray(out)[: len(chunk)]
    return spread_over_patches(deltas, cells, image.shape, cfg)


def spread_over_patches(deltas: np.ndarray, cells: np.ndarray, shape: tuple[int, int], cfg: HeatmapConfig) -> np.ndarray:
    """Average each position's Delta P over the pixels its patch covers (all grid positions count)."""
    ny, nx = grid_shape(shape, cfg)
    k = cfg.patch // cfg.stride
    grid = np.zeros((ny, nx, deltas.shape[1]), np.float64)
    grid[cells[:, 0], cells[:, 1]] = deltas
    total = _box_sum(grid, k, forward=False)
    count = _box_sum(np.ones((ny, nx)), k, forward=False)
    cell_mean = total / count[..., None]
    full = np.repeat(np.repeat(cell_mean, cfg.stride, axis=0), cfg.stride, axis=1)
    return full[: shape[0], : shape[1]].astype(np.float32)


def heatmaps_sequential(predict: Predict, image: np.ndarray, lung: np.ndarray, texture: np.ndarray,
                        cfg: HeatmapConfig = HeatmapConfig()) -> np.ndarray:
    """The original algorithm, one batch-1 forward pass per position and plain loops: the reference for
    tests and benchmarks of `heatmaps`."""
    h, w = image.shape
    window, content = fade_window(cfg), texture_patch(texture, cfg)
    base = np.asarray(predict(jnp.asarray(image[None, :, :, None], jnp.float32)))[0]
    total = np.zeros((h, w, len(PATTERNS)))
    count = np.zeros((h, w))
    for y0 in range(0, h, cfg.stride):
        for x0 in range(0, w, cfg.stride):
            ys, xs = slice(y0, min(y0 + cfg.patch, h)), slice(x0, min(x0 + cfg.patch, w))
            count[ys, xs] += 1
            weight = window[: ys.stop - y0, : xs.stop - x0] * lung[ys, xs]
            if not weight.any():
                continue
            replaced = image.astype(np.float32).copy()
            replaced[ys, xs] = image[ys, xs] * (1 - weight) + content[: ys.stop - y0, : xs.stop - x0] * weight
            total[ys, xs] += np.asarray(predict(jnp.asarray(replaced[None, :, :, None])))[0] - base
    return (total / count[..., None]).astype(np.float32)


def derived_scores(maps: np.ndarray, lung: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Area scores (%) derived from heat maps: the share of the lung where Delta P < threshold, per pattern.

    `maps` is (..., H, W, 3), `lung` (..., H, W); `threshold` a scalar or one per pattern.
    """
    lung = np.asarray(lung, bool)
    below = (maps < np.asarray(threshold)) & lung[..., None]
    return 100.0 * below.sum(axis=(-3, -2)) / np.maximum(lung.sum(axis=(-2, -1)), 1)[..., None]


def derived_segmentation(maps: np.ndarray, lung: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """(H, W, 3) boolean masks of the lung pixels with Delta P below the threshold."""
    return (maps < np.asarray(threshold)) & np.asarray(lung, bool)[..., None]


@dataclass
class Calibration:
    """Thresholds per pattern that make derived scores agree best with the S-Net, and how well they do."""

    thresholds: np.ndarray  # (3,) percentage points
    mae: np.ndarray  # (3,) MAE between derived score and S-Net output at the threshold
    r2: np.ndarray  # (3,) coefficient of determination of the S-Net output by the derived score
    derived: np.ndarray  # (N, 3) derived scores at the chosen thresholds
    candidates: np.ndarray  # the thresholds searched


def calibrate(maps: np.ndarray, lungs: np.ndarray, snet_scores: np.ndarray,
              candidates: np.ndarray = np.round(np.arange(-4.0, 0.0001, 0.1), 2)) -> Calibration:
    """Search the threshold in [-4, 0] percentage points minimising the MAE between derived and S-Net scores."""
    snet_scores = np.asarray(snet_scores, np.float64)
    table = np.stack([derived_scores(maps, lungs, t) for t in candidates])  # (T, N, 3)
    mae = np.abs(table - snet_scores[None]).mean(axis=1)  # (T, 3)
    best = mae.argmin(axis=0)
    derived = table[best, :, np.arange(len(PATTERNS))].T
    residual = ((snet_scores - derived) ** 2).sum(axis=0)
    spread = ((snet_scores - snet_scores.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - residual / np.where(spread > 0, spread, np.nan)
    return Calibration(candidates[best], mae[best, np.arange(len(PATTERNS))], r2, derived, candidates)


# ---------------------------------------------------------------- explaining scans


PAPER_SIZE, PAPER_PATCH, PAPER_STRIDE = 512, 64, 16
DEFAULT_THRESHOLD = -1.0  # percentage points, used until `calibrate` has chosen one on validation data


def scaled_config(image_size: int, **overrides) -> HeatmapConfig:
    """The paper's patch 64 / stride 16 at 512 px, scaled to the S-Net's input size (same field of view);
    overrides that are None keep their defaults."""
    scale = image_size / PAPER_SIZE
    stride = max(1, round(PAPER_STRIDE * scale))
    patch = stride * max(1, round(PAPER_PATCH / PAPER_STRIDE))
    given = {key: value for key, value in overrides.items() if value is not None}
    return HeatmapConfig(**{"patch": patch, "stride": stride, "fade": max(1, patch // 4), **given})


def healthy_texture(pattern: np.ndarray, pattern_mm: float, pixel_mm: float) -> np.ndarray:
    """A healthy-lung texture patch (window units) resampled from its own pixel size to the model's."""
    from scipy import ndimage

    factor = pattern_mm / pixel_mm
    if abs(factor - 1) < 1e-3:
        return np.asarray(pattern, np.float32)
    return ndimage.zoom(np.asarray(pattern, np.float32), factor, order=1, mode="mirror", grid_mode=True)


def ensemble_predict(predicts: list[Predict]) -> Predict:
    """The mean of several S-Nets' outputs, itself a jittable predict function."""
    if len(predicts) == 1:
        return predicts[0]
    return lambda x: sum(p(x) for p in predicts) / len(predicts)


@dataclass
class SliceExplanation:
    """One slice's heat maps at the model's input size, its S-Net scores and the scores derived from the maps."""

    maps: np.ndarray  # (S, S, 3) Delta P, percentage points
    lung: np.ndarray  # (S, S) bool
    scores: np.ndarray  # (3,) S-Net output in %
    derived: np.ndarray  # (3,) derived area scores in %
    segmentation: np.ndarray  # (S, S, 3) bool: lung pixels with Delta P below the threshold
    threshold: np.ndarray  # (3,)


def explain_slices(predict: Predict, images: np.ndarray, lungs: np.ndarray, texture: np.ndarray,
                   cfg: HeatmapConfig, threshold: float | np.ndarray = DEFAULT_THRESHOLD) -> list[SliceExplanation]:
    """Heat maps, S-Net scores and derived scores of (N, S, S) model-input slices (window units)."""
    threshold = np.broadcast_to(np.asarray(threshold, np.float64), (len(PATTERNS),)).copy()
    delta_fn = make_delta_fn(predict, images.shape[1:], cfg)
    scores = np.asarray(jax.jit(predict)(jnp.asarray(images, jnp.float32)[..., None]))
    out = []
    for image, lung, score in zip(images, lungs, scores):
        maps = heatmaps(predict, image, lung, texture, cfg, delta_fn)
        out.append(SliceExplanation(maps, lung.astype(bool), score, derived_scores(maps, lung, threshold),
                                    derived_segmentation(maps, lung, threshold), threshold))
    return out


def to_native(maps: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """(S, S, C) maps at the model's size -> (H, W, C) on the slice's own grid (same field of view)."""
    from scipy import ndimage

    if maps.shape[:2] == tuple(shape):
        return maps
    factors = (shape[0] / maps.shape[0], shape[1] / maps.shape[1], 1)
    return ndimage.zoom(maps, factors, order=order, mode="nearest", grid_mode=True)


def write_explanation(folder: str | Path, name: str, exp: SliceExplanation, image_hu: np.ndarray,
                      lung: np.ndarray, geometry, patterns: tuple[str, ...] = PATTERNS) -> dict:
    """Write one slice's explanation per pattern into `folder`: the Delta P map (`.mha` with the slice's
    geometry, and `.npy`), the derived segmentation (`.mha`), and a PNG overlay; returns the scores."""
    from sscjax import plots
    from sscjax.data.slices import window
    from sscjax.io import write_image

    folder = Path(folder)
    maps = to_native(exp.maps, image_hu.shape)
    segmentation = to_native(exp.segmentation.astype(np.uint8), image_hu.shape, order=0)
    spacing_yx = tuple(geometry.spacing[1::-1])
    summary = {}
    for p in patterns:
        j = PATTERNS.index(p)
        stem = folder / f"{name}_{p}"
        write_image(f"{stem}_delta.mha", maps[..., j], geometry)
        with atomic_write(f"{stem}_delta.npy") as tmp:
            np.save(tmp, maps[..., j])
        write_image(f"{stem}_derived.mha", segmentation[..., j], geometry)
        title = (f"{name} {p}: S-Net {exp.scores[j]:.1f} %, derived {exp.derived[j]:.1f} % "
                 f"(ΔP < {exp.threshold[j]:.1f} pp)")
        plots.heatmap_overlay(window(image_hu), maps[..., j], lung, spacing_yx, f"{stem}_overlay.png", title,
                              segmentation[..., j] > 0)
        summary[p] = {"snet": round(float(exp.scores[j]), 3), "derived": round(float(exp.derived[j]), 3),
                      "threshold": float(exp.threshold[j])}
    return summary


@dataclass
class ScanExplanation:
    """Heat maps of chosen slices of one scan, with what is needed to write them on the scan's own grid."""

    scan_id: str
    names: list[str]  # "L1".."L5" or "slice<k>"
    slice_index: np.ndarray
    slices_hu: np.ndarray  # (N, H, W)
    lungs: np.ndarray  # (N, H, W)
    geometries: list
    explanations: list[SliceExplanation]
    config: HeatmapConfig


def snet_predict(models) -> tuple[Predict, int]:
    """The (ensemble) S-Net as one jittable function of model inputs, and its input size."""
    from sscjax import snet

    if not models.snet_modules:
        raise ConfigError("no S-Net to explain: name a run with --snet")
    predict = ensemble_predict([snet.predict_fn(model) for model, _ in models.snet_modules])
    return predict, models.snet_modules[0][1].data.image_size


def cohort_healthy_pattern(models) -> Path:
    """The healthy-lung texture of the cohort the (first) S-Net was trained on: DATA/patterns/healthy.*."""
    from sscjax.data.cohort import load_cohort

    config = models.snet_modules[0][1]
    cohort = load_cohort(config.data_dir, check_scans=False, check_splits=False)
    if "healthy" not in cohort.pattern_paths:
        raise ConfigError(f"{config.data_dir}: has no patterns/healthy texture for the heat maps; give one with --healthy")
    return cohort.pattern_paths["healthy"]


def read_texture(path: str | Path, pixel_mm: float) -> np.ndarray:
    """A healthy-lung texture file (HU, one slice) in window units at the model's pixel size."""
    from sscjax.data.slices import window
    from sscjax.io import read_image

    pattern = read_image(path)
    return healthy_texture(window(pattern.array[0]), pattern.geometry.spacing[0], pixel_mm)


def saved_threshold(models) -> np.ndarray:
    """The calibrated thresholds of the (first) S-Net run, or the default before any calibration."""
    import json

    if models.snet_runs:
        path = Path(models.snet_runs[0]) / CALIBRATION_DIR / CALIBRATION_FILE
        if path.is_file():
            return np.asarray(json.loads(path.read_text())["thresholds"], np.float64)
    return np.full(len(PATTERNS), DEFAULT_THRESHOLD)


def explain_scan(scan, models, *, slice_index=None, levels_mm=None, healthy: str | Path | None = None,
                 threshold=None, **heatmap_options) -> ScanExplanation:
    """Heat maps of a scan's five cascade slices (or of `slice_index`), for the S-Net (ensemble) of `models`."""
    from sscjax import cascade
    from sscjax.data.slices import resize_slices
    from sscjax.io import scan_id
    from sscjax.lung import lung_mask
    from sscjax.snet import prepare_slices

    predict, size = snet_predict(models)
    if slice_index is None:
        result = cascade.run_cascade(scan, models, levels_mm)
        index, lungs, names = result.slice_index, result.lungs, [f"L{k + 1}" for k in range(len(result.slice_index))]
    else:
        index = np.asarray(slice_index, int)
        bad = index[(index < 0) | (index >= scan.n_slices)]
        if bad.size:
            raise ConfigError(f"{scan.source}: slice index {bad.tolist()} outside 0..{scan.n_slices - 1}")
        lungs, names = lung_mask(scan)[index], [f"slice{k}" for k in index]
    slices_hu = scan.array[index]
    pixel_mm = scan.geometry.spacing[0] * scan.shape[2] / size
    texture = read_texture(healthy or cohort_healthy_pattern(models), pixel_mm)
    cfg = scaled_config(size, **heatmap_options)
    images = prepare_slices(slices_hu, size)[..., 0]
    lungs_model = resize_slices(lungs.astype(np.float32), size, order=0) > 0.5
    threshold = saved_threshold(models) if threshold is None else threshold
    explanations = explain_slices(predict, images, lungs_model, texture, cfg, threshold)
    return ScanExplanation(scan_id(scan.source), names, index, slices_hu, lungs,
                           [scan.geometry.slice_geometry(int(k)) for k in index], explanations, cfg)


def write_scan_explanation(found: ScanExplanation, out_dir: str | Path, patterns: tuple[str, ...] = PATTERNS) -> Path:
    """Write every slice's maps, segmentations and overlays into OUT/<scan_id>/explain/, and explain.json."""
    folder = Path(out_dir) / found.scan_id / "explain"
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)
    summary = {"scan": found.scan_id, "heatmap": vars(found.config), "slices": []}
    for name, k, exp, image, lung, geometry in zip(found.names, found.slice_index, found.explanations,
                                                   found.slices_hu, found.lungs, found.geometries):
        scores = write_explanation(folder, name, exp, image, lung, geometry, patterns)
        summary["slices"].append({"name": name, "slice_index": int(k), "patterns": scores})
    write_json(folder / "explain.json", summary)
    return folder


# ---------------------------------------------------------------- calibration on validation data

CALIBRATION_DIR = "explain"
CALIBRATION_FILE = "calibration.json"


def calibrate_run(run_dir: str | Path, split: str = "valid", healthy: str | Path | None = None,
                  progress: Callable[[int, int], None] | None = None, **heatmap_options) -> tuple[Calibration, Path]:
    """Choose an S-Net run's heat-map thresholds on its validation (or test) level slices; writes
    RUN/explain/calibration.json and the scatter plot of derived against S-Net scores (the paper's Fig. 7)."""

    from sscjax import cascade, plots, runs, snet
    from sscjax.data.cohort import load_cohort
    from sscjax.data.slices import load_slices

    run_dir = Path(run_dir)
    models = cascade.load_models([], [run_dir])
    predict, size = snet_predict(models)
    config = models.snet_modules[0][1]
    ids = runs.read_splits(run_dir).get(split)
    if not ids:
        raise ConfigError(f"{run_dir}: its splits have no {split!r} patients")
    cohort = load_cohort(config.data_dir, check_scans=False, check_splits=False)
    slices = load_slices(cohort, snet.slices_cache(run_dir.parent.parent), image_size=size, neighbours=False, ids=ids)
    pixel_mm = float(np.mean(slices.spacing_yx[:, 1]))
    texture = read_texture(healthy or cohort_healthy_pattern(models), pixel_mm)
    cfg = scaled_config(size, **heatmap_options)
    delta_fn = make_delta_fn(predict, (size, size), cfg)
    scores = np.mean([m.score(slices.images, windowed=True) for m in models.snets], axis=0)
    maps = []
    for i, (image, lung) in enumerate(zip(slices.images, slices.lung)):
        maps.append(heatmaps(predict, image, lung, texture, cfg, delta_fn))
        if progress:
            progress(i + 1, len(slices))
    result = calibrate(np.stack(maps), slices.lung, scores)
    folder = run_dir / CALIBRATION_DIR
    plots.calibration_scatter(result.derived, scores, result.thresholds, result.r2, folder / "calibration.png")
    record = {"split": split, "n_slices": len(slices), "thresholds": result.thresholds.tolist(),
              "mae": result.mae, "r2": result.r2,
              "patterns": list(PATTERNS), "heatmap": vars(cfg)}
    write_json(folder / CALIBRATION_FILE, record)
    return result, folder
