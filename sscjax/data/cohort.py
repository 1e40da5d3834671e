"""The cohort (dataset) folder: scans, five Goh levels per scan, their scores; loading and validation.

Layout (docs/cohort_format.md): `scans/<id>.<ext>` or `scans/<id>/` (DICOM), `levels.csv`
(scan_id,L1..L5: world z in mm), `scores.csv` (scan_id,level,TOT,GG,RET in %), optional
`lung_masks/<id>.<ext>`, `patterns/{gg,ret,healthy}.<ext>`, `splits.json`. Other files are ignored.
Validation collects every problem (file, line, what) before raising one CohortError.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sscjax.data.splits import (
    DEFAULT_FOLDS,
    DEFAULT_TEST_FRACTION,
    SPLITS_FILE,
    Splits,
    load_splits_file,
    make_splits,
    read_splits,
    splits_problems,
    write_splits,
)
from sscjax.domain import LEVEL_NAMES, LEVELS, PATTERNS, SCORES
from sscjax.errors import CohortError, ScanError
from sscjax.io import SCAN_EXTENSIONS, Geometry, atomic_write, extension_of, read_geometry, read_scan, scan_id

LEVELS_FILE = "levels.csv"
SCORES_FILE = "scores.csv"
SCANS_DIR = "scans"
MASKS_DIR = "lung_masks"
PATTERNS_DIR = "patterns"
LEVELS_HEADER = ("scan_id", *LEVEL_NAMES)
SCORES_HEADER = ("scan_id", "level", *SCORES)
# Scans are volumes: a single .dcm file is one slice, so DICOM series live in folders.
VOLUME_EXTENSIONS = tuple(ext for ext in SCAN_EXTENSIONS if ext != ".dcm")
# Scores are % in 5 % steps; this slack only absorbs float rounding in the TOT check.
SCORE_EPS = 1e-6
# Scan and mask geometries may differ this much (mm, and in direction cosines) from float storage.
GEOMETRY_TOL = 1e-2

Progress = Callable[[int, int], None]
ScanHeader = tuple[Geometry, tuple[int, int, int]]


@dataclass(frozen=True, eq=False)
class LevelRow:
    """One scored level of one scan: its world z (mm) and (TOT, GG, RET) in %."""

    scan_id: str
    level: int
    z_mm: float
    scores: np.ndarray


@dataclass
class Cohort:
    """A validated cohort: sorted ids, their scans, five level positions and (5, 3) scores each."""

    root: Path
    ids: list[str]
    scan_paths: dict[str, Path]
    levels_mm: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    lung_mask_paths: dict[str, Path] = field(default_factory=dict)
    pattern_paths: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scan_headers: dict[str, ScanHeader] = field(default_factory=dict)
    splits: Splits | None = None

    def level_rows(self, ids: Iterable[str] | None = None) -> list[LevelRow]:
        """One row per (scan, level), scans in the given order (default: all, sorted), levels 1..5."""
        return [
            LevelRow(i, level, float(self.levels_mm[i][level - 1]), self.scores[i][level - 1])
            for i in (self.ids if ids is None else ids)
            for level in LEVELS
        ]

    def fingerprint(self) -> str:
        """A hash of the CSVs, splits.json and the names, sizes and modification times of the files under
        scans/, lung_masks/ and patterns/: it changes whenever the cohort's data may have changed."""
        digest = hashlib.sha256()
        for name in (LEVELS_FILE, SCORES_FILE, SPLITS_FILE):
            path = self.root / name
            digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
        for folder in (SCANS_DIR, MASKS_DIR, PATTERNS_DIR):
            for path in _files_under(self.root / folder):
                stat = path.stat()
                name = path.relative_to(self.root).as_posix()
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def _files_under(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder` (following a linked top folder), sorted; none if it is absent."""
    if not folder.is_dir():
        return []
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / f for f in sorted(files) if not f.startswith(".")]
    return [p for p in found if p.exists()]


def _number(text: str) -> float | None:
    """The finite float in `text`, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _row_numbers(row: dict[str, str], columns: tuple[str, ...], where: str, problems: list[str]) -> list[float] | None:
    """The row's values in `columns` as floats, or None after recording which ones are not numbers."""
    values = [_number(row[c]) for c in columns]
    bad = [f"{c} = {row[c]!r}" for c, v in zip(columns, values) if v is None]
    if bad:
        problems.append(f"{where}: not a number: {', '.join(bad)}")
        return None
    return [v for v in values if v is not None]


def _read_table(
    path: Path, header: tuple[str, ...], problems: list[str], warnings: list[str]
) -> list[tuple[int, dict[str, str]]] | None:
    """The data rows of a CSV as (line number, {column: stripped text}); None if it cannot be used at all."""
    if not path.is_file():
        problems.append(f"{path}: missing (a CSV with columns {','.join(header)})")
        return None
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        reader = csv.reader(lines)
        columns = [c.strip() for c in next(reader, [])]
        rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except (UnicodeDecodeError, csv.Error) as e:
        problems.append(f"{path}: not a readable CSV ({e})")
        return None
    missing = [c for c in header if c not in columns]
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
    if missing or repeated:
        what = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"repeated column(s) {', '.join(repeated)}"] if repeated else []
        )
        problems.append(f"{path} line 1: {'; '.join(what)} (expected header {','.join(header)})")
        return None
    extra = [c for c in columns if c not in header]
    if extra:
        warnings.append(f"{path} line 1: extra column(s) ignored: {', '.join(extra)}")
    table = []
    for line, cells in rows:
        if len(cells) != len(columns):
            problems.append(f"{path} line {line}: {len(cells)} values where the header has {len(columns)}")
        else:
            table.append((line, {c: v.strip() for c, v in zip(columns, cells)}))
    return table


def _parse_levels(
    path: Path, rows: list[tuple[int, dict[str, str]]], problems: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """levels.csv rows -> ({id: five world z in mm}, {id: line})."""
    levels: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    for line, row in rows:
        sid = row["scan_id"]
        if not sid:
            problems.append(f"{path} line {line}: empty scan_id")
            continue
        if sid in lines:
            problems.append(f"{path} line {line}: scan_id '{sid}' repeats line {lines[sid]}")
            continue
        lines[sid] = line
        values = _row_numbers(row, LEVEL_NAMES, f"{path} line {line}", problems)
        if values is None:
            continue
        z = np.asarray(values, dtype=np.float64)
        unordered = [
            f"L{k + 1} = {z[k]:g} is not above L{k + 2} = {z[k + 1]:g}"
            for k in range(len(LEVELS) - 1)
            if not z[k] > z[k + 1]
        ]
        if unordered:
            problems.append(
                f"{path} line {line}: levels out of anatomical order ({'; '.join(unordered)}); "
                "world z (mm, +z toward the head) must fall strictly from L1 to L5"
            )
        levels[sid] = z
    return levels, lines


def _parse_scores(
    path: Path, rows: list[tuple[int, dict[str, str]]], problems: list[str], warnings: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """scores.csv rows -> ({id: (5, 3) TOT, GG, RET per level 1..5}, {id: first line})."""
    scores: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    for line, row in rows:
        sid = row["scan_id"]
        if not sid:
            problems.append(f"{path} line {line}: empty scan_id")
            continue
        first_line.setdefault(sid, line)
        level = _number(row["level"])
        if level not in LEVELS:
            problems.append(f"{path} line {line}: level {row['level']!r} is not one of 1, 2, 3, 4, 5")
            continue
        key = (sid, int(level))
        if key in seen:
            problems.append(f"{path} line {line}: scan '{sid}' level {key[1]} repeats line {seen[key]}")
            continue
        seen[key] = line
        values = _row_numbers(row, SCORES, f"{path} line {line}", problems)
        if values is None:
            continue
        outside = [f"{c} = {v:g}" for c, v in zip(SCORES, values) if not 0 <= v <= 100]
        if outside:
            problems.append(f"{path} line {line}: score(s) outside 0..100 %: {', '.join(outside)}")
            continue
        tot, gg, ret = values
        if tot < max(gg, ret) - SCORE_EPS or tot > gg + ret + SCORE_EPS:
            warnings.append(
                f"{path} line {line}: TOT = {tot:g} lies outside [max(GG, RET), GG + RET] = "
                f"[{max(gg, ret):g}, {gg + ret:g}] (TOT is the union of GG and RET)"
            )
        scores.setdefault(sid, np.full((len(LEVELS), len(SCORES)), np.nan))[key[1] - 1] = values
    for sid, line in first_line.items():
        lacking = [str(n) for n in LEVELS if (sid, n) not in seen]
        if lacking:
            problems.append(
                f"{path} line {line}: scan '{sid}' lacks level(s) {', '.join(lacking)} "
                "(every scan needs one row for each level 1..5)"
            )
    return scores, first_line


def _entries(
    folder: Path,
    names: Iterable[str] | None,
    allow_dirs: bool,
    problems: list[str],
    extensions: tuple[str, ...] = VOLUME_EXTENSIONS,
) -> dict[str, Path]:
    """{id: path} of the image files (and DICOM folders if `allow_dirs`) in `folder`, restricted to `names`
    if given; broken links and two files for one id (the first is kept) are problems, other entries ignored."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink() and not path.exists():
            problems.append(f"{path}: broken link (to {os.readlink(path)})")
            continue
        is_image = path.is_file() and extension_of(path) in extensions
        if is_image or (allow_dirs and path.is_dir()):
            found.setdefault(scan_id(path) if is_image else path.name, []).append(path)
    if names is not None:
        names = set(names)
        found = {k: v for k, v in found.items() if k in names}
    for key, paths in found.items():
        if len(paths) > 1:
            problems.append(
                f"{folder}: {len(paths)} files for id '{key}': {', '.join(p.name for p in paths)} (keep one)"
            )
    return {key: paths[0] for key, paths in found.items()}


def _scan_entries(folder: Path, problems: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        problems.append(f"{folder}: missing (the folder of scans: <id>.mha/.nii.gz/... files or <id>/ DICOM folders)")
        return {}
    problems += [
        f"{p}: a single DICOM file is one slice, not a scan; put each series in its own folder {folder.name}/<id>/"
        for p in sorted(folder.iterdir())
        if p.is_file() and extension_of(p) == ".dcm"
    ]
    return _entries(folder, None, True, problems)


def _cross_check_ids(
    root: Path,
    level_lines: dict[str, int],
    score_lines: dict[str, int],
    scan_paths: dict[str, Path],
    problems: list[str],
) -> None:
    """Every id needs a levels.csv row, scores.csv rows and a scan."""
    levels, scores, scans = root / LEVELS_FILE, root / SCORES_FILE, root / SCANS_DIR
    for sid in sorted(level_lines.keys() - score_lines.keys()):
        problems.append(f"{scores}: no rows for scan '{sid}' (it is in {LEVELS_FILE} line {level_lines[sid]})")
    for sid in sorted(score_lines.keys() - level_lines.keys()):
        problems.append(f"{levels}: no row for scan '{sid}' (it is in {SCORES_FILE} line {score_lines[sid]})")
    for sid in sorted((level_lines.keys() | score_lines.keys()) - scan_paths.keys()):
        where = (
            f"{LEVELS_FILE} line {level_lines[sid]}" if sid in level_lines else f"{SCORES_FILE} line {score_lines[sid]}"
        )
        problems.append(f"{scans}: no scan for '{sid}' (listed in {where})")
    for sid in sorted(scan_paths.keys() - level_lines.keys() - score_lines.keys()):
        problems.append(f"{scan_paths[sid]}: no rows for this scan in {LEVELS_FILE} or {SCORES_FILE}")


def _header(path: Path, problems: list[str], whole_scan: bool = False) -> ScanHeader | None:
    """The canonical (geometry, shape) of an image, or None after recording why it is unusable; `whole_scan`
    reads and checks every voxel of a CT as the commands that use it do (`read_scan`), not just the header."""
    try:
        if whole_scan:
            scan = read_scan(path)
            return scan.geometry, scan.shape
        return read_geometry(path)
    except ScanError as e:
        problems.append(str(e))
        return None


def _in_scan(geometry: Geometry, z: float, n_slices: int) -> bool:
    """Whether world z has a nearest slice in the scan (at most half a slice beyond the first or last)."""
    try:
        geometry.nearest_slice(z, n_slices)
    except ScanError:
        return False
    return True


def _check_scans(
    scan_paths: dict[str, Path],
    levels: dict[str, np.ndarray],
    level_lines: dict[str, int],
    levels_path: Path,
    problems: list[str],
    progress: Progress | None,
) -> dict[str, ScanHeader]:
    """Read and check every scan whole; levels must lie within half a slice of the scan's first/last slice."""
    headers = {}
    for done, (sid, path) in enumerate(sorted(scan_paths.items()), 1):
        header = _header(path, problems, whole_scan=True)
        if progress is not None:
            progress(done, len(scan_paths))
        if header is None:
            continue
        geometry, shape = header
        headers[sid] = header
        if sid not in levels:
            continue
        outside = [f"L{n} = {z:g} mm" for n, z in zip(LEVELS, levels[sid]) if not _in_scan(geometry, z, shape[0])]
        if outside:
            lo, hi = sorted(float(geometry.z_of_index(i)) for i in (0, shape[0] - 1))
            problems.append(
                f"{levels_path} line {level_lines[sid]}: {', '.join(outside)} outside the scan {path} "
                f"(its slices span {lo:.2f} .. {hi:.2f} mm)"
            )
    return headers


def geometry_differences(a: ScanHeader, b: ScanHeader, tol: float = GEOMETRY_TOL) -> list[str]:
    """How two (geometry, shape) headers differ: shape, spacing, origin, direction; [] if they match."""
    (ga, sa), (gb, sb) = a, b
    found = [] if tuple(sa) == tuple(sb) else [f"shape (z, y, x) {tuple(sa)} vs {tuple(sb)}"]
    for name in ("spacing", "origin", "direction"):
        va, vb = np.asarray(getattr(ga, name)), np.asarray(getattr(gb, name))
        if not np.allclose(va, vb, rtol=0, atol=tol):
            found.append(f"{name} {np.round(va, 3).tolist()} vs {np.round(vb, 3).tolist()}")
    return found


def _masks(
    root: Path,
    scan_paths: dict[str, Path],
    headers: dict[str, ScanHeader],
    check: bool,
    problems: list[str],
    warnings: list[str],
) -> dict[str, Path]:
    """{id: lung mask path}; each mask must share its scan's geometry (checked when scans are opened)."""
    folder = root / MASKS_DIR
    if not folder.is_dir():
        return {}
    masks = _entries(folder, None, False, problems)
    for sid in sorted(masks.keys() - scan_paths.keys()):
        warnings.append(f"{masks.pop(sid)}: no scan '{sid}' in {SCANS_DIR}/; mask ignored")
    for sid, path in masks.items():
        if not check or sid not in headers:
            continue
        header = _header(path, problems)
        differences = geometry_differences(header, headers[sid]) if header else []
        if differences:
            problems.append(f"{path}: geometry differs from its scan {scan_paths[sid]}: {'; '.join(differences)}")
    return masks


def _patterns(root: Path, require: bool, check: bool, problems: list[str]) -> dict[str, Path]:
    """{name: path} of the texture patches gg, ret, healthy (one-slice images)."""
    folder = root / PATTERNS_DIR
    patterns = _entries(folder, PATTERNS, False, problems, SCAN_EXTENSIONS) if folder.is_dir() else {}
    missing = [name for name in PATTERNS if name not in patterns]
    if require and missing:
        problems.append(
            f"{folder}: missing pattern(s) {', '.join(missing)} (files {PATTERNS_DIR}/<name>.mha etc., "
            "2D texture patches in HU stored as one-slice images)"
        )
    for path in patterns.values() if check else ():
        header = _header(path, problems)
        if header is not None and header[1][0] != 1:
            problems.append(f"{path}: has {header[1][0]} slices; a pattern is one 2D slice")
    return patterns


def load_cohort(
    root: str | Path,
    check_scans: bool = True,
    require_patterns: bool = False,
    check_splits: bool = True,
    progress: Progress | None = None,
) -> Cohort:
    """Load and validate a cohort folder; raise CohortError listing every problem found.

    check_scans: read each scan whole (geometry and values checked as every command checks them, `read_scan`),
    and each mask's and pattern's header, to check readability, that the levels lie in the scan and that masks
    share its geometry; False checks only the CSVs and file names (fast).
    require_patterns: the gg/ret/healthy texture patches (needed for data synthesis) must be present.
    check_splits: an existing splits.json must split exactly the cohort's ids.
    progress(done, total) is called after each scan is read.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError([f"{root}: no such cohort folder"])
    problems: list[str] = []
    warnings: list[str] = []
    levels_path, scores_path = root / LEVELS_FILE, root / SCORES_FILE
    level_table = _read_table(levels_path, LEVELS_HEADER, problems, warnings)
    score_table = _read_table(scores_path, SCORES_HEADER, problems, warnings)
    levels, level_lines = _parse_levels(levels_path, level_table or [], problems)
    scores, score_lines = _parse_scores(scores_path, score_table or [], problems, warnings)
    scan_paths = _scan_entries(root / SCANS_DIR, problems)
    if level_table is not None and score_table is not None:
        _cross_check_ids(root, level_lines, score_lines, scan_paths, problems)
    headers = _check_scans(scan_paths, levels, level_lines, levels_path, problems, progress) if check_scans else {}
    masks = _masks(root, scan_paths, headers, check_scans, problems, warnings)
    patterns = _patterns(root, require_patterns, check_scans, problems)
    ids = sorted(level_lines.keys() | score_lines.keys() | scan_paths.keys())
    if not ids and not problems:
        problems.append(f"{root}: the cohort has no patients (no scans and no CSV rows)")
    splits = None
    if check_splits and (root / SPLITS_FILE).exists():
        splits, split_problems = load_splits_file(root / SPLITS_FILE)
        problems += splits_problems(splits, ids, str(root / SPLITS_FILE)) if splits else split_problems
    if problems:
        raise CohortError(problems)
    return Cohort(root, ids, scan_paths, levels, scores, masks, patterns, warnings, headers, splits)


def ensure_splits(
    cohort: Cohort,
    n_folds: int | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    n_test: int | None = None,
) -> Splits:
    """The cohort's splits: read splits.json if present, else make them and write splits.json, so that every
    training run on the cohort uses the same test set and folds. `n_folds` None means the file's (or 4)."""
    path = Path(cohort.root) / SPLITS_FILE
    if path.exists():
        splits = read_splits(cohort.root, cohort.ids)
        if n_folds is not None and n_folds != splits.n_folds:
            raise CohortError(
                [
                    f"{path}: holds {splits.n_folds} folds but {n_folds} were asked for "
                    "(make new splits with `ssc data split --force`, or ask for the file's folds)"
                ]
            )
        return splits
    splits = make_splits(cohort.ids, n_folds or DEFAULT_FOLDS, test_fraction, n_test, seed)
    write_splits(cohort.root, splits)
    return splits


def fold_split(data_dir: str | Path, fold: int) -> tuple[Cohort, list[str], list[str], dict]:
    """(cohort, training ids, validation ids, the record for the run's splits.json) of one fold; the cohort's
    splits.json is made if it has none, so every run on the cohort uses the same test set and folds."""
    cohort = load_cohort(data_dir, check_scans=False)
    splits = ensure_splits(cohort)
    train_ids, valid_ids = splits.fold(fold)
    record = {
        "fold": fold,
        "n_folds": splits.n_folds,
        "seed": splits.seed,
        "train": train_ids,
        "valid": valid_ids,
        "test": list(splits.test),
    }
    return cohort, train_ids, valid_ids, record


def n_folds(data_dir: str | Path) -> int:
    """The number of cross-validation folds of a cohort (its splits.json, made if missing)."""
    return ensure_splits(load_cohort(data_dir, check_scans=False)).n_folds


def _format_number(value: float) -> str:
    """The shortest text that reads back as the same float (5.0 -> '5', -512.4 -> '-512.4')."""
    return np.format_float_positional(float(value), trim="-")


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> Path:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_levels_csv(path: str | Path, levels_mm: dict[str, np.ndarray]) -> Path:
    """Write levels.csv (scan_id,L1..L5 in world z mm), ids sorted, atomically."""
    rows = [[sid, *map(_format_number, levels_mm[sid])] for sid in sorted(levels_mm)]
    return _write_csv(Path(path), LEVELS_HEADER, rows)


def write_scores_csv(path: str | Path, scores: dict[str, np.ndarray]) -> Path:
    """Write scores.csv (scan_id,level,TOT,GG,RET) from {id: (5, 3) scores}, atomically."""
    rows = [
        [sid, str(level), *map(_format_number, scores[sid][level - 1])] for sid in sorted(scores) for level in LEVELS
    ]
    return _write_csv(Path(path), SCORES_HEADER, rows)


# Histogram bins of the cohort summary: exactly 0, then (0, 10], (10, 20], ... (90, 100] %.
HISTOGRAM_BINS = ("0", *(f"{lo}-{lo + 10}" for lo in range(0, 100, 10)))


def score_histogram(values: np.ndarray) -> list[int]:
    """Counts of scores (%) in HISTOGRAM_BINS: healthy (0) apart, then 10 % groups."""
    groups = np.where(values <= 0, 0, np.clip(np.ceil(values / 10.0), 1, 10)).astype(int)
    return np.bincount(groups.ravel(), minlength=len(HISTOGRAM_BINS)).tolist()


def _range(values: np.ndarray) -> dict:
    """Minimum and maximum over the first axis (numbers for 1D input, lists for 2D)."""
    return {"min": values.min(axis=0).round(4).tolist(), "max": values.max(axis=0).round(4).tolist()}


def cohort_summary(cohort: Cohort) -> dict:
    """What a researcher wants to know first about a cohort: sizes, score distributions, per-level means and
    medians, share of healthy levels, scan shapes and spacings (if headers were read), splits, warnings."""
    scores = np.stack([cohort.scores[i] for i in cohort.ids])  # (patients, 5 levels, 3 patterns)
    levels = np.stack([cohort.levels_mm[i] for i in cohort.ids])
    summary = {
        "root": str(cohort.root),
        "patients": len(cohort.ids),
        "levels_scored": int(scores.shape[0] * scores.shape[1]),
        "healthy_share": float(np.mean(scores[..., 0] == 0)),
        "histogram_bins": list(HISTOGRAM_BINS),
        "histograms": {name: score_histogram(scores[..., p]) for p, name in enumerate(SCORES)},
        "mean_per_level": dict(zip(SCORES, scores.mean(axis=0).T.round(2).tolist())),
        "median_per_level": dict(zip(SCORES, np.median(scores, axis=0).T.round(2).tolist())),
        "l1_to_l5_mm": _range(levels[:, 0] - levels[:, -1]),
        "lung_masks": len(cohort.lung_mask_paths),
        "patterns": sorted(cohort.pattern_paths),
        "scans": None,
        "splits": None,
        "warnings": list(cohort.warnings),
        "fingerprint": cohort.fingerprint(),
    }
    if cohort.scan_headers:
        headers = [cohort.scan_headers[i] for i in cohort.ids]
        summary["scans"] = {
            "shape_zyx": _range(np.array([shape for _, shape in headers])),
            "spacing_xyz_mm": _range(np.array([g.spacing for g, _ in headers])),
        }
    if cohort.splits is not None:
        summary["splits"] = {
            "seed": cohort.splits.seed,
            "test": len(cohort.splits.test),
            "folds": [len(f) for f in cohort.splits.folds],
        }
    return summary
