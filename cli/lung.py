"""`ssc lung`: a lung mask from a CT scan or a single slice, written with the scan's geometry."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import series_option


def _overwrites_input(out: Path, scan: Path) -> bool:
    """Whether writing `out` would replace the scan file or a file of the scan's DICOM folder."""
    if not out.exists():
        return False
    return os.path.samefile(out, scan) or (scan.is_dir() and out.resolve().parent == scan.resolve())


@click.command()
@click.argument("scan", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--out",
    "mask_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Mask file to write (.nii.gz, .mha, .nrrd or .nii): uint8, 1 = lung, with SCAN's geometry and "
    "storage order (its voxel array overlays SCAN's).",
)
@series_option
def lung(scan: Path, mask_path: Path, series: str | None) -> None:
    """Compute the lung mask of SCAN (a scan file or DICOM folder; single slices allowed).

    Classic image processing, no learned weights. Prints the size of each lung: mL for a volume,
    cm^2 for a single slice.
    """
    from sscjax.errors import SscError
    from sscjax.io import WRITE_EXTENSIONS, check_writable, in_file_orientation, read_scan, write_image
    from sscjax.lung import lung_mask, lung_sizes

    if _overwrites_input(mask_path, scan):
        raise SscError(f"{mask_path}: would overwrite the input scan {scan}; choose another output file")
    if not mask_path.name.lower().endswith(WRITE_EXTENSIONS):
        raise SscError(f"{mask_path}: cannot write a mask in this format (use {', '.join(WRITE_EXTENSIONS)})")
    check_writable(mask_path.parent)
    ct = read_scan(scan, series, volume=False)
    mask = lung_mask(ct)
    write_image(mask_path, *in_file_orientation(mask, ct))
    sizes = lung_sizes(mask, ct.geometry)
    unit = "cm^2" if ct.n_slices == 1 else "mL"
    for side, size in sizes.items():
        click.echo(f"{side} lung: {size:.1f} {unit}")
    click.echo(f"total: {sum(sizes.values()):.1f} {unit}")
    click.echo(f"wrote {mask_path}")
