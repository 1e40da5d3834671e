"""`ssc cascade`: five levels and their TOT/GG/RET scores for one or many scans."""

from __future__ import annotations

from pathlib import Path

import click

from sscjax.results import RESULT_FILE

from .common import (
    device_option,
    echo_failures,
    lung_mask_option,
    model_options,
    resolve_models,
    scans_from,
    series_option,
    set_option,
)
from .report import echo_reports


@click.command()
@click.option(
    "--scan",
    "scans",
    multiple=True,
    required=True,
    help="A scan file, a DICOM folder, or a folder of scans; repeat for more.",
)
@series_option
@model_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Output folder: one sub-folder per scan.",
)
@click.option(
    "--levels",
    "levels_text",
    metavar="z1,z2,z3,z4,z5",
    help="Skip the L-Net: the five levels in world mm (L1 highest), for a single scan.",
)
@lung_mask_option
@click.option("--all-slices", is_flag=True, help="Also score every slice of the lung range (CSV and plot).")
@click.option("--report", "html", is_flag=True, help="Then write the scans' HTML pages (`ssc report`).")
@click.option(
    "--dicom-out",
    is_flag=True,
    help="Also write DICOM for PACS into OUT/<scan>/dicom/: the scores as a Structured Report, the level slices "
    'with lung outline and scores as Secondary Capture images (needs highdicom: pip install -e ".[dicom]").',
)
@click.option(
    "--overwrite", is_flag=True, help="Redo scans whose results exist (default: skip them, so a killed run resumes)."
)
@set_option("quality.lung_hu=[-950,-400]")
@device_option
def cascade(
    scans,
    series,
    lnet_runs,
    snet_runs,
    workdir,
    out,
    levels_text,
    lung_mask,
    all_slices,
    html,
    dicom_out,
    overwrite,
    assignments,
):
    """Score scans end to end: L-Net levels -> nearest slices -> S-Net TOT, GG, RET (%) per level.

    With several trained folds (by default every fold under WORKDIR/lnet and WORKDIR/snet) the scores are the
    ensemble mean and `spread` is the SD between folds. Scores lie in 0..100 %; scores.json also keeps the networks'
    unbounded outputs under `raw`, quality `warnings` (printed after the scores) and the `provenance` (versions,
    device, runs with config and checkpoint hashes, the input's sha256). Writes OUT/<scan>/scores.json, scores.csv,
    the five slices (.mha with their geometry), their lung masks and montage.png, and OUT/scores.csv for all scans
    with its provenance beside it (OUT/scores.provenance.json). A DICOM series' identity (patient, study and series)
    goes into scores.json as `dicom`. The warnings' limits are settings (`--set quality.<name>=<value>`; their
    defaults and reasons in docs/outputs.md), recorded in the provenance as `quality_limits`. Two scans with one id (file name without extension, or DICOM folder name) are
    refused, since their results would share a folder.
    """
    from sscjax import cascade as cs
    from sscjax.errors import SscError
    from sscjax.io import check_writable, read_mask, read_scan
    from sscjax.quality import quality_limits

    if dicom_out:
        from sscjax.dicom_out import require_highdicom

        require_highdicom()
    paths = cs.output_ids(scans_from(scans))
    levels = cs.parse_levels(levels_text) if levels_text else None
    if levels is not None and len(paths) > 1:
        raise click.UsageError("--levels names the levels of one scan; give a single --scan with it")
    if lung_mask is not None and len(paths) > 1:
        raise click.UsageError("--lung-mask is the lung mask of one scan; give a single --scan with it")
    if series is not None and len(paths) > 1:
        raise SscError(
            f"--series names a series of one DICOM folder, but --scan gives {len(paths)} scans; give that folder alone"
        )
    limits = quality_limits(assignments)
    check_writable(out)
    if series is not None and not overwrite:
        _refuse_other_series(out / next(iter(paths)), series)
    models = resolve_models(lnet_runs if levels is None else (), snet_runs, workdir, need_lnet=levels is None)
    todo = [p for sid, p in paths.items() if overwrite or not cs.result_done(out, sid)]
    if len(todo) < len(paths):
        click.echo(f"{len(paths) - len(todo)} scan(s) already done in {out} (skipped; --overwrite redoes them)")
    failures = {}
    with click.progressbar(todo, label="Scoring", show_pos=True, item_show_func=lambda p: p.name if p else None) as bar:
        for path in bar:
            try:
                image = read_scan(path, series)
                lung = read_mask(lung_mask, image) if lung_mask else None
                result = cs.run_cascade(image, models, levels, all_slices, lung=lung, limits=limits)
                cs.write_result(result, out)
            except SscError as e:
                failures[str(path)] = str(e)
    for sid, path in paths.items():
        if str(path) not in failures and cs.result_done(out, sid):
            _print_scores(out / sid / RESULT_FILE)
            if dicom_out:
                _export_dicom(out / sid, path, failures)
    if any(cs.result_done(out, sid) for sid in paths):
        click.echo(f"All scans' levels: {cs.collect_scores(out, models.records)} (provenance: {cs.BATCH_PROVENANCE})")
        if html:
            echo_reports(out)
    echo_failures(failures, len(paths))


def _refuse_other_series(folder: Path, series: str) -> None:
    """Refuse to skip a finished scan folder whose results another input made than the --series asked for."""
    import json

    from sscjax.errors import SscError

    if not (folder / RESULT_FILE).is_file():
        return
    made = (json.loads((folder / RESULT_FILE).read_text(encoding="utf-8")).get("dicom") or {}).get(
        "series_instance_uid"
    )
    if made != series:
        raise SscError(
            f"{folder} holds the results of {f'DICOM series {made}' if made else 'another scan'}, not of series "
            f"{series}; --overwrite replaces them, or choose another --out"
        )


def _print_scores(path: Path) -> None:
    import json

    result = json.loads(path.read_text(encoding="utf-8"))
    click.echo(f"\n{result['scan']}  ({path.parent})")
    if dicom := result.get("dicom"):
        click.echo(
            f"  DICOM series {dicom['series_instance_uid']} (patient {dicom['patient_id']}, "
            f"study date {dicom['study_date']})"
        )
    click.echo("  level  z (mm)   slice    TOT     GG    RET   (rounded to 5 %)")
    for lv in result["levels"]:
        click.echo(
            f"  L{lv['level']}   {lv['z_mm']:8.1f} {lv['slice_index']:6d}  {lv['TOT']:6.1f} {lv['GG']:6.1f} "
            f"{lv['RET']:6.1f}   ({lv['TOT_5']}/{lv['GG_5']}/{lv['RET_5']})"
        )
    mean = result["mean"]
    click.echo(f"  mean                    {mean['TOT']:6.1f} {mean['GG']:6.1f} {mean['RET']:6.1f}")
    if "warnings" not in result:  # results of an sscjax before the quality checks
        return
    click.echo(f"  {len(result['warnings'])} quality warning(s){':' if result['warnings'] else ''}")
    for warning in result["warnings"]:
        click.echo(f"    {warning['code']}: {warning['message']}")


def _export_dicom(folder: Path, path: Path, failures: dict[str, str]) -> None:
    """Write a finished scan's DICOM objects (--dicom-out) and say where and with which identity; a failure is
    the scan's failure."""
    from sscjax.dicom_out import export_cascade
    from sscjax.errors import SscError

    try:
        export = export_cascade(folder)
    except SscError as e:
        failures[str(path)] = str(e)
        return
    click.echo(f"  DICOM: the SR and {len(export.files) - 1} SC images in {export.folder}")
    click.echo(f"    {export.describe()}")
