"""The cascade: a scan -> five levels (L-Net, or given by hand) -> nearest original slices -> lung mask -> S-Net
scores (TOT, GG, RET in %) per level, and the outputs users read, with the scan's quality warnings
(`sscjax.quality`) and the provenance of the result (`sscjax.provenance`).

With several trained folds, every fold's L-Net and S-Net runs and the result is the ensemble mean, with the
spread between folds (their standard deviation) as an uncertainty the paper does not give. Each run prepares its
own inputs and reads its own outputs by its config's conventions, so imported networks of the paper's authors and
folds trained here ensemble. A level's slice is the nearest to its world z, as the paper says, for the authors'
networks too (their cascade code truncates).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sscjax import lnet, metrics, plots, provenance, quality, snet
from sscjax.configs import to_dict
from sscjax.data.lnet import PreparedVolume, prepare_volume
from sscjax.data.slices import window
from sscjax.domain import LEVEL_NAMES, N_LEVELS, SCORES
from sscjax.errors import ModelError, ScanError
from sscjax.io import Geometry, Scan, remove_partial_writes, scan_id, write_csv, write_image, write_json
from sscjax.lung import lung_mask
from sscjax.results import RESULT_FILE

LEVEL_CSV = "scores.csv"
BATCH_PROVENANCE = "scores.provenance.json"  # beside OUT/scores.csv
ALL_SLICES_CSV = "all_slices.csv"
MIN_LUNG_PIXELS = 50  # a slice belongs to the lung range when its lung mask has at least this many pixels


@dataclass(frozen=True)
class Models:
    """The trained networks of a cascade: one entry per fold (no L-Nets when levels are given by hand), with the
    provenance of each run ({"lnet": [...], "snet": [...]}), hashed once when the runs are loaded."""

    lnets: list[lnet.LevelModel]
    snets: list[snet.SNet]
    lnet_runs: list[str] = field(default_factory=list)
    records: dict[str, list[dict]] = field(default_factory=lambda: {"lnet": [], "snet": []})

    @property
    def snet_runs(self) -> list[str]:
        """The S-Nets' run folders."""
        return [str(model.run) for model in self.snets]


def load_models(lnet_runs: Sequence[str | Path], snet_runs: Sequence[str | Path]) -> Models:
    """Load every named run (best checkpoints) once, ready to score many scans."""
    snets = [snet.SNet.read(r) for r in snet_runs]  # first: it says best what is wrong with a folder
    records = {"lnet": list(map(provenance.run_record, lnet_runs)), "snet": list(map(provenance.run_record, snet_runs))}
    return Models([lnet.level_model(r) for r in lnet_runs], snets, [str(r) for r in lnet_runs], records)


@dataclass
class CascadeResult:
    """Everything the cascade found for one scan, in the canonical (feet-to-head) slice order."""

    scan_id: str
    source: str
    levels_mm: np.ndarray  # (5,) world z of L1..L5
    levels_spread_mm: np.ndarray  # (5,) SD of the L-Net folds' levels (0 with one fold or hand-picked levels)
    slice_index: np.ndarray  # (5,) nearest slice of the scan
    scores: np.ndarray  # (5, 3) TOT, GG, RET in % (0..100), the ensemble mean
    spread: np.ndarray  # (5, 3) SD between the S-Net folds
    raw: np.ndarray  # (5, 3) the ensemble mean of the networks' unbounded outputs in % (for research)
    slices: np.ndarray  # (5, H, W) HU
    lungs: np.ndarray  # (5, H, W) lung masks
    slice_geometries: list[Geometry]
    models: dict
    all_slices: np.ndarray | None = None  # (n, 5): slice_index, z_mm, TOT, GG, RET over the lung range
    warnings: list[quality.QualityWarning] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)  # versions, device, runs and input checksum (sscjax.provenance)
    dicom: dict | None = None  # the DICOM series' identity (`sscjax.io.DICOM_TAGS`), None for other input

    def to_json(self) -> dict:
        rounded = metrics.round_to_step(self.scores)
        levels = [
            {
                "level": k + 1,
                "z_mm": round(float(self.levels_mm[k]), 3),
                "slice_index": int(self.slice_index[k]),
                **{p: round(float(self.scores[k, j]), 3) for j, p in enumerate(SCORES)},
                **{f"{p}_5": int(rounded[k, j]) for j, p in enumerate(SCORES)},
                "spread": {p: round(float(self.spread[k, j]), 3) for j, p in enumerate(SCORES)},
                "raw": {p: round(float(self.raw[k, j]), 3) for j, p in enumerate(SCORES)},
                "z_spread_mm": round(float(self.levels_spread_mm[k]), 3),
            }
            for k in range(N_LEVELS)
        ]
        mean = {
            **{p: round(float(self.scores[:, j].mean()), 3) for j, p in enumerate(SCORES)},
            **{f"{p}_5": round(float(rounded[:, j].mean()), 3) for j, p in enumerate(SCORES)},
        }
        return {
            "scan": self.scan_id,
            "source": self.source,
            "dicom": self.dicom,
            "levels": levels,
            "mean": mean,
            "warnings": [w.to_json() for w in self.warnings],
            "models": self.models,
            "provenance": self.provenance,
        }


def parse_levels(text: str) -> np.ndarray:
    """'z1,z2,z3,z4,z5' (world mm, L1 highest) -> (5,) array, checked for count, finiteness and anatomical order."""
    try:
        z = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ScanError(f"--levels {text!r}: expected five numbers in mm separated by commas") from None
    if z.shape != (N_LEVELS,):
        raise ScanError(f"--levels {text!r}: expected five numbers in mm (L1..L5), got {z.size}")
    if not np.all(np.isfinite(z)):
        raise ScanError(f"--levels {text!r}: the values must be finite numbers in mm (not nan or inf)")
    if not np.all(np.diff(z) < 0):
        raise ScanError(f"--levels {text!r}: levels must go down the body, L1 > L2 > L3 > L4 > L5 in world z")
    return z


def output_ids(paths: list[Path]) -> dict[str, Path]:
    """The output folder name (scan id) of each scan, decided before any work: two different scans with one id
    (the same name in two folders, or scan.mha beside scan.nii.gz) are refused, since the second's results would
    overwrite the first's. Ids differing only in case count as one (case-insensitive file systems)."""
    seen: dict[str, Path] = {}
    for path in paths:
        first = seen.setdefault(scan_id(path).casefold(), path)
        if first != path:
            raise ScanError(
                f"{first} and {path}: both have the scan id {scan_id(path)!r}, so their results would go "
                "to the same output folder; rename one or score them in separate calls"
            )
    return {scan_id(path): path for path in paths}


def locate_levels(models: Models, scan: Scan) -> np.ndarray:
    """(folds, 5) levels in world mm that every L-Net fold finds."""
    if not models.lnets:
        raise ModelError("no L-Net to find the levels: name a run with --lnet or give --levels")
    prepared: dict[tuple[int, int, int], PreparedVolume] = {}
    levels = []
    for model in models.lnets:
        z, y, x = model.settings.size
        size = (z, y, x)
        prepared.setdefault(size, prepare_volume(scan, size))
        levels.append(lnet.predict_prepared(model, prepared[size], scan.source).levels_mm)
    return np.asarray(levels)


def score_slices(models: Models, slices_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((folds, N, 3) every S-Net fold's scores in % (0..100), (N, 3) the mean of the unbounded outputs) of
    (N, H, W) slices in HU."""
    if not models.snets:
        raise ModelError("no S-Net to score the slices: name a run with --snet")
    raw = np.stack([model.raw(slices_hu) for model in models.snets])
    return snet.bounded_percent(raw), raw.mean(axis=0)


def lung_range(lung: np.ndarray) -> np.ndarray:
    """Indices of the slices between the lowest and the highest one holding lung."""
    rows = np.flatnonzero(lung.reshape(len(lung), -1).sum(axis=1) >= MIN_LUNG_PIXELS)
    return np.arange(rows.min(), rows.max() + 1) if rows.size else rows


def scan_warnings(
    scan: Scan,
    lung: np.ndarray,
    index: np.ndarray,
    fold_levels_mm: np.ndarray,
    fold_scores: np.ndarray,
    raw: np.ndarray,
    limits: quality.QualityLimits,
) -> list[quality.QualityWarning]:
    """The quality warnings of one scan's cascade (`sscjax.quality`) within `limits`, from the scan, its lung mask
    (0/1), the level slices, every fold's levels (F, 5) and bounded scores (F, 5, 3), and the mean raw outputs."""
    lung_ml, lung_hu = quality.lung_stats(scan.array, lung.view(bool), float(np.prod(scan.geometry.spacing)))
    z = scan.z_mm
    facts = quality.ScanFacts(
        fold_levels_mm.mean(axis=0),
        index,
        (float(z[0]), float(z[-1])),
        abs(scan.geometry.z_step),
        lung_ml,
        lung_hu,
        fold_levels_mm,
        fold_scores,
        raw,
    )
    return quality.check_scan(facts, limits)


def run_cascade(
    scan: Scan,
    models: Models,
    levels_mm: np.ndarray | None = None,
    all_slices: bool = False,
    batch: int = 32,
    lung: np.ndarray | None = None,
    limits: quality.QualityLimits = quality.QualityLimits(),
) -> CascadeResult:
    """Levels (found or given), slices, lung masks, scores, quality warnings (within `limits`) and provenance of
    one canonical scan; `lung`: its lung mask on the scan's grid (default: computed, `sscjax.lung.lung_mask`)."""
    lung = lung_mask(scan) if lung is None else lung
    given = levels_mm is not None
    fold_levels = np.asarray(levels_mm, float)[None] if given else locate_levels(models, scan)
    levels_mm = fold_levels.mean(axis=0)
    index = np.asarray(scan.geometry.nearest_slice(levels_mm, scan.n_slices))
    fold_scores, raw = score_slices(models, scan.array[index])
    table = None
    if all_slices:
        rows = lung_range(lung)
        per_slice = (
            np.concatenate(
                [
                    score_slices(models, scan.array[rows[i : i + batch]])[0].mean(axis=0)
                    for i in range(0, len(rows), batch)
                ]
            )
            if rows.size
            else np.zeros((0, 3))
        )
        table = np.column_stack([rows, scan.z_mm[rows], per_slice])
    used = {"levels": "given" if given else "lnet", "lnet": [] if given else models.lnet_runs, "snet": models.snet_runs}
    records = {"lnet": [] if given else models.records["lnet"], "snet": models.records["snet"]}
    return CascadeResult(
        scan_id(scan.source),
        scan.source,
        levels_mm,
        fold_levels.std(axis=0),
        index,
        fold_scores.mean(axis=0),
        fold_scores.std(axis=0),
        raw,
        scan.array[index],
        lung[index],
        [scan.geometry.slice_geometry(int(k)) for k in index],
        used,
        table,
        scan_warnings(scan, lung, index, fold_levels, fold_scores, raw, limits),
        {**provenance.record(scan.source, records), "quality_limits": to_dict(limits)},
        scan.dicom,
    )


def result_done(out_dir: str | Path, sid: str) -> bool:
    """Whether a scan's outputs are complete (its scores.json is written last)."""
    return (Path(out_dir) / sid / RESULT_FILE).is_file()


def write_result(result: CascadeResult, out_dir: str | Path) -> Path:
    """Write a scan's outputs into OUT/<scan_id>/: the level slices (.mha, with geometry), their lung masks,
    a CSV row per level, a montage PNG, the all-slices table and plot if computed, and scores.json (last)."""
    folder = Path(out_dir) / result.scan_id
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)
    rounded = metrics.round_to_step(result.scores)
    for k in range(N_LEVELS):
        write_image(folder / f"{LEVEL_NAMES[k]}.mha", result.slices[k].astype(np.int16), result.slice_geometries[k])
        write_image(folder / f"{LEVEL_NAMES[k]}_lung.mha", result.lungs[k].astype(np.uint8), result.slice_geometries[k])
    write_csv(
        folder / LEVEL_CSV,
        [
            {
                "scan_id": result.scan_id,
                "level": k + 1,
                "z_mm": f"{result.levels_mm[k]:.3f}",
                "slice_index": int(result.slice_index[k]),
                **{p: f"{result.scores[k, j]:.3f}" for j, p in enumerate(SCORES)},
                **{f"{p}_5": int(rounded[k, j]) for j, p in enumerate(SCORES)},
            }
            for k in range(N_LEVELS)
        ],
    )
    spacing = [(g.spacing[1], g.spacing[0]) for g in result.slice_geometries]
    captions = [
        f"{LEVEL_NAMES[k]}  z = {result.levels_mm[k]:.1f} mm (slice {result.slice_index[k]})\n"
        + "  ".join(f"{p} {result.scores[k, j]:.1f}" for j, p in enumerate(SCORES))
        for k in range(N_LEVELS)
    ]
    plots.level_montage(list(window(result.slices)), spacing, captions, folder / "montage.png", result.scan_id)
    if result.all_slices is not None:
        write_csv(
            folder / ALL_SLICES_CSV,
            [
                {"slice_index": int(r[0]), "z_mm": f"{r[1]:.3f}", **{p: f"{v:.3f}" for p, v in zip(SCORES, r[2:])}}
                for r in result.all_slices
            ],
            ["slice_index", "z_mm", *SCORES],
        )
        plots.scores_along_z(
            result.all_slices[:, 1],
            result.all_slices[:, 2:],
            result.levels_mm,
            folder / "all_slices.png",
            f"{result.scan_id}: scores along z",
        )
    write_json(folder / RESULT_FILE, result.to_json())
    return folder


def finished_scans(out_dir: str | Path) -> list[Path]:
    """The folders of the finished scans under OUT (scores.json, written last, beside scores.csv), sorted."""
    return sorted(p.parent for p in Path(out_dir).glob(f"*/{RESULT_FILE}") if (p.parent / LEVEL_CSV).is_file())


def batch_provenance(folders: list[Path], batch: dict) -> dict:
    """The provenance of OUT/scores.csv: `batch` (versions, device, runs) and per scan id its input record; a scan
    whose result other versions, device or runs made (an earlier call into OUT) keeps its own under `provenance`.
    The warnings' limits are left out: they change no score in the CSV (each scores.json keeps its own)."""
    scans = {}
    for folder in folders:
        made = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8")).get("provenance") or {}
        own = {key: value for key, value in made.items() if key not in ("input", "quality_limits")}
        scans[folder.name] = {"input": made.get("input"), **({} if own == batch else {"provenance": own or None})}
    return {**batch, "scans": scans}


def collect_scores(out_dir: str | Path, runs: dict[str, list[dict]]) -> Path:
    """Gather every finished scan's per-level CSV under OUT into OUT/scores.csv (input for `ssc evaluate --pred`),
    and write beside it its provenance, OUT/scores.provenance.json, with `runs` (`Models.records`) of this call."""
    out_dir = Path(out_dir)
    remove_partial_writes(out_dir)
    folders = finished_scans(out_dir)
    rows: list[dict[str, str]] = []
    for folder in folders:
        with open(folder / LEVEL_CSV, newline="") as f:
            rows.extend(csv.DictReader(f))
    write_json(out_dir / BATCH_PROVENANCE, batch_provenance(folders, provenance.batch_record(runs)))
    return write_csv(out_dir / LEVEL_CSV, rows, None if rows else ["scan_id", "level", *SCORES])
