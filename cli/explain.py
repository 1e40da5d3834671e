"""`ssc explain`: replacement heat maps of the cascade slices; `ssc explain calibrate`: their thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sscjax.configs.snet import OCCLUSIONS
from sscjax.domain import SCORES

from .common import (
    LazyBar,
    device_option,
    lung_mask_option,
    model_options,
    resolve_models,
    series_option,
    set_option,
)

if TYPE_CHECKING:
    from sscjax.explain import ScanExplanation

PATTERN_CHOICES = (*SCORES, "all")
CHUNK_HELP = (
    "Patch positions per forward batch (explain.chunk) [default: the run's, else 32; 8 on a CPU for slices "
    "of 256 px or more]."
)


@click.group(invoke_without_command=True)
@click.option("--scan", type=click.Path(path_type=Path), help="The scan (file or DICOM folder) to explain.")
@series_option
@click.option(
    "--pattern",
    type=click.Choice(PATTERN_CHOICES, case_sensitive=False),
    default="all",
    show_default=True,
    help="Which score's heat maps to write (all three are computed in one pass).",
)
@model_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Output folder: the maps go to OUT/<scan>/explain/.",
)
@click.option(
    "--slice-index",
    "slice_index",
    multiple=True,
    type=int,
    help="Explain this slice (canonical index, 0 = lowest) instead of the five levels; repeatable.",
)
@click.option("--levels", "levels_text", metavar="z1,z2,z3,z4,z5", help="The five levels in world mm (skip the L-Net).")
@click.option(
    "--healthy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Healthy-lung texture patch (default: the S-Net cohort's patterns/healthy); the authors' mode tiles it "
    "at its own pixel size.",
)
@lung_mask_option
@click.option(
    "--occlusion",
    type=click.Choice(OCCLUSIONS),
    help="'replace' with healthy texture (the paper), classic 'constant' occlusion for comparison, or 'authors' "
    "(the authors' code, docs/heatmaps.md) (explain.occlusion) [default: the run's: replace, for imported authors' "
    "networks authors].",
)
@click.option(
    "--threshold",
    type=float,
    help="Delta P threshold (percentage points) of the derived segmentation (default: the S-Net run's "
    "calibration, else its explain.threshold: -1, in the authors' mode their -0.6 for all patterns).",
)
@click.option("--chunk", type=click.IntRange(1), help=CHUNK_HELP)
@click.option(
    "--dicom-out",
    is_flag=True,
    help="Also write the GG and RET lesion maps as a DICOM SEG referencing the input series' images "
    '(OUT/<scan>/dicom/lesions_seg.dcm; DICOM input only; needs highdicom: pip install -e ".[dicom]").',
)
@set_option("explain.stride_px=8")
@device_option
@click.pass_context
def explain(
    ctx,
    scan,
    series,
    pattern,
    lnet_runs,
    snet_runs,
    workdir,
    out,
    slice_index,
    levels_text,
    healthy,
    lung_mask,
    occlusion,
    threshold,
    chunk,
    dicom_out,
    assignments,
):
    """Replacement heat maps (the paper's Fig. 6) for a scan's five level slices.

    A healthy-lung patch slides over each slice (the paper's 64 px patch and 16 px stride at 512 px, scaled to the
    S-Net's input size); Delta P = S-Net(replaced) - S-Net(original), averaged over the positions covering each
    pixel. Blue (Delta P < 0): the region was seen as diseased. Writes per slice and pattern the Delta P map
    (.mha with the slice's geometry, .npy), the derived segmentation (.mha) and a PNG overlay, and explain.json
    (with a DICOM series' identity as `dicom`). The settings are the S-Net run's `explain` section (its
    config.json), changed by --set and the options.
    """
    if ctx.invoked_subcommand is not None:
        return
    if scan is None:
        raise click.UsageError("give --scan (or a subcommand such as `calibrate`)")
    from sscjax import explain as ex
    from sscjax.cascade import parse_levels
    from sscjax.io import check_writable, read_mask, read_scan

    if dicom_out:
        from sscjax.dicom_out import require_highdicom

        require_highdicom()
    levels = parse_levels(levels_text) if levels_text else None
    check_writable(out)
    image = read_scan(scan, series)
    if dicom_out:
        from sscjax.dicom_out import check_seg_input

        check_seg_input(image)
    lung = read_mask(lung_mask, image) if lung_mask else None
    models = resolve_models(lnet_runs, snet_runs, workdir, need_lnet=not slice_index and levels is None)
    settings = ex.explain_settings(models.snets[0].config, assignments, chunk=chunk, occlusion=occlusion)
    scores = SCORES if pattern.lower() == "all" else (pattern.upper(),)
    click.echo(f"Explaining {scan} ...", err=True)
    found = ex.explain_scan(
        image,
        models,
        slice_index=list(slice_index) or None,
        levels_mm=levels,
        healthy=healthy,
        threshold=threshold,
        settings=settings,
        lung=lung,
    )
    _echo_explanation(found, scores, ex.write_scan_explanation(found, out, scores))
    if dicom_out:
        from sscjax.dicom_out import export_explanation

        export = export_explanation(found, scan, out)
        click.echo(f"DICOM SEG of the GG and RET lesion maps: {export.files[0]} ({export.describe()})")


def _echo_explanation(found: ScanExplanation, scores: tuple[str, ...], folder: Path) -> None:
    """A table of the explained slices' S-Net and derived scores and thresholds for `scores`, then where the
    written maps are."""
    click.echo(f"{'slice':8s}{'pattern':>8s}{'S-Net %':>10s}{'derived %':>11s}{'threshold':>11s}")
    for name, exp in zip(found.names, found.explanations):
        for p in scores:
            j = SCORES.index(p)
            click.echo(f"{name:8s}{p:>8s}{exp.scores[j]:10.1f}{exp.derived[j]:11.1f}{exp.threshold[j]:11.1f}")
    click.echo(f"Heat maps, overlays and segmentations: {folder}")


@explain.command()
@click.option(
    "--model",
    "run",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An S-Net run folder.",
)
@click.option(
    "--split",
    type=click.Choice(["valid", "test"]),
    default="valid",
    show_default=True,
    help="The run's patients to calibrate on.",
)
@click.option(
    "--healthy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Healthy-lung texture patch (default: the cohort's patterns/healthy).",
)
@click.option(
    "--patients",
    type=click.IntRange(1),
    help="Calibrate on the split's first N patients only (default: all of them).",
)
@click.option("--chunk", type=click.IntRange(1), help=CHUNK_HELP)
@set_option("explain.search_step=0.05")
@device_option
def calibrate(run, split, healthy, patients, chunk, assignments):
    """Search the Delta P threshold (explain.search: -4..0 percentage points) that makes the derived scores agree
    best (MAE) with the S-Net's, per pattern, on a run's validation slices; report R^2 (the paper's Fig. 7)."""
    from sscjax import explain as ex
    from sscjax import runs
    from sscjax.io import check_writable

    check_writable(runs.calibration_dir(run))
    settings = ex.explain_settings(runs.read_config(run, "snet"), assignments, chunk=chunk)
    bar = LazyBar("Heat maps")
    result, folder = ex.calibrate_run(run, split, healthy, bar, settings=settings, patients=patients)
    bar.close()
    click.echo(f"{'pattern':8s}{'threshold (pp)':>16s}{'MAE %':>8s}{'R^2':>8s}")
    for j, p in enumerate(SCORES):
        click.echo(f"{p:8s}{result.thresholds[j]:16.1f}{result.mae[j]:8.2f}{result.r2[j]:8.2f}")
    click.echo(f"Calibration and scatter plot: {folder}")
