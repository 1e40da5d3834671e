"""Import the original study's Goh-score spreadsheet (GohScores.xlsx) and its scans as a cohort folder.

The sheet has one row per patient: `PatID`, `L1_pos`..`L5_pos` (level positions), and per level n
`L{n}_disext` (TOT), `L{n}_gg` (GG), `L{n}_retp` (RET) in %. In the original code (Jia et al. 2024,
github.com/Jingnan-Jia/ssc_scoring_auto, mymodules/mydata.py and mytrans.py) the positions are world
z in mm (its loader turns them into slice indices by (pos - origin_z) / spacing_z), so `positions="mm"`
is the default; `positions="index"` reads them as slice indices, 0 = the lowest (most caudal) slice, and
converts them through the scan's geometry. The user's scans are never modified: the cohort links to them
(relative symlinks) or holds copies.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sscjax.data.cohort import (
    LEVELS_FILE,
    SCANS_DIR,
    SCORES_FILE,
    VOLUME_EXTENSIONS,
    Cohort,
    Progress,
    load_cohort,
    write_levels_csv,
    write_scores_csv,
)
from sscjax.domain import LEVELS
from sscjax.errors import CohortError, SscError
from sscjax.io import atomic_write, extension_of, is_dicom_folder, read_geometry, scan_id

POSITION_UNITS = ("mm", "index")
# spreadsheet column suffix -> score (TOT, GG, RET order)
SCORE_SUFFIXES = ("disext", "gg", "retp")
GOH_COLUMNS = ("PatID", *(f"L{n}_{what}" for n in LEVELS for what in ("pos", *SCORE_SUFFIXES)))


@dataclass(frozen=True, eq=False)
class GohRow:
    """One patient of the spreadsheet: its sheet row, PatID, five positions and (5, 3) TOT, GG, RET."""

    row: int
    pat_id: str
    positions: np.ndarray
    scores: np.ndarray


@dataclass
class GohImport:
    """What `import_goh` wrote: the cohort folder, its ids, and what was left out or is still wrong."""

    out_dir: Path
    ids: list[str]
    skipped: list[str] = field(default_factory=list)
    unused_scans: list[Path] = field(default_factory=list)
    cohort: Cohort | None = None
    problems: list[str] = field(default_factory=list)


def _cell_text(value: object) -> str:
    """A cell as text; whole floats (Excel stores 12 as 12.0) lose their '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _cell_number(value: Any) -> float | None:
    """The finite number in a cell (a number, or text holding one), or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _sheet_rows(path: Path, sheet: str | None) -> list[tuple]:
    """The cell values of a workbook's sheet (the first unless `sheet`), row by row; SscError if unreadable."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except FileNotFoundError:
        raise SscError(f"{path}: no such file") from None
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError) as e:
        raise SscError(f"{path}: not a readable .xlsx workbook ({e})") from None
    try:
        if sheet is not None and sheet not in book.sheetnames:
            raise SscError(f"{path}: no sheet '{sheet}' (sheets: {', '.join(book.sheetnames)})")
        return list((book[sheet] if sheet else book.worksheets[0]).iter_rows(values_only=True))
    finally:
        book.close()


def _goh_row(where: str, number: int, pat_id: str, cells: list, column: dict[str, int]) -> GohRow:
    """One patient's row of numbers; ValueError naming the cells that are not numbers."""
    values = {name: _cell_number(cells[column[name]]) for name in GOH_COLUMNS[1:]}
    bad = [
        f"{name} = {_cell_text(cells[column[name]]) or 'empty'!r}" for name in GOH_COLUMNS[1:] if values[name] is None
    ]
    if bad:
        raise ValueError(f"{where} row {number}: not a number: {', '.join(bad)}")
    positions = np.array([values[f"L{n}_pos"] for n in LEVELS])
    scores = np.array([[values[f"L{n}_{s}"] for s in SCORE_SUFFIXES] for n in LEVELS])
    return GohRow(number, pat_id, positions, scores)


def read_goh_sheet(path: str | Path, sheet: str | None = None) -> list[GohRow]:
    """The patients of a Goh-score spreadsheet (first sheet unless `sheet`); SscError/CohortError if unusable."""
    path = Path(path)
    rows = _sheet_rows(path, sheet)
    if not rows:
        raise SscError(f"{path}: the sheet is empty")
    header = {_cell_text(name).lower(): k for k, name in enumerate(rows[0]) if _cell_text(name)}
    missing = [c for c in GOH_COLUMNS if c.lower() not in header]
    if missing:
        raise SscError(f"{path} row 1: missing column(s) {', '.join(missing)}")
    column = {c: header[c.lower()] for c in GOH_COLUMNS}
    patients: list[GohRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        cells = [*row, *[None] * (len(rows[0]) - len(row))]
        if all(_cell_text(c) == "" for c in cells):
            continue
        pat_id = _cell_text(cells[column["PatID"]])
        if not pat_id:
            problems.append(f"{path} row {number}: empty PatID")
            continue
        key = patient_key(pat_id)
        if key in seen:
            problems.append(f"{path} row {number}: PatID {pat_id} is the patient of row {seen[key]} again")
            continue
        seen[key] = number
        try:
            patients.append(_goh_row(str(path), number, pat_id, cells, column))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise CohortError(problems)
    return patients


def patient_key(name: str) -> str:
    """A name's patient number when it is one ('12', '012', 'Pat_012', 'patient-12' -> '12'), else the
    lower-cased name: how spreadsheet PatIDs are matched to scan names."""
    match = re.fullmatch(r"(?:pat(?:ient)?[ _-]?)?0*(\d+)", name.strip(), flags=re.IGNORECASE)
    return str(int(match.group(1))) if match else name.strip().lower()


def _scan_in(folder: Path) -> Path | None:
    """The scan a sub-folder holds: itself if a DICOM series, else its only volume file (e.g. Pat_012/CTimage.mha)."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and extension_of(p) in VOLUME_EXTENSIONS]
    if len(files) == 1:
        return files[0]
    return folder if not files and is_dicom_folder(folder) else None


def find_patient_scans(scans_dir: str | Path) -> dict[str, tuple[str, Path]]:
    """{patient key: (scan id, scan path)} of the scans in a folder: volume files `<id>.<ext>`, DICOM folders
    `<id>/`, or folders `<id>/` with one volume file inside (the original study's Pat_XXX/CTimage.mha)."""
    scans_dir = Path(scans_dir)
    if not scans_dir.is_dir():
        raise SscError(f"{scans_dir}: no such folder of scans")
    found: dict[str, list[tuple[str, Path]]] = {}
    for entry in sorted(p for p in scans_dir.iterdir() if not p.name.startswith(".")):
        if entry.is_file() and extension_of(entry) in VOLUME_EXTENSIONS:
            sid, path = scan_id(entry), entry
        elif entry.is_dir() and (inner := _scan_in(entry)) is not None:
            sid, path = entry.name, inner
        else:
            continue
        found.setdefault(patient_key(sid), []).append((sid, path))
    clashes = [
        f"{scans_dir}: several scans for patient {key}: {', '.join(str(p) for _, p in hits)}"
        for key, hits in found.items()
        if len(hits) > 1
    ]
    if clashes:
        raise CohortError(clashes)
    return {key: hits[0] for key, hits in found.items()}


MHD_DATA_FILE = re.compile(r"^(\s*ElementDataFile\s*=\s*)(.+?)\s*$", flags=re.MULTILINE)


def _place_mhd(source: Path, target: Path, copy: bool) -> None:
    """A .mhd header in the cohort whose data file is the source's (linked by a relative path, or copied)."""
    text = source.read_text(encoding="utf-8", errors="surrogateescape")
    match = MHD_DATA_FILE.search(text)
    data_file = match.group(2) if match else None
    if data_file is None or data_file == "LOCAL":
        _place(source, target, copy)
        return
    assert match is not None  # data_file came from it
    if data_file.startswith("LIST") or "%" in data_file:
        raise SscError(f"{source}: .mhd with a list of data files is not supported; convert it to .mha or .nii.gz")
    data = source.parent / data_file
    if not data.is_file():
        raise SscError(f"{source}: its data file {data} is missing")
    if copy:
        new_data = target.with_name(target.name[: -len(".mhd")] + data.suffix)
        shutil.copy2(data, new_data)
        reference = new_data.name
    else:
        reference = os.path.relpath(data, target.parent)
    with atomic_write(target) as tmp:
        tmp.write_text(
            text[: match.start(2)] + reference + text[match.end(2) :], encoding="utf-8", errors="surrogateescape"
        )


def _place(source: Path, target: Path, copy: bool) -> None:
    """Put a scan file or DICOM folder at `target`: a relative symlink, or a copy."""
    if not copy:
        target.symlink_to(os.path.relpath(source, target.parent), target_is_directory=source.is_dir())
    elif source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def _world_z(positions: np.ndarray, unit: str, scan: Path) -> np.ndarray:
    if unit == "mm":
        return positions
    geometry, _ = read_geometry(scan)
    return np.asarray(geometry.z_of_index(positions), dtype=np.float64)


def _check_destination(positions: str, out_dir: Path) -> None:
    """SscError for an unknown position unit or an output folder that holds something: an import never mixes
    with earlier files."""
    if positions not in POSITION_UNITS:
        raise SscError(f"positions '{positions}' must be one of {', '.join(POSITION_UNITS)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SscError(f"{out_dir}: exists and is not an empty folder; choose a new output folder")


def _match_scans(
    patients: list[GohRow],
    scans: dict[str, tuple[str, Path]],
    xlsx: str | Path,
    scans_dir: str | Path,
    skip_missing: bool,
) -> tuple[list[tuple[GohRow, str, Path]], list[GohRow]]:
    """(patient, scan id, scan path) of the patients with a scan, and the patients without one: an error unless
    `skip_missing`, and always an error when no patient has a scan."""
    matched = [(p, *scans[patient_key(p.pat_id)]) for p in patients if patient_key(p.pat_id) in scans]
    skipped = [p for p in patients if patient_key(p.pat_id) not in scans]
    if skipped and not skip_missing:
        raise CohortError([f"{xlsx} row {p.row}: no scan for PatID {p.pat_id} in {scans_dir}" for p in skipped])
    if not matched:
        raise SscError(f"{scans_dir}: none of the spreadsheet's patients has a scan here")
    return matched, skipped


def _place_scans(matched: list[tuple[GohRow, str, Path]], scan_folder: Path, copy: bool) -> None:
    """Each matched scan linked (or, with `copy`, copied) into the cohort's scan folder as `<id><ext>`."""
    scan_folder.mkdir(parents=True, exist_ok=True)
    scan_folder = scan_folder.resolve()  # relative links must be computed between real locations
    for _, sid, path in matched:
        ext = "" if path.is_dir() else extension_of(path)
        place = _place_mhd if ext == ".mhd" else _place
        place(path.resolve(), scan_folder / f"{sid}{ext}", copy)


def import_goh(
    xlsx: str | Path,
    scans_dir: str | Path,
    out_dir: str | Path,
    positions: str = "mm",
    copy: bool = False,
    skip_missing: bool = False,
    sheet: str | None = None,
    progress: Progress | None = None,
) -> GohImport:
    """Write a cohort folder from a Goh-score spreadsheet and a folder of scans, then validate it.

    Patients are matched to scans by number (PatID 12 <-> '12', '012', 'Pat_012'); the cohort uses the
    scans' names as ids. Patients without a scan are an error unless `skip_missing`. Everything is checked
    before anything is written; validation problems of the written cohort are returned, not raised.
    """
    out_dir = Path(out_dir)
    _check_destination(positions, out_dir)
    patients = read_goh_sheet(xlsx, sheet)
    scans = find_patient_scans(scans_dir)
    matched, skipped = _match_scans(patients, scans, xlsx, scans_dir, skip_missing)
    used = {patient_key(p.pat_id) for p, _, _ in matched}
    levels = {sid: _world_z(patient.positions, positions, path) for patient, sid, path in matched}
    scores = {sid: patient.scores for patient, sid, _ in matched}
    _place_scans(matched, out_dir / SCANS_DIR, copy)
    write_levels_csv(out_dir / LEVELS_FILE, levels)
    write_scores_csv(out_dir / SCORES_FILE, scores)
    result = GohImport(
        out_dir,
        sorted(levels),
        [p.pat_id for p in skipped],
        sorted(path for key, (_, path) in scans.items() if key not in used),
    )
    try:
        result.cohort = load_cohort(out_dir, progress=progress)
    except CohortError as e:
        result.problems = e.problems
    return result
