"""HTML reports of a cascade's output folder: one page per finished scan, `OUT/<scan id>/report.html` (identity,
quality warnings, scores with their fold spread and Goh scores, a coronal view with the levels, the level slices
with their lung outline, the heat maps of `ssc explain`, the models and versions), and a cohort page,
`OUT/report.html`, linking them. Each page is one file that opens offline: images are embedded as PNG data URIs,
nothing is fetched, no script runs, and every string read from a file is escaped.

It reads only what the cascade and `ssc explain` wrote (and the scan again for the coronal view), so it needs no
networks and no JAX.
"""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from sscjax import __version__, plots
from sscjax.data.slices import window
from sscjax.domain import LEVEL_NAMES, SCORES
from sscjax.errors import SscError
from sscjax.io import Scan, atomic_write, check_writable, read_image, read_scan, remove_partial_writes
from sscjax.results import RESULT_FILE, scanned_input

EXPLAIN_DIR, EXPLAIN_FILE = "explain", "explain.json"  # `ssc explain --out OUT` writes OUT/<scan id>/explain/
REPORT_FILE = "report.html"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SLICE_NAME = re.compile(r"L[1-5]|slice\d+")  # the slice names explain.json may give (they become file names)
SAME_HU = 1.0  # a level slice (stored as int16) lies this close to the scan's slice when the scan is the one scored
NONE = "—"
DICOM_LABELS = {  # the keys of scores.json's `dicom` (`sscjax.io.DICOM_TAGS`) as the page names them
    "patient_id": "Patient ID",
    "study_date": "Study date",
    "modality": "Modality",
    "series_description": "Series description",
    "study_instance_uid": "Study instance UID",
    "series_instance_uid": "Series instance UID",
}
DPI = 100  # the figures' resolution: about the page's width in pixels, and a page of a few hundred KB
# No request leaves the page: images only from data URIs, styles only from the page itself, no scripts.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } .sd { color: #777; font-size: 0.85em; }
.warn { background: #fff3cd; border: 2px solid #d39e00; padding: 0.4em 1em; }
.ok { background: #e6f4ea; border: 1px solid #5cb85c; padding: 0.4em 1em; }
.note { color: #666; font-style: italic; } img { max-width: 100%; }
.maps { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
figure { margin: 0; } figcaption { font-size: 0.85em; }
.runs td { word-break: break-all; font-size: 0.85em; }
"""


def finished_scans(out_dir: str | Path) -> list[Path]:
    """The folders under OUT that hold a scores.json (finished scans), sorted by name."""
    return sorted(path.parent for path in Path(out_dir).glob(f"*/{RESULT_FILE}"))


def _read_json(path: Path) -> Any:
    """A JSON file's content; SscError naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SscError(f"{path}: not readable as JSON ({e})") from None


def read_result(folder: str | Path) -> dict:
    """A finished scan's scores.json; SscError naming the file when it is not a cascade result."""
    path = Path(folder) / RESULT_FILE
    result = _read_json(path)
    levels = result.get("levels") if isinstance(result, dict) else None
    if not (isinstance(levels, list) and len(levels) == len(LEVEL_NAMES) and all(isinstance(v, dict) for v in levels)):
        raise SscError(f"{path}: not a cascade result (`levels` must hold the five levels)")
    if not isinstance(result.get("mean"), dict):
        raise SscError(f"{path}: not a cascade result (no `mean` scores)")
    return result


def _dict(value: Any) -> dict:
    """`value` if a dict, else an empty one (a key missing from an older or edited result)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    """`value` if a list, else an empty one."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    """A value from a file as escaped HTML text; a missing one as a dash."""
    return NONE if value is None else escape(str(value))


def _num(value: Any, digits: int = 1) -> str:
    """A number with `digits` decimals; anything else (null, text) as a dash."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.{digits}f}" if is_number and np.isfinite(value) else NONE


def _png(data: bytes, alt: str) -> str:
    """An <img> of PNG bytes embedded as a data URI."""
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{escape(alt)}">'


def _identity(result: dict) -> str:
    """The patient and series of a DICOM input, else the scan id and source with a note that it had no identity."""
    dicom = result.get("dicom")
    rows = [("Scan id", result.get("scan")), ("Source", result.get("source"))]
    if isinstance(dicom, dict):
        rows += [(label, dicom.get(key)) for key, label in DICOM_LABELS.items()]
    table = "".join(f"<tr><th>{name}</th><td>{_text(value)}</td></tr>" for name, value in rows)
    note = (
        "" if isinstance(dicom, dict) else '<p class="note">The input had no DICOM identity (not a DICOM series).</p>'
    )
    return f"<table>{table}</table>{note}"


def _warnings(result: dict) -> str:
    """The quality warnings, prominently: the code and message (which names the level) of each."""
    if "warnings" not in result:
        return '<p class="note">This result predates the quality checks: no warnings were computed.</p>'
    found = [w for w in _list(result["warnings"]) if isinstance(w, dict)]
    if not found:
        return '<div class="ok">No quality warning fired.</div>'
    items = "".join(f"<li><b><code>{_text(w.get('code'))}</code></b>: {_text(w.get('message'))}</li>" for w in found)
    return f'<div class="warn"><h2>&#9888; {len(found)} quality warning(s)</h2><ul>{items}</ul></div>'


def _row(name: str, where: tuple[str, str], scores: dict, spread: dict | None, goh_digits: int) -> str:
    """A row of the scores table: name, z and slice, TOT/GG/RET % (± their fold SD if given) and Goh scores."""
    cells = [f"<th>{name}</th>", *(f'<td class="n">{text}</td>' for text in where)]
    for p in SCORES:
        sd = "" if spread is None else f' <span class="sd">± {_num(spread.get(p))}</span>'
        cells.append(f'<td class="n">{_num(scores.get(p))}{sd}</td>')
    cells += [f'<td class="n">{_num(scores.get(f"{p}_5"), goh_digits)}</td>' for p in SCORES]
    return f"<tr>{''.join(cells)}</tr>"


def _scores(result: dict) -> str:
    """The table of every level's position, scores (± the SD between the S-Net folds) and Goh scores, and the mean."""
    head = ["level", "z (mm)", "slice", *(f"{p} %" for p in SCORES), *(f"{p} Goh" for p in SCORES)]
    rows = [
        _row(name, (_num(lv.get("z_mm")), _text(lv.get("slice_index"))), lv, _dict(lv.get("spread")), 0)
        for name, lv in zip(LEVEL_NAMES, result["levels"])
    ]
    rows.append(_row("mean", ("", ""), result["mean"], None, 1))
    note = "% of the lung area, ± the SD between the S-Net folds; Goh: rounded to 5 % (mean: of the rounded scores)."
    table = "".join(f"<th>{name}</th>" for name in head)
    return f'<table><tr>{table}</tr>{"".join(rows)}</table><p class="note">{note}</p>'


def _level_images(folder: Path) -> tuple[list[Scan], list[np.ndarray]]:
    """The five level slices the cascade wrote (HU, with their geometry) and their lung masks."""
    slices = [read_image(folder / f"{name}.mha") for name in LEVEL_NAMES]
    lungs = [read_image(folder / f"{name}_lung.mha").array[0] > 0 for name in LEVEL_NAMES]
    return slices, lungs


def _level_figure(result: dict, slices: list[Scan], lungs: list[np.ndarray]) -> str:
    """The five level slices side by side with their lung outlined, their z and scores."""
    captions = [
        f"{name}  z = {_num(lv.get('z_mm'))} mm\n" + "  ".join(f"{p} {_num(lv.get(p))}" for p in SCORES)
        for name, lv in zip(LEVEL_NAMES, result["levels"])
    ]
    images = [window(s.array[0]) for s in slices]
    spacing = [(s.geometry.spacing[1], s.geometry.spacing[0]) for s in slices]
    fig = plots.level_figure(images, spacing, captions, "Level slices, lung outlined", lungs)
    return _png(plots.render(fig, dpi=DPI), "the five level slices with the lung outlined")


def _scored_index(scan: Scan, result: dict, slices: list[Scan]) -> list[int] | None:
    """The levels' slice indices if `scan` is the scan that was scored (its slices there are the level slices)."""
    index = [lv.get("slice_index") for lv in result["levels"]]
    if not all(isinstance(k, int) and 0 <= k < scan.n_slices for k in index):
        return None
    same = all(
        s.array[0].shape == scan.array[k].shape and np.abs(s.array[0] - scan.array[k]).max() <= SAME_HU
        for s, k in zip(slices, index)
    )
    return index if same else None


def _coronal(result: dict, slices: list[Scan]) -> str:
    """A coronal view of the scan with the five levels, if it can be read from its source and is the scan scored;
    else a line saying why it is not shown."""
    path = scanned_input(result)
    if path is None:
        return f'<p class="note">Coronal view unavailable: the scan {_text(result.get("source"))} was not found.</p>'
    try:
        scan = read_scan(path, _dict(result.get("dicom")).get("series_instance_uid"))
    except (SscError, OSError) as e:
        return f'<p class="note">Coronal view unavailable: {_text(e)}</p>'
    index = _scored_index(scan, result, slices)
    if index is None:
        return f'<p class="note">Coronal view unavailable: {_text(path)} is no longer the scan that was scored.</p>'
    spacing = scan.geometry.spacing
    fig = plots.coronal_levels(scan.array, index, (spacing[2], spacing[0]), "Coronal view, levels L1-L5")
    return _png(plots.render(fig, dpi=DPI), "coronal view of the scan with the five levels")


def _overlay(explain: Path, entry: Any, pattern: str) -> str:
    """The overlay of one explained slice (an entry of explain.json) and `pattern`, captioned; "" if not written."""
    entry = _dict(entry)
    name, stats = str(entry.get("name")), _dict(_dict(entry.get("patterns")).get(pattern))
    path = explain / f"{name}_{pattern}_overlay.png"
    if not (SLICE_NAME.fullmatch(name) and stats and path.is_file()):
        return ""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return ""
    caption = (
        f"{escape(name)} {pattern} (slice {_text(entry.get('slice_index'))}): S-Net {_num(stats.get('snet'))} %, "
        f"derived {_num(stats.get('derived'))} % (ΔP &lt; {_num(stats.get('threshold'))} pp)"
    )
    return f"<figure>{_png(data, f'{name} {pattern} heat map')}<figcaption>{caption}</figcaption></figure>"


def _heatmaps(explain: Path) -> str:
    """The heat-map overlays `ssc explain` wrote into `explain`, or a line saying there are none."""
    summary = explain / EXPLAIN_FILE
    if not summary.is_file():
        return f'<p class="note">No heat maps: <code>ssc explain</code> has written no {_text(summary)}.</p>'
    entries = _list(_dict(_read_json(summary)).get("slices"))
    figures = "".join(_overlay(explain, entry, p) for entry in entries for p in SCORES)
    if not figures:
        return f'<p class="note">No heat maps: {_text(summary)} lists no overlay that exists.</p>'
    legend = (
        "Blue: replacing the region with healthy lung lowered the score (the S-Net saw it as diseased); red: raised "
        "it; yellow outline: the derived segmentation."
    )
    return f'<p class="note">{legend}</p><div class="maps">{figures}</div>'


def _runs(result: dict) -> str:
    """The table of the runs that made the result, with their checkpoint step and hashes (from the provenance)."""
    records, used = _dict(_dict(result.get("provenance")).get("models")), _dict(result.get("models"))
    rows = []
    for kind in ("lnet", "snet"):
        runs = _list(records.get(kind)) or [{"run": run} for run in _list(used.get(kind))]
        for run in map(_dict, runs):
            keys = ("run", "checkpoint_step", "config_sha256", "checkpoint_sha256")
            rows.append(f"<tr><td>{kind}</td>{''.join(f'<td>{_text(run.get(k))}</td>' for k in keys)}</tr>")
    head = (
        "<tr><th>network</th><th>run</th><th>checkpoint step</th><th>config sha256</th><th>checkpoint sha256</th></tr>"
    )
    return f'<table class="runs">{head}{"".join(rows)}</table>'


def _versions(result: dict) -> str:
    """How the levels were found, the software versions, the device and the input's checksum."""
    made = _dict(result.get("provenance"))
    device = _dict(made.get("device"))
    how = _dict(result.get("models")).get("levels")
    rows = [
        ("levels", {"lnet": "found by the L-Net", "given": "given by hand (--levels)"}.get(str(how), how)),
        *((name, made.get(name)) for name in ("sscjax", "jax", "jaxlib")),
        (
            "device",
            f"{device.get('platform')}, {device.get('count')} x {device.get('device_kind')}" if device else None,
        ),
        ("input sha256", _dict(made.get("input")).get("sha256")),
    ]
    return "<table>" + "".join(f"<tr><th>{name}</th><td>{_text(value)}</td></tr>" for name, value in rows) + "</table>"


def _page(title: str, body: str) -> str:
    """A whole HTML document around `body`, titled `title` (both HTML already), with its style and content policy."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<title>{title}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
        f'<footer class="note">Written by sscjax {escape(__version__)}.</footer>\n</body></html>\n'
    )


def scan_page(folder: str | Path, explain_dir: str | Path | None = None) -> str:
    """The report page of the finished scan in `folder` (OUT/<scan id>), with the heat maps of
    `explain_dir`/<scan id>/explain/ (default: OUT's)."""
    folder = Path(folder)
    result = read_result(folder)
    slices, lungs = _level_images(folder)
    explain = (folder.parent if explain_dir is None else Path(explain_dir)) / folder.name / EXPLAIN_DIR
    sid = _text(result.get("scan", folder.name))
    sections = [
        f'<p><a href="../{REPORT_FILE}">All scans</a></p><h1>Goh scores of {sid}</h1>',
        _identity(result),
        _warnings(result),
        f"<h2>Scores</h2>{_scores(result)}",
        f"<h2>Levels</h2>{_coronal(result, slices)}{_level_figure(result, slices, lungs)}",
        f"<h2>Heat maps</h2>{_heatmaps(explain)}",
        f"<h2>Models and versions</h2>{_runs(result)}{_versions(result)}",
    ]
    return _page(f"Goh scores: {sid}", "\n".join(sections))


def _write(path: Path, page: str) -> Path:
    """Write an HTML page atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def write_scan_report(folder: str | Path, explain_dir: str | Path | None = None) -> Path:
    """Write `scan_page` as OUT/<scan id>/report.html."""
    folder = Path(folder)
    remove_partial_writes(folder)
    return _write(folder / REPORT_FILE, scan_page(folder, explain_dir))


def _cohort_row(folder: Path, result: dict) -> str:
    """A row of the cohort page: the link to the scan's page, its patient, mean scores and warnings."""
    found = [w for w in _list(result.get("warnings")) if isinstance(w, dict)]
    codes = ", ".join(sorted({str(w.get("code")) for w in found}))
    numbers = [*(_num(result["mean"].get(p)) for p in SCORES), str(len(found)) if "warnings" in result else NONE]
    return (
        f'<tr><td><a href="{escape(quote(folder.name))}/{REPORT_FILE}">{escape(folder.name)}</a></td>'
        f"<td>{_text(_dict(result.get('dicom')).get('patient_id'))}</td>"
        + "".join(f'<td class="n">{number}</td>' for number in numbers)
        + f"<td>{escape(codes)}</td></tr>"
    )


def cohort_page(out_dir: str | Path, folders: list[Path]) -> str:
    """The cohort page of OUT: a table linking every finished scan's page with its mean scores and warnings."""
    results = [read_result(folder) for folder in folders]
    warned = sum(bool(_list(result.get("warnings"))) for result in results)
    head = ["scan", "patient", *(f"mean {p} %" for p in SCORES), "warnings", "warning codes"]
    rows = "".join(_cohort_row(folder, result) for folder, result in zip(folders, results))
    body = (
        f"<h1>Goh scores of {len(folders)} scan(s)</h1><p>{_text(Path(out_dir).resolve())}: {warned} of "
        f"{len(folders)} scan(s) with quality warnings.</p>"
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{rows}</table>"
    )
    return _page("Goh scores", body)


def write_reports(out_dir: str | Path, explain_dir: str | Path | None = None) -> list[Path]:
    """Write the page of every finished scan under OUT and the cohort page OUT/report.html (last in the list
    returned); heat maps from `explain_dir` (default: OUT). SscError when OUT holds no finished scan."""
    out_dir = check_writable(out_dir)
    folders = finished_scans(out_dir)
    if not folders:
        raise SscError(f"{out_dir}: no finished scans to report (no <scan id>/{RESULT_FILE}); run `ssc cascade` first")
    written = [write_scan_report(folder, explain_dir) for folder in folders]
    return [*written, _write(out_dir / REPORT_FILE, cohort_page(out_dir, folders))]
