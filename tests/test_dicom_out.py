"""`--dicom-out` of `ssc cascade` and `ssc explain`: the scores as a TID 1500 Structured Report, the level slices as
Secondary Capture images and the lesion maps as a DICOM SEG, read back with pydicom and highdicom: their values
against scores.json and explain's .mha files, their references to the input series' images at the level slices,
their patient and study identity, the SEG's geometry; new UIDs for a scan that was not DICOM; a clear refusal
without highdicom."""

from __future__ import annotations

import json
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from conftest import run_ssc as ssc
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage
from test_dicom_cascade import SERIES_A, write_series

from sscjax import dicom_out
from sscjax.data import load_cohort
from sscjax.domain import LEVEL_NAMES, SCORES
from sscjax.io import Geometry, read_image, read_scan

UID_A = SERIES_A["series_instance_uid"]
# what a scanner writes beside the identity that sscjax reads, and what the objects must copy
EXTRA = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19600101",
    "PatientSex": "F",
    "AccessionNumber": "ACC-77",
    "StudyID": "S1",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.10.543.1.9",
}
IDENTITY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber",
            "StudyDate", "StudyID")  # fmt: skip


@pytest.fixture(scope="module")
def series(cohort, tmp_path_factory):
    """(cohort, scan id, its .mha path, a DICOM folder holding the scan as series A with the full identity of a
    scanner's images)."""
    loaded = load_cohort(cohort)
    sid = sorted(loaded.scan_paths)[0]
    scan = read_scan(loaded.scan_paths[sid])
    folder = tmp_path_factory.mktemp("dicom_out") / sid
    write_series(scan, folder, SERIES_A)
    for path in folder.iterdir():
        header = pydicom.dcmread(path)
        for key, value in EXTRA.items():
            setattr(header, key, value)
        header.save_as(path)
    return loaded, sid, loaded.scan_paths[sid], folder


def _levels(cohort, sid) -> str:
    return ",".join(f"{z:.2f}" for z in cohort.levels_mm[sid])


def _invoke(*args) -> str:
    from sscjax.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def cascaded(series, snet_trained, tmp_path_factory):
    """(OUT/<scan id>, what `ssc cascade --dicom-out` printed) for the DICOM series."""
    cohort, sid, _, folder = series
    out = tmp_path_factory.mktemp("cascade_dicom")
    printed = _invoke(
        "cascade", "--scan", folder, "--snet", snet_trained[0], "--levels", _levels(cohort, sid), "--out", out,
        "--dicom-out",
    )  # fmt: skip
    return out / sid, printed


@pytest.fixture(scope="module")
def explained(series, snet_trained, tmp_path_factory):
    """(OUT/<scan id>, what `ssc explain --dicom-out` printed) for the DICOM series' five level slices, with coarse
    heat maps (8 px patches at the S-Net's 64 px) and a threshold that marks part of the lung."""
    cohort, sid, _, folder = series
    out = tmp_path_factory.mktemp("explain_dicom")
    printed = _invoke(
        "explain", "--scan", folder, "--snet", snet_trained[0], "--levels", _levels(cohort, sid), "--threshold", "0",
        "--set", "explain.stride_px=64", "--chunk", "64", "--out", out, "--dicom-out",
    )  # fmt: skip
    return out / sid, printed


def _input_headers(folder) -> dict[str, Dataset]:
    """The input series' headers by SOP instance UID."""
    headers = (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())
    return {h.SOPInstanceUID: h for h in headers}


def _level_uid(level: dict) -> str:
    """The SOP instance UID of the input image at a level: write_series numbers them by canonical slice index."""
    return f"{UID_A}.{level['slice_index']}"


def _same_identity(dataset: Dataset, header: Dataset) -> None:
    for key in IDENTITY:
        assert str(dataset.get(key)) == str(header.get(key)), key


def test_the_sr_holds_each_levels_scores_and_references_its_input_image(series, cascaded):
    _, _, _, folder = series
    scan_dir, printed = cascaded
    result = json.loads((scan_dir / "scores.json").read_text(encoding="utf-8"))
    headers = _input_headers(folder)
    assert f"DICOM: the SR and 5 SC images in {scan_dir / 'dicom'}" in printed
    assert f"patient {SERIES_A['patient_id']}, study {SERIES_A['study_instance_uid']} of the input series" in printed

    report = hd.sr.srread(scan_dir / "dicom" / dicom_out.SR_FILE)
    assert report.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    _same_identity(report, headers[_level_uid(result["levels"][0])])
    assert report.StudyInstanceUID == SERIES_A["study_instance_uid"] and report.SeriesInstanceUID != UID_A
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 5
    for k, (group, level) in enumerate(zip(groups, result["levels"])):
        assert str(group.tracking_identifier).startswith(f"{LEVEL_NAMES[k]} (")
        expected = _level_uid(level)
        assert [image.referenced_sop_instance_uid for image in group.source_images] == [expected]
        measured = {m.name.value: m for m in group.get_measurements()}
        assert sorted(measured) == sorted(SCORES)
        for p in SCORES:
            assert measured[p].value == pytest.approx(level[p], abs=1e-9)
            assert (measured[p].unit.value, measured[p].unit.scheme_designator) == ("%", "UCUM")
            assert [i.referenced_sop_instance_uid for i in measured[p].referenced_images] == [expected]
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [s.SeriesInstanceUID for s in evidence] == [UID_A]
    assert {i.ReferencedSOPInstanceUID for i in evidence[0].ReferencedSOPSequence} == {
        _level_uid(level) for level in result["levels"]
    }


def test_the_sc_images_show_each_level_with_the_inputs_identity(series, cascaded):
    _, _, _, folder = series
    scan_dir, _ = cascaded
    result = json.loads((scan_dir / "scores.json").read_text(encoding="utf-8"))
    headers = _input_headers(folder)
    images = [pydicom.dcmread(scan_dir / "dicom" / name) for name in dicom_out.SC_FILES]
    assert len({image.SeriesInstanceUID for image in images}) == 1
    assert [int(image.InstanceNumber) for image in images] == [1, 2, 3, 4, 5]
    for k, (image, level) in enumerate(zip(images, result["levels"])):
        source = headers[_level_uid(level)]
        _same_identity(image, source)
        assert image.SOPClassUID == SecondaryCaptureImageStorage
        assert image.SeriesInstanceUID not in (UID_A, None)
        assert [s.ReferencedSOPInstanceUID for s in image.SourceImageSequence] == [source.SOPInstanceUID]
        assert (image.PhotometricInterpretation, image.BurnedInAnnotation) == ("RGB", "YES")
        pixels = image.pixel_array
        slice_ = read_image(scan_dir / f"{LEVEL_NAMES[k]}.mha")
        factor = pixels.shape[0] // slice_.shape[1]
        assert pixels.shape == (slice_.shape[1] * factor, slice_.shape[2] * factor, 3) and pixels.shape[0] >= 512
        assert [float(v) for v in image.PixelSpacing] == pytest.approx(
            [slice_.geometry.spacing[1] / factor, slice_.geometry.spacing[0] / factor]
        )
        assert pixels.std() > 10  # the slice itself, not a blank frame
        coloured = (pixels.max(axis=-1).astype(int) - pixels.min(axis=-1)) > 60
        assert coloured.mean() > 1e-3  # the lung outline and the text box's letters are not grey
        assert f"{level['TOT']:.1f} %" in image.ImageComments


def test_the_seg_holds_explains_lesion_maps_on_the_input_images(series, explained):
    _, _, _, folder = series
    scan_dir, printed = explained
    summary = json.loads((scan_dir / "explain" / "explain.json").read_text(encoding="utf-8"))
    headers = _input_headers(folder)
    assert f"DICOM SEG of the GG and RET lesion maps: {scan_dir / 'dicom' / dicom_out.SEG_FILE}" in printed
    seg = hd.seg.segread(scan_dir / "dicom" / dicom_out.SEG_FILE)
    sources = [f"{UID_A}.{entry['slice_index']}" for entry in summary["slices"]]
    _same_identity(seg, headers[sources[0]])
    assert seg.FrameOfReferenceUID == EXTRA["FrameOfReferenceUID"]
    assert seg.segmentation_type.value == "BINARY"
    assert [seg.get_segment_description(n).SegmentLabel.split()[0] for n in seg.segment_numbers] == ["GG", "RET"]
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(sources)
    masks = seg.get_pixels_by_source_instance(sources, segment_numbers=[1, 2])
    assert masks.shape[0] == 5
    shared = seg.SharedFunctionalGroupsSequence[0]
    by_frame = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: frame
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    for i, entry in enumerate(summary["slices"]):
        name, source = entry["name"], headers[sources[i]]
        derived = [read_image(scan_dir / "explain" / f"{name}_{p}_derived.mha") for p in ("GG", "RET")]
        np.testing.assert_array_equal(masks[i], np.stack([d.array[0] for d in derived], axis=-1))
        geometry = derived[0].geometry
        position = by_frame[sources[i]].PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx(list(geometry.origin), abs=1e-3)
        assert [float(v) for v in position] == pytest.approx([float(v) for v in source.ImagePositionPatient])
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == pytest.approx([geometry.spacing[1], geometry.spacing[0]], abs=1e-4)
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        assert [float(v) for v in orientation] == pytest.approx([float(v) for v in source.ImageOrientationPatient])
    assert 0 < masks.mean() < 1  # part of the lung, so the comparison above means something


def test_a_scan_that_is_not_dicom_gets_a_new_study_and_says_so(monkeypatch, capsys, series, snet_trained, tmp_path):
    cohort, sid, mha, _ = series
    args = ("--scan", mha, "--snet", snet_trained[0], "--levels", _levels(cohort, sid), "--out", tmp_path)
    code, out, err = ssc(monkeypatch, capsys, "cascade", *args, "--dicom-out")
    assert code == 0, err
    report = hd.sr.srread(tmp_path / sid / "dicom" / dicom_out.SR_FILE)
    assert f"the input is not DICOM: new study {report.StudyInstanceUID} and UIDs were made" in out
    assert report.StudyInstanceUID != SERIES_A["study_instance_uid"] and report.PatientID == sid
    images = [pydicom.dcmread(tmp_path / sid / "dicom" / name) for name in dicom_out.SC_FILES]
    assert {image.StudyInstanceUID for image in images} == {report.StudyInstanceUID}
    assert {image.PatientID for image in images} == {sid}
    assert all("SourceImageSequence" not in image for image in images)
    groups = report.content.get_image_measurement_groups()  # without input images, each level names its SC image
    assert [g.source_images[0].referenced_sop_instance_uid for g in groups] == [i.SOPInstanceUID for i in images]

    code, out, err = ssc(monkeypatch, capsys, "explain", *args, "--dicom-out")
    assert code == 2 and "is not a DICOM series, and a DICOM SEG must reference the DICOM images" in err
    assert not (tmp_path / sid / "explain").exists()  # refused before any heat map


def test_without_highdicom_dicom_out_names_the_install_line(monkeypatch, capsys, series, tmp_path):
    _, _, _, folder = series
    monkeypatch.setitem(sys.modules, "highdicom", None)  # `import highdicom` fails as if not installed
    for command in ("cascade", "explain"):
        code, _, err = ssc(monkeypatch, capsys, command, "--scan", folder, "--out", tmp_path, "--dicom-out")
        assert code == 2
        assert 'DICOM output needs highdicom, which is not installed: pip install -e ".[dicom]"' in err
    assert not any(tmp_path.iterdir())


def test_the_source_images_are_found_by_position_and_masks_follow_their_pixel_order(series):
    _, _, mha, folder = series
    scan = read_scan(mha)
    k = scan.n_slices // 2
    (header,) = dicom_out.level_instances(folder, UID_A, [scan.geometry.slice_geometry(k)], [scan.shape[1:]])
    assert header.SOPInstanceUID == f"{UID_A}.{k}"
    far = Geometry(scan.geometry.spacing, (0.0, 0.0, float(scan.z_mm[-1]) + 50))
    with pytest.raises(dicom_out.DicomOutError, match=rf"series {UID_A} has no image at"):
        dicom_out.level_instances(folder, UID_A, [far], [scan.shape[1:]])
    with pytest.raises(dicom_out.DicomOutError, match="pixels, but the result's slice is 3x4"):
        dicom_out.level_instances(folder, UID_A, [scan.geometry.slice_geometry(k)], [(3, 4)])

    mask = np.arange(12).reshape(3, 4)
    canonical = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    flipped = Dataset()
    flipped.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]  # rows run toward the patient's right
    np.testing.assert_array_equal(dicom_out.to_source_pixels(mask, canonical, flipped), mask[:, ::-1])
    flipped.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]  # columns run anterior
    np.testing.assert_array_equal(dicom_out.to_source_pixels(mask, canonical, flipped), mask[::-1])


def test_a_series_moved_since_scoring_is_named_not_searched_for(cascaded, tmp_path):
    import shutil

    from sscjax.dicom_out import DicomOutError, export_cascade

    folder = shutil.copytree(cascaded[0], tmp_path / cascaded[0].name, ignore=shutil.ignore_patterns("dicom"))
    result = json.loads((folder / "scores.json").read_text())
    result["source"] = result["provenance"]["input"]["path"] = str(tmp_path / "moved")
    (folder / "scores.json").write_text(json.dumps(result))
    with pytest.raises(DicomOutError, match=f"the DICOM series it was scored from \\({tmp_path / 'moved'}\\) is gone"):
        export_cascade(folder)
    assert not (folder / "dicom").exists()
