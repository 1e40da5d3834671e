"""`ssc report`: HTML pages of scans already scored, one per scan and one for the cohort."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The folder `ssc explain --out` wrote the heat maps to [default: OUT_DIR].",
)
def report(out_dir, explain_dir):
    """Write a self-contained HTML report of every scan `ssc cascade` finished in OUT_DIR, and a cohort page.

    Each OUT_DIR/<scan>/report.html holds the patient and series (DICOM input), the quality warnings, the scores
    per level with their fold spread and Goh scores, a coronal view with the levels (when the scan can still be
    read from where it was scored), the level slices with the lung outlined, the heat maps of `ssc explain` if
    any, and the models and versions used. OUT_DIR/report.html links every scan's page with its mean scores and
    warnings. Images are embedded: the pages open offline and fetch nothing. Prints the pages written.
    """
    echo_reports(out_dir, explain_dir)


def echo_reports(out_dir: Path, explain_dir: Path | None = None) -> None:
    """Write the report pages of OUT (`sscjax.scan_report.write_reports`) and print their paths."""
    from sscjax.scan_report import write_reports

    for path in write_reports(out_dir, explain_dir):
        click.echo(path)
