"""Results back to PACS as DICOM objects, built with highdicom (the optional extra `dicom`):

- the five level scores of a cascade result as a Structured Report: a TID 1500 Measurement Report
  (Comprehensive 3D SR) with one measurement group per level (tracking identifier L1..L5, TOT, GG and RET in
  percent, UCUM '%'), each referencing the image of the input series at that level;
- the five level slices with their lung outline and scores burnt in, as RGB Secondary Capture images;
- the lesion maps that `ssc explain` derives (lung pixels whose Delta P lies below the threshold), as a binary
  DICOM Segmentation with one segment per pattern (GG, RET), on the pixel grid of the input images it references.

The objects carry the input series' patient and study (they are copied from its DICOM headers) and reference its
images. A scan that was not read from DICOM has no images to reference: its SR and SC images get a new study (new
UIDs, the scan id as Patient ID), and a SEG, which must reference the images it segments, is refused.

Files go to OUT/<scan id>/dicom/ (`DICOM_FOLDER`), each written atomically. highdicom is imported only here, when
an object is made, so that sscjax works without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sscjax import __version__
from sscjax.domain import LEVEL_NAMES, N_LEVELS, SCORES
from sscjax.errors import SscError
from sscjax.io import Geometry, Scan, atomic_write, read_image, remove_partial_writes
from sscjax.results import RESULT_FILE, scanned_input

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from sscjax.explain import ScanExplanation

DICOM_FOLDER = "dicom"  # OUT/<scan id>/dicom/
SR_FILE = "scores_sr.dcm"
SEG_FILE = "lesions_seg.dcm"
SC_FILES = tuple(f"{name}_sc.dcm" for name in LEVEL_NAMES)
INSTALL = 'pip install -e ".[dicom]" (a source checkout) or pip install "sscjax[dicom]"'
MANUFACTURER = "sscjax"
# Series numbers of the objects written, chosen apart from a scanner's own (1..~100).
SERIES_NUMBERS = {"sr": 9801, "sc": 9802, "seg": 9803}
SEG_PATTERNS = ("GG", "RET")  # the lesion patterns of the SEG, in segment order (TOT is their union)
LEVEL_SITES = (
    "origin of the great vessels",
    "main carina",
    "pulmonary venous confluence",
    "halfway between L3 and L5",
    "1 cm above the right hemidiaphragm",
)
# The scores have no standard codes; they are coded in a private scheme (DICOM PS3.16 8.2: designators "99...").
SCHEME = "99SSCJAX"
SCHEME_NAME = "sscjax Goh scores of interstitial lung disease"
SCORE_MEANINGS = {
    "TOT": "Total ILD extent, % of lung area on the slice",
    "GG": "Ground-glass opacity extent, % of lung area on the slice",
    "RET": "Reticulation extent, % of lung area on the slice",
}
PATTERN_MEANINGS = {"GG": "Ground-glass opacity", "RET": "Reticulation"}
SC_MIN_PX = 512  # the level images are enlarged by a whole factor to at least this size, so the text is legible


class DicomOutError(SscError):
    """DICOM output that cannot be made: highdicom missing, an input without DICOM images to reference, or a
    source series that does not hold the slices of the result."""


@dataclass
class DicomExport:
    """What one export wrote: the files, whether the objects carry the input's DICOM identity (`fresh_uids`:
    False) or a new study made for a scan that was not DICOM (True), and the study they belong to."""

    folder: Path
    files: list[Path]
    fresh_uids: bool
    study_instance_uid: str
    patient_id: str | None
    referenced: list[str] = field(default_factory=list)  # the input's SOP instance UIDs that the objects reference

    def describe(self) -> str:
        """One line on the identity the objects carry."""
        if self.fresh_uids:
            return (
                f"the input is not DICOM: new study {self.study_instance_uid} and UIDs were made, Patient ID "
                f"{self.patient_id} (the scan id)"
            )
        return f"patient {self.patient_id or '(none)'}, study {self.study_instance_uid} of the input series"


def require_highdicom() -> None:
    """DicomOutError with the install line when highdicom (and with it pydicom) cannot be imported."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        raise DicomOutError(f"DICOM output needs highdicom, which is not installed: {INSTALL}") from None


def check_seg_input(scan: Scan) -> None:
    """Refuse, before any work, a lesion-map SEG of a scan that was not read from DICOM: a SEG references the
    images it segments."""
    if scan.dicom is None:
        raise DicomOutError(
            f"{scan.source}: is not a DICOM series, and a DICOM SEG must reference the DICOM images it segments; "
            "the lesion maps are written as .mha (*_derived.mha) beside the heat maps"
        )


# ---------------------------------------------------------------- the input series


def _series_headers(folder: Path, series_uid: str) -> list[Dataset]:
    """The headers (no pixel data) of every file of series `series_uid` in a DICOM folder."""
    from pydicom import dcmread

    if not folder.is_dir():
        raise DicomOutError(f"{folder}: the DICOM input of this result is not there any more (moved or deleted)")
    headers: list[Dataset] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:  # force: files without the 128-byte preamble are DICOM too (GDCM reads them)
            header = dcmread(path, stop_before_pixels=True, force=True)
            if header.get("SeriesInstanceUID") == series_uid:
                headers.append(header)
        except Exception:  # not a DICOM file (a README, a DICOMDIR's companions): GDCM skipped it too
            continue
    if not headers:
        raise DicomOutError(f"{folder}: holds no image of DICOM series {series_uid}")
    return headers


def _position(header: Dataset, normal: np.ndarray) -> float:
    """Where an image lies along the slice normal (mm)."""
    try:
        return float(np.asarray(header.ImagePositionPatient, np.float64) @ normal)
    except (AttributeError, TypeError, ValueError):
        raise DicomOutError(f"{header.filename}: has no Image Position (Patient) (0020,0032)") from None


def level_instances(
    folder: Path, series_uid: str, geometries: list[Geometry], shapes: list[tuple[int, int]]
) -> list[Dataset]:
    """The header of the image of series `series_uid` in `folder` that lies at each slice (its canonical one-slice
    geometry and (rows, columns)): the nearest along the slice normal, within a quarter of the series' spacing."""
    headers = _series_headers(folder, series_uid)
    try:
        iop = np.asarray(headers[0].ImageOrientationPatient, np.float64)
    except (AttributeError, TypeError, ValueError):
        raise DicomOutError(f"{headers[0].filename}: has no Image Orientation (Patient) (0020,0037)") from None
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([_position(h, normal) for h in headers])
    gaps = np.diff(np.sort(positions))
    tolerance = 0.25 * float(np.median(gaps)) if gaps.size else 0.5
    found = []
    for geometry, shape in zip(geometries, shapes):
        target = float(np.asarray(geometry.origin) @ normal)
        i = int(np.argmin(np.abs(positions - target)))
        if abs(positions[i] - target) > tolerance:
            raise DicomOutError(
                f"{folder}: series {series_uid} has no image at {target:.2f} mm along the slice normal (nearest "
                f"{positions[i]:.2f} mm); the result was not made from this series"
            )
        header = headers[i]
        if (int(header.Rows), int(header.Columns)) != tuple(shape):
            raise DicomOutError(
                f"{header.filename}: {header.Rows}x{header.Columns} pixels, but the result's slice is "
                f"{shape[0]}x{shape[1]}; the result was not made from this series"
            )
        found.append(header)
    return found


def _unique(headers: list[Dataset]) -> list[Dataset]:
    """Headers without repeats (two levels on one slice), first occurrence kept."""
    seen: dict[str, Dataset] = {}
    for header in headers:
        seen.setdefault(str(header.SOPInstanceUID), header)
    return list(seen.values())


def to_source_pixels(array: np.ndarray, geometry: Geometry, header: Dataset) -> np.ndarray:
    """A (rows, columns, ...) array on a canonical slice grid (`geometry`) in the pixel order of the source image
    `header`: columns reversed where its row direction points against the canonical x axis, rows where its column
    direction points against the canonical y axis (the canonical flips undone)."""
    iop = np.asarray(header.ImageOrientationPatient, np.float64)
    if iop[:3] @ geometry.matrix[:, 0] < 0:
        array = array[:, ::-1]
    if iop[3:] @ geometry.matrix[:, 1] < 0:
        array = array[::-1]
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------- shared pieces


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def _coding_schemes() -> list:
    import highdicom as hd

    return [hd.coding_schemes.CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME)]


def _concept(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _save(dataset: Dataset, path: Path) -> Path:
    with atomic_write(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def _built(what: str, where: str | Path, make, *args, **kwargs):
    """The object `make(*args, **kwargs)` returns; highdicom's refusal (a source header it cannot use, a value it
    does not take) as a DicomOutError naming `where`."""
    try:
        return make(*args, **kwargs)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DicomOutError(f"{where}: cannot make the DICOM {what}: {e}") from None


# ---------------------------------------------------------------- cascade: SC images and the SR


def _burnt_in(image_hu: np.ndarray, lung: np.ndarray, lines: list[str], notes: list[str]) -> tuple[np.ndarray, int]:
    """(an RGB uint8 image of a slice in a lung window with its lung outlined and `lines` of text at the top and
    `notes` at the bottom, the whole factor by which it is enlarged)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sscjax.data.slices import window
    from sscjax.plots import LUNG_OUTLINE, LUNG_WINDOW

    rows, cols = image_hu.shape
    factor = max(1, math.ceil(SC_MIN_PX / max(rows, cols)))
    dpi = 100
    fig = Figure(figsize=(cols * factor / dpi, rows * factor / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(window(image_hu), cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect="auto")
    if lung.any():
        ax.contour(lung.astype(float), levels=[0.5], colors=LUNG_OUTLINE, linewidths=1.0)
    ax.set(xlim=(-0.5, cols - 0.5), ylim=(rows - 0.5, -0.5))
    ax.set_axis_off()
    size = max(8.0, cols * factor / 50)
    box = {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2}
    style: dict[str, Any] = {"transform": ax.transAxes, "ha": "left", "bbox": box}
    ax.text(0.01, 0.99, "\n".join(lines), va="top", color="white", fontsize=size, family="monospace", **style)
    ax.text(0.01, 0.01, "\n".join(notes), va="bottom", color="yellow", fontsize=size * 0.8, **style)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    out = np.zeros((rows * factor, cols * factor, 3), np.uint8)  # the canvas may round its size by a pixel
    h, w = min(out.shape[0], pixels.shape[0]), min(out.shape[1], pixels.shape[1])
    out[:h, :w] = pixels[:h, :w]
    return out, factor


def _level_text(result: dict, k: int, source: Dataset | None) -> tuple[list[str], list[str]]:
    """The text burnt into level k's image: level, position (and the input image's instance number) and scores;
    its quality warnings and the scan's."""
    level = result["levels"][k]
    number = source.get("InstanceNumber") if source is not None else None
    lines = [
        f"{LEVEL_NAMES[k]}  z {level['z_mm']:.1f} mm  slice {level['slice_index']}"
        + (f"  image {number}" if number is not None else ""),
        "  ".join(f"{p} {level[p]:.1f}%" for p in SCORES),
    ]
    warnings = [w for w in result.get("warnings") or [] if w.get("level") in (None, k + 1)]
    notes = [f"! {w['code']}" for w in warnings] + [f"sscjax {__version__}: automated, unverified"]
    return lines, notes


def _sc_images(result: dict, slices: list[Scan], lungs: list[Scan], sources: list[Dataset] | None) -> list:
    """The five level images as RGB Secondary Capture images of one new series: in the input's study (copied from
    its image at each level, which each references) or, without `sources`, in a new study."""
    import highdicom as hd

    series_uid = hd.UID()
    study_uid = None if sources else hd.UID()
    images = []
    for k in range(N_LEVELS):
        lines, notes = _level_text(result, k, sources[k] if sources else None)
        pixels, factor = _burnt_in(slices[k].array[0], lungs[k].array[0] > 0, lines, notes)
        spacing = slices[k].geometry.spacing
        common: dict[str, Any] = {
            "pixel_array": pixels,
            "photometric_interpretation": hd.PhotometricInterpretationValues.RGB,
            "bits_allocated": 8,
            "coordinate_system": hd.CoordinateSystemNames.PATIENT,
            "series_instance_uid": series_uid,
            "series_number": SERIES_NUMBERS["sc"],
            "sop_instance_uid": hd.UID(),
            "instance_number": k + 1,
            "manufacturer": MANUFACTURER,
            "pixel_spacing": (spacing[1] / factor, spacing[0] / factor),  # rows, columns
            "patient_orientation": ("L", "P"),  # canonical: columns toward the patient's left, rows posterior
            "series_description": "sscjax Goh levels (scores burnt in)",
            "software_versions": __version__,
        }
        if sources:
            source = sources[k]
            image = _built("SC image", source.filename, hd.sc.SCImage.from_ref_dataset, source, **common)
            image.SourceImageSequence = [_reference_item(source)]
        else:
            image = _built(
                "SC image",
                result["source"],
                hd.sc.SCImage,
                study_instance_uid=study_uid,
                patient_id=result["scan"],
                **common,
            )
        image.BurnedInAnnotation = "YES"
        image.ImageComments = f"{LEVEL_NAMES[k]} ({LEVEL_SITES[k]}): " + ", ".join(
            f"{p} {result['levels'][k][p]:.1f} %" for p in SCORES
        )
        images.append(image)
    return images


def _reference_item(source: Dataset):
    """A Source Image Sequence item that names one image."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _structured_report(result: dict, references: list[Dataset], evidence: list[Dataset]):
    """The TID 1500 Measurement Report of a result's five levels, each group referencing `references[k]`."""
    import highdicom as hd

    codes = _codes()
    algorithm = hd.sr.AlgorithmIdentification(name="sscjax cascade (L-Net levels, S-Net scores)", version=__version__)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_device_uid(), name="sscjax", manufacturer_name=MANUFACTURER, model_name="sscjax"
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    groups = []
    for k in range(N_LEVELS):
        level, reference = result["levels"][k], references[k]
        image = hd.sr.SourceImageForMeasurement(reference.SOPClassUID, reference.SOPInstanceUID)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{LEVEL_NAMES[k]} ({LEVEL_SITES[k]})"
                ),
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
                measurements=[
                    hd.sr.Measurement(
                        name=_concept(p, SCORE_MEANINGS[p]),
                        value=float(level[p]),
                        unit=codes.UCUM.Percent,
                        referenced_images=[image],
                    )
                    for p in SCORES
                ],
                source_images=[hd.sr.SourceImageForMeasurementGroup(reference.SOPClassUID, reference.SOPInstanceUID)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTChestReport,
        imaging_measurements=groups,
        referenced_images=_unique(references),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="sscjax Goh scores (TOT, GG, RET per level)",
        software_versions=__version__,
        coding_schemes=_coding_schemes(),
    )


def _device_uid() -> str:
    """One UID for sscjax as the observing device, the same on every machine (a 2.25 UID from a hash)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None, entropy_srcs=["sscjax observer device"]))


def export_cascade(scan_folder: str | Path) -> DicomExport:
    """Write a finished cascade result's DICOM objects into SCAN_FOLDER/dicom/: the five level images as RGB
    Secondary Capture images (`SC_FILES`) and the scores as a Comprehensive 3D SR Measurement Report (`SR_FILE`,
    written last). SCAN_FOLDER is OUT/<scan id>/ of `ssc cascade` (scores.json, L1.mha .., L1_lung.mha ..)."""
    require_highdicom()
    scan_folder = Path(scan_folder)
    path = scan_folder / RESULT_FILE
    if not path.is_file():
        raise DicomOutError(f"{path}: no cascade result here (scores.json is written when a scan is finished)")
    result = json.loads(path.read_text(encoding="utf-8"))
    slices = [read_image(scan_folder / f"{name}.mha") for name in LEVEL_NAMES]
    lungs = [read_image(scan_folder / f"{name}_lung.mha") for name in LEVEL_NAMES]
    identity = result.get("dicom")
    sources = None
    if identity is not None:
        series = scanned_input(result)
        if series is None:
            raise DicomOutError(f"{path}: the DICOM series it was scored from ({result.get('source')}) is gone")
        sources = level_instances(
            series,
            identity["series_instance_uid"],
            [s.geometry for s in slices],
            [s.shape[1:] for s in slices],
        )
    images = _sc_images(result, slices, lungs, sources)
    references = sources if sources is not None else images
    report = _built("SR", path, _structured_report, result, references, _unique(references))
    folder = scan_folder / DICOM_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)
    files = [_save(image, folder / name) for image, name in zip(images, SC_FILES)]
    files.append(_save(report, folder / SR_FILE))
    return DicomExport(
        folder,
        files,
        fresh_uids=sources is None,
        study_instance_uid=str(report.StudyInstanceUID),
        patient_id=str(report.PatientID) or None,
        referenced=[str(s.SOPInstanceUID) for s in sources or []],
    )


# ---------------------------------------------------------------- explain: the lesion-map SEG


def lesion_masks(found: ScanExplanation) -> np.ndarray:
    """(N, H, W, len(SEG_PATTERNS)) uint8: each explained slice's derived segmentation of each lesion pattern on
    the slice's own grid, exactly as `ssc explain` writes it (*_derived.mha)."""
    from sscjax.explain import to_native

    columns = [SCORES.index(p) for p in SEG_PATTERNS]
    return np.stack(
        [
            to_native(exp.segmentation.astype(np.uint8), image.shape, order=0)[..., columns]
            for exp, image in zip(found.explanations, found.slices_hu)
        ]
    )


def _segment_descriptions(found: ScanExplanation) -> list:
    """One SEG segment per lesion pattern, labelled with the threshold that made it, by the heat-map algorithm."""
    import highdicom as hd

    codes = _codes()
    thresholds = {p: float(found.explanations[0].threshold[SCORES.index(p)]) for p in SEG_PATTERNS}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="sscjax replacement heat maps",
        family=codes.DCM.ArtificialIntelligence,
        version=__version__,
        parameters={f"threshold_{p}_pp": f"{thresholds[p]:g}" for p in SEG_PATTERNS},
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=f"{p} (Delta P < {thresholds[p]:g} pp)",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_concept(p, PATTERN_MEANINGS[p]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{found.scan_id} {p} lesion map",
            anatomic_regions=[codes.SCT.Lung],
        )
        for i, p in enumerate(SEG_PATTERNS)
    ]


def export_explanation(found: ScanExplanation, source: str | Path, out_dir: str | Path) -> DicomExport:
    """Write the lesion maps of `ssc explain` (the derived segmentations of GG and RET) as one binary DICOM SEG,
    OUT/<scan id>/dicom/lesions_seg.dcm, referencing the images of the input series (read from `source`, the DICOM
    folder the scan came from) at the explained slices, on their pixel grid and with their geometry."""
    import highdicom as hd

    require_highdicom()
    if found.dicom is None:
        raise DicomOutError(
            f"{source}: is not a DICOM series, and a DICOM SEG must reference the DICOM images it segments"
        )
    shapes = [image.shape for image in found.slices_hu]
    headers = level_instances(Path(source), found.dicom["series_instance_uid"], found.geometries, shapes)
    if "FrameOfReferenceUID" not in headers[0]:
        raise DicomOutError(
            f"{headers[0].filename}: has no Frame of Reference UID (0020,0052), which every CT image has and a "
            "SEG needs to place its frames"
        )
    masks = lesion_masks(found)
    frames: dict[str, tuple[Dataset, np.ndarray]] = {}
    for header, geometry, mask in zip(headers, found.geometries, masks):
        frames.setdefault(str(header.SOPInstanceUID), (header, to_source_pixels(mask, geometry, header)))
    sources = [header for header, _ in frames.values()]
    pixels = np.stack([mask for _, mask in frames.values()])
    seg = _built(
        "SEG",
        source,
        hd.seg.Segmentation,
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(found),
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="sscjax",
        software_versions=__version__,
        device_serial_number="none",
        content_label="LESIONS",
        content_description="GG and RET lesion maps derived from heat maps",
        series_description="sscjax lesion maps (GG, RET)",
        omit_empty_frames=False,
        coding_schemes=_coding_schemes(),
    )
    folder = Path(out_dir) / found.scan_id / DICOM_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(folder)
    path = _save(seg, folder / SEG_FILE)
    return DicomExport(
        folder,
        [path],
        fresh_uids=False,
        study_instance_uid=str(seg.StudyInstanceUID),
        patient_id=str(seg.PatientID) or None,
        referenced=list(frames),
    )
