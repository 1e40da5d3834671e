"""`ssc cascade` and `ssc explain` on a DICOM series made from a phantom: the same scores and maps as its .mha, the
series' identity in scores.json and explain.json, `--series` in a folder of two series, and the batch CSV's
provenance side file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_ssc as ssc

from sscjax import cascade, io, provenance, snet
from sscjax.data import load_cohort
from sscjax.domain import SCORES
from sscjax.errors import ScanError
from sscjax.io import Scan, read_image, read_scan

SERIES_A = {
    "patient_id": "SSC-0042",
    "study_instance_uid": "1.2.826.0.1.3680043.10.543.1",
    "series_instance_uid": "1.2.826.0.1.3680043.10.543.1.2",
    "modality": "CT",
    "study_date": "20240131",
    "series_description": "Thorax 1.0 B60f",
}
# the same study reconstructed at twice the slice spacing: fewer slices, so not the default series
SERIES_B = {**SERIES_A, "series_instance_uid": "1.2.826.0.1.3680043.10.543.1.3", "series_description": "Thorax 2.0"}


def write_series(scan: Scan, folder, identity: dict, every: int = 1) -> None:
    """Every `every`-th slice of a canonical scan as DICOM files (numbered head first, without an extension, as
    scanners store them): real HU (int16, no rescale), the scan's geometry and the identity's tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    geometry = scan.geometry
    orientation = (*geometry.matrix[:, 0], *geometry.matrix[:, 1])
    uid = identity["series_instance_uid"]
    for k in range(0, scan.n_slices, every):
        image = sitk.GetImageFromArray(scan.array[k].astype(np.int16))
        image.SetSpacing(geometry.spacing[:2])
        tags = {tag: identity[key] for key, tag in io.DICOM_TAGS.items()}
        tags |= {
            "0008|0018": f"{uid}.{k}",
            "0020|0013": str(k // every + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in geometry.slice_geometry(k).origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0028|0030": f"{geometry.spacing[1]}\\{geometry.spacing[0]}",
            "0018|0050": f"{geometry.spacing[2] * every}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-1]}IM{scan.n_slices - k:04d}"))
        writer.Execute(image)


@pytest.fixture(scope="module")
def dicom(cohort, tmp_path_factory):
    """(cohort, scan id, its .mha path, a DICOM folder holding the scan as series A and every second slice of it as
    series B) of a phantom stored head first (its .mha's z axis points to the feet)."""
    patients = json.loads((cohort / "truth" / "phantom.json").read_text())["patients"]
    sid = next(p["scan_id"] for p in patients if p["stored_reversed"])
    loaded = load_cohort(cohort)
    scan = read_scan(loaded.scan_paths[sid])
    folder = tmp_path_factory.mktemp("dicom") / sid
    write_series(scan, folder, SERIES_A)
    write_series(scan, folder, SERIES_B, every=2)
    return loaded, sid, loaded.scan_paths[sid], folder


def _cascade(monkeypatch, capsys, snet_run, levels, scan, out, *extra):
    return ssc(
        monkeypatch,
        capsys,
        "cascade",
        "--scan",
        scan,
        "--snet",
        snet_run,
        "--levels",
        ",".join(f"{z:.2f}" for z in levels),
        "--out",
        out,
        *extra,
    )


def _level_numbers(levels: list[dict]) -> np.ndarray:
    """(5, 8) z (mm), slice index, the scores and the raw outputs of scores.json's levels."""
    return np.array([[lv["z_mm"], lv["slice_index"], *(lv[p] for p in SCORES), *lv["raw"].values()] for lv in levels])


def test_a_dicom_folder_scores_as_its_mha_and_carries_the_series_identity(
    monkeypatch, capsys, snet_trained, dicom, tmp_path
):
    snet_run, _ = snet_trained
    cohort, sid, mha, folder = dicom
    results = {}
    for name, scan in (("mha", mha), ("dicom", folder)):  # the folder's longest series, A, is the scan itself
        code, out, err = _cascade(monkeypatch, capsys, snet_run, cohort.levels_mm[sid], scan, tmp_path / name)
        assert code == 0, err
        results[name] = json.loads((tmp_path / name / sid / "scores.json").read_text())
    assert results["mha"]["dicom"] is None and results["dicom"]["dicom"] == SERIES_A
    assert f"DICOM series {SERIES_A['series_instance_uid']} (patient SSC-0042, study date 20240131)" in out
    numbers = {name: _level_numbers(result["levels"]) for name, result in results.items()}
    np.testing.assert_allclose(numbers["dicom"], numbers["mha"], atol=1e-4)
    for k in range(1, 6):
        from_mha, from_dicom = (read_image(tmp_path / name / sid / f"L{k}.mha") for name in ("mha", "dicom"))
        np.testing.assert_array_equal(from_dicom.array, from_mha.array)
        assert from_dicom.geometry.origin == pytest.approx(from_mha.geometry.origin, abs=1e-3)
        assert from_dicom.geometry.spacing == pytest.approx(from_mha.geometry.spacing, abs=1e-4)
        assert from_dicom.geometry.direction == pytest.approx(from_mha.geometry.direction, abs=1e-6)

    side = json.loads((tmp_path / "dicom" / cascade.BATCH_PROVENANCE).read_text())
    manifest = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
    )
    assert side["scans"] == {
        sid: {
            "input": {
                "path": str(folder.resolve()),
                "sha256": hashlib.sha256(manifest.encode()).hexdigest(),
                "files": len(list(folder.iterdir())),
            }
        }
    }
    assert side["models"] == {"lnet": [], "snet": [provenance.run_record(snet_run)]}
    assert {k: side[k] for k in ("sscjax", "jax", "jaxlib")} == provenance.versions()
    assert side["device"] == provenance.device_record()


def test_series_picks_one_of_a_folder_once_per_call(monkeypatch, capsys, snet_trained, dicom, tmp_path):
    snet_run, _ = snet_trained
    cohort, sid, mha, folder = dicom
    levels = cohort.levels_mm[sid]
    uid_a, uid_b = SERIES_A["series_instance_uid"], SERIES_B["series_instance_uid"]
    code, _, err = _cascade(monkeypatch, capsys, snet_run, levels, folder, tmp_path, "--series", uid_b)
    assert code == 0, err
    result = json.loads((tmp_path / sid / "scores.json").read_text())
    assert result["dicom"] == SERIES_B
    scan = read_scan(mha)
    for level in result["levels"]:
        written = read_image(tmp_path / sid / f"L{level['level']}.mha")
        np.testing.assert_array_equal(written.array[0], scan.array[2 * level["slice_index"]])
        assert written.geometry.spacing[2] == pytest.approx(2 * scan.geometry.spacing[2], abs=1e-3)

    code, _, err = _cascade(monkeypatch, capsys, snet_run, levels, folder, tmp_path, "--series", uid_a)
    assert code == 2 and err.strip().count("\n") == 0
    assert f"holds the results of DICOM series {uid_b}, not of series {uid_a}; --overwrite replaces them" in err
    other = next(path for other_id, path in cohort.scan_paths.items() if other_id != sid)
    code, _, err = ssc(monkeypatch, capsys, "cascade", "--scan", folder, "--scan", other, "--series", uid_a)
    assert code == 2 and err.strip() == (
        "Error: --series names a series of one DICOM folder, but --scan gives 2 scans; give that folder alone"
    )
    code, _, err = _cascade(monkeypatch, capsys, snet_run, levels, folder, tmp_path / "other", "--series", "9.9")
    assert code == 1 and "series 9.9 not found" in err


def test_a_series_uid_with_a_scan_file_is_refused(dicom):
    _, _, mha, _ = dicom
    with pytest.raises(ScanError, match="is a file; a series UID chooses among the series of a DICOM folder"):
        read_scan(mha, series="1.2.3")


def test_explain_reads_the_named_series_and_writes_its_identity(monkeypatch, capsys, snet_trained, dicom, tmp_path):
    snet_run, _ = snet_trained
    _, sid, mha, folder = dicom
    scan = read_scan(mha)
    k = int(scan.n_slices * 0.4)
    code, _, err = ssc(
        monkeypatch,
        capsys,
        "explain",
        "--scan",
        folder,
        "--series",
        SERIES_A["series_instance_uid"],
        "--snet",
        snet_run,
        "--slice-index",
        k,
        "--pattern",
        "GG",
        "--threshold",
        "-0.5",
        "--set",
        "explain.stride_px=64",  # 8 px at the S-Net's 64: few positions, a fast test
        "--chunk",
        "64",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / sid / "explain" / "explain.json").read_text())
    assert summary["dicom"] == SERIES_A
    (entry,) = summary["slices"]
    assert entry["slice_index"] == k
    expected = snet.SNet.read(snet_run).raw(scan.array[[k]])[0, SCORES.index("GG")]
    assert entry["patterns"]["GG"]["snet"] == pytest.approx(expected, abs=1e-3)
    delta = read_image(tmp_path / sid / "explain" / f"slice{k}_GG_delta.mha")
    assert delta.shape == (1, *scan.shape[1:])
    assert delta.geometry.origin == pytest.approx(scan.geometry.slice_geometry(k).origin, abs=1e-3)
    assert delta.geometry.spacing[:2] == pytest.approx(scan.geometry.spacing[:2])
