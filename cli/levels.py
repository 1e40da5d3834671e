"""`ssc levels SCAN --model RUN`: the five Goh levels of a scan, as JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import series_option


@click.command()
@click.argument("scan", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model",
    "run",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An L-Net run folder (e.g. runs/lnet/fold0); its best checkpoint is used.",
)
@series_option
def levels(scan: Path, run: Path, series: str | None) -> None:
    """Find the five Goh levels in SCAN (a scan file or DICOM folder) with a trained L-Net.

    Prints {"scan", "levels_mm": world z of L1..L5 in mm, "slice_index": the nearest slices of the scan, counted
    from its lowest (feet-side) slice}.
    """
    from sscjax.io import read_scan
    from sscjax.lnet import predict_levels

    ct = read_scan(scan, series)  # a scan that is refused never costs loading the model
    prediction = predict_levels(run, ct)
    click.echo(json.dumps({**prediction.to_json(), "scan": str(scan)}))
