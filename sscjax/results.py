"""What `ssc cascade` leaves for each finished scan in OUT/<scan id>/ that other commands (report, DICOM export,
batch provenance) read back: the result file, written last so that it marks a finished scan, and the input it was
scored from. Imports neither JAX nor SimpleITK."""

from __future__ import annotations

from pathlib import Path

RESULT_FILE = "scores.json"


def scanned_input(result: dict) -> Path | None:
    """The file or folder a result was scored from: its provenance's absolute input path, else its `source` as
    given, the first that exists; None when neither does (moved or deleted since)."""
    provenance = result.get("provenance")
    recorded = provenance.get("input") if isinstance(provenance, dict) else None
    paths = [recorded.get("path") if isinstance(recorded, dict) else None, result.get("source")]
    return next((Path(p) for p in paths if isinstance(p, str) and p and Path(p).exists()), None)
