"""`ssc report` and `ssc cascade --report`: one self-contained HTML page per scored scan (scores, warnings, level
slices, coronal view, heat maps, models) and a cohort page; hostile strings escaped; the pages rendered by a real
headless browser (Chromium) when one is installed."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_ssc
from PIL import Image

from sscjax import __version__, scan_report
from sscjax.data import load_cohort
from sscjax.domain import LEVEL_NAMES, SCORES
from sscjax.errors import SscError
from sscjax.io import DICOM_TAGS, read_image

HOSTILE_ID = 'x<script>alert("id")<&'
WARNINGS = [
    {"code": "level_at_scan_edge", "level": 1, "message": "L1 is 3 mm from the edge <script>alert('w')</script> & co"},
    {"code": "thick_slices", "message": 'slices 6 mm apart <img src="file:///etc/passwd">'},
]
DICOM = {
    "patient_id": "<script>alert('patient')</script>",
    "study_instance_uid": "1.2.3",
    "series_instance_uid": "1.2.3.4",
    "modality": "CT",
    "study_date": "20240131",
    "series_description": "chest & <marquee>lung</marquee>",
}
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
BROWSER_TIMEOUT_S = 90


def ssc(*args) -> str:
    """`ssc ARGS` in-process; its output (the command must succeed)."""
    from sscjax.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def hostile_copy(folder: Path) -> Path:
    """A copy of a finished scan's folder (without heat maps) under a hostile id, whose scores.json carries hostile
    strings, a DICOM identity, two warnings and a source that no longer exists."""
    copy = folder.parent / HOSTILE_ID
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("explain", "report.html"))
    result = json.loads((copy / "scores.json").read_text(encoding="utf-8"))
    result.update(scan=HOSTILE_ID, source=str(folder.parent / "gone.mha"), dicom=DICOM, warnings=WARNINGS)
    result["provenance"]["input"] = None
    (copy / "scores.json").write_text(json.dumps(result))
    return copy


def write_heatmaps(folder: Path) -> Path:
    """TOT heat maps of a finished scan's five levels, written by `ssc explain`'s own writer into OUT/<scan>/explain/
    (a made-up Delta P ramp: running the heat maps would cost the test a compilation, and the page only reads files)."""
    from sscjax import explain
    from sscjax.heatmaps import HeatmapConfig

    levels = json.loads((folder / "scores.json").read_text(encoding="utf-8"))["levels"]
    slices = [read_image(folder / f"{name}.mha") for name in LEVEL_NAMES]
    lungs = np.stack([read_image(folder / f"{name}_lung.mha").array[0] > 0 for name in LEVEL_NAMES])
    ramp = np.linspace(-2.0, 2.0, lungs.shape[2])[None, :, None] * np.ones((*lungs.shape[1:], len(SCORES)))
    found = [
        explain.SliceExplanation(
            ramp, lung, np.array([lv[p] for p in SCORES]), np.full(3, 7.5), ramp < -1, np.full(3, -1.0)
        )
        for lung, lv in zip(lungs, levels)
    ]
    index = np.array([lv["slice_index"] for lv in levels])
    hu, geometries = np.stack([s.array[0] for s in slices]), [s.geometry for s in slices]
    scan = explain.ScanExplanation(folder.name, list(LEVEL_NAMES), index, hu, lungs, geometries, found, HeatmapConfig())
    return explain.write_scan_explanation(scan, folder.parent, ("TOT",))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, snet_trained, cohort):
    """OUT of `ssc cascade --report` on a phantom (levels given), with TOT heat maps of its levels (`write_heatmaps`)
    and a hostile copy of its result, then `ssc report OUT`: (OUT, phantom id, cascade's output, report's output, the
    phantom's page as the cascade wrote it)."""
    data = load_cohort(cohort, check_scans=False)
    sid = data.ids[0]
    out = tmp_path_factory.mktemp("report")
    levels = ",".join(f"{z:.2f}" for z in data.levels_mm[sid])
    common = ["--scan", data.scan_paths[sid], "--levels", levels, "--snet", snet_trained[0], "--out", out]
    by_cascade = ssc("cascade", *common, "--report")
    first_page = (out / sid / "report.html").read_text(encoding="utf-8")
    write_heatmaps(out / sid)
    hostile_copy(out / sid)
    return out, sid, by_cascade, ssc("report", out), first_page


def page(out: Path, sid: str) -> str:
    return (out / sid / "report.html").read_text(encoding="utf-8")


def test_cascade_and_report_write_a_page_per_scan_and_the_cohort_page(outputs):
    out, sid, by_cascade, by_report, first_page = outputs
    assert str(out / sid / "report.html") in by_cascade and str(out / "report.html") in by_cascade
    assert "Goh scores of" in first_page and "No heat maps" in first_page  # explain ran after the cascade
    assert by_report.split() == [
        str(out / sid / "report.html"),
        str(out / HOSTILE_ID / "report.html"),
        str(out / "report.html"),
    ]
    assert set(scan_report.DICOM_LABELS) == set(DICOM_TAGS)


def test_the_page_shows_scores_spread_goh_scores_levels_heat_maps_and_models(outputs):
    out, sid, *_ = outputs
    text, result = page(out, sid), json.loads((out / sid / "scores.json").read_text(encoding="utf-8"))
    for lv in result["levels"]:
        for p in SCORES:
            assert f"{lv[p]:.1f}" in text and f"± {lv['spread'][p]:.1f}" in text
        cells = "".join(f'<td class="n">{lv[f"{p}_5"]}</td>' for p in SCORES)
        assert cells in text
    assert all(f"{result['mean'][p]:.1f}" in text for p in SCORES)
    assert "The input had no DICOM identity" in text and html.escape(result["source"]) in text
    assert "No quality warning fired" in text or "quality warning(s)" in text
    assert 'alt="coronal view of the scan with the five levels"' in text
    assert 'alt="the five level slices with the lung outlined"' in text
    assert [f"L{k} TOT heat map" for k in range(1, 6)] == re.findall(r'alt="(L\d TOT heat map)"', text)
    assert text.count("derived 7.5 % (ΔP &lt; -1.0 pp)") == 5 and f"S-Net {result['levels'][4]['TOT']:.1f} %" in text
    assert html.escape(result["models"]["snet"][0]) in text and "given by hand" in text
    assert result["provenance"]["models"]["snet"][0]["checkpoint_sha256"] in text and __version__ in text


def test_hostile_strings_are_escaped_and_what_is_missing_is_said(outputs):
    out, *_ = outputs
    text = page(out, HOSTILE_ID)
    assert "<script" not in text and "<marquee" not in text and 'src="file' not in text
    for w in WARNINGS:
        assert html.escape(w["message"]) in text and f"<code>{w['code']}</code>" in text
    assert "2 quality warning(s)" in text
    assert html.escape(DICOM["patient_id"]) in text and html.escape(DICOM["series_description"]) in text
    assert "<th>Series instance UID</th><td>1.2.3.4</td>" in text and "no DICOM identity" not in text
    assert "Coronal view unavailable" in text and "No heat maps" in text
    assert 'alt="the five level slices with the lung outlined"' in text


def test_heat_maps_from_an_explain_folder_elsewhere_and_a_scan_changed_since(outputs, cohort, tmp_path):
    out, sid, *_ = outputs
    shutil.copytree(out / sid / "explain", tmp_path / "elsewhere" / sid / "explain")
    moved = shutil.copytree(out / sid, tmp_path / "out" / sid, ignore=shutil.ignore_patterns("explain"))
    text = scan_report.scan_page(moved)
    assert "No heat maps" in text and 'alt="coronal view of the scan with the five levels"' in text
    result = json.loads((moved / "scores.json").read_text(encoding="utf-8"))
    data = load_cohort(cohort, check_scans=False)
    other = data.scan_paths[next(i for i in data.ids if i != sid)]
    result["provenance"]["input"]["path"] = str(other)
    (moved / "scores.json").write_text(json.dumps(result))
    text = scan_report.scan_page(moved, tmp_path / "elsewhere")
    assert len(re.findall(r'alt="L\d TOT heat map"', text)) == 5
    assert f"Coronal view unavailable: {other} is no longer the scan that was scored" in text


def test_pages_are_self_contained(outputs):
    out, sid, *_ = outputs
    for text in (page(out, sid), page(out, HOSTILE_ID), (out / "report.html").read_text(encoding="utf-8")):
        for tag in ("<script", "<link", "<iframe", "<object", "url(", "@import"):
            assert tag not in text.lower()
        assert all(uri.startswith("data:image/png;base64,") for uri in re.findall(r'\bsrc="([^"]*)"', text))
        assert all(":" not in link and not link.startswith("/") for link in re.findall(r'\bhref="([^"]*)"', text))
        assert not re.search(r"https?://", DATA_URI.sub("", text))
        for data in DATA_URI.findall(text):
            with Image.open(io.BytesIO(base64.b64decode(data))) as image:
                assert image.format == "PNG" and min(image.size) > 100


def test_the_cohort_page_links_every_scan_with_mean_scores_and_warnings(outputs):
    out, sid, *_ = outputs
    text = (out / "report.html").read_text(encoding="utf-8")
    assert re.findall(r'href="([^"]*)"', text) == [f"{sid}/report.html", f"{quote(HOSTILE_ID)}/report.html"]
    assert "<script" not in text and html.escape(HOSTILE_ID) in text
    result = json.loads((out / sid / "scores.json").read_text(encoding="utf-8"))
    assert "".join(f'<td class="n">{result["mean"][p]:.1f}</td>' for p in SCORES) in text
    assert '<td class="n">2</td><td>level_at_scan_edge, thick_slices</td>' in text
    assert html.escape(DICOM["patient_id"]) in text
    assert '<a href="../report.html">' in page(out, sid)


def test_nothing_to_report_and_broken_results_name_the_folder_or_file(monkeypatch, capsys, tmp_path):
    code, _, err = run_ssc(monkeypatch, capsys, "report", tmp_path)
    assert code == 2 and f"{tmp_path}: no finished scans" in err and "Traceback" not in err
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "scores.json").write_text('{"levels": [1, 2]}')
    with pytest.raises(SscError, match=re.escape(str(tmp_path / "a" / "scores.json"))):
        scan_report.write_reports(tmp_path)
    (tmp_path / "a" / "scores.json").write_text("{not json")
    with pytest.raises(SscError, match="not readable as JSON"):
        scan_report.write_reports(tmp_path)


@pytest.fixture(scope="module")
def browser(outputs, tmp_path_factory):
    """The hostile page's DOM after a headless Chromium loaded it, and a screenshot of the phantom's page: two
    browser starts in all."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium or chromium-browser on PATH (e.g. `apt-get install chromium`): pages not rendered")
    out, sid, *_ = outputs
    folder = tmp_path_factory.mktemp("browser")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={folder / 'profile'}"]
    run = {"capture_output": True, "text": True, "encoding": "utf-8", "timeout": BROWSER_TIMEOUT_S, "check": True}
    dom = subprocess.run([*flags, "--dump-dom", (out / HOSTILE_ID / "report.html").as_uri()], **run).stdout
    shot = folder / "page.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", (out / sid / "report.html").as_uri()], **run
    )
    return dom, shot


def test_a_browser_shows_the_scores_and_warnings(outputs, browser):
    out, *_ = outputs
    dom, _ = browser
    result = json.loads((out / HOSTILE_ID / "scores.json").read_text(encoding="utf-8"))
    assert all(f"{lv[p]:.1f}" in dom for lv in result["levels"] for p in SCORES)
    assert all(html.escape(w["message"], quote=False) in dom for w in WARNINGS)
    assert "<script" not in dom and "2 quality warning(s)" in dom
    assert dom.count('src="data:image/png;base64,') == 1  # the level slices (the coronal view and heat maps: none)


def test_a_browser_draws_the_page_with_its_images(browser):
    _, shot = browser
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 500
