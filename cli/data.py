"""`ssc data`: check a cohort folder, make its reproducible splits, import the original study's spreadsheet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from sscjax.domain import LEVEL_NAMES

COHORT_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
MAX_WARNINGS_SHOWN = 20


@click.group()
def data() -> None:
    """Check, split and import cohorts (see docs/cohort_format.md for the folder format)."""


@contextlib.contextmanager
def _progress(label: str) -> Iterator:
    """A progress(done, total) callback drawing a bar on stderr, started on its first call."""
    with contextlib.ExitStack() as stack:
        bar = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(click.progressbar(length=total, label=label, file=sys.stderr))
            bar.update(done - bar.pos)

        yield update


def _row(name: str, cells: list[str], width: int) -> str:
    return f"  {name:<4}" + "".join(f"{c:>{width}}" for c in cells)


def format_summary(summary: dict) -> str:
    """The cohort summary as compact text."""
    lines = [
        f"cohort {summary['root']}: {summary['patients']} patients, {summary['levels_scored']} scored levels, "
        f"{100 * summary['healthy_share']:.0f} % of levels healthy (TOT = 0)",
        "score histogram (levels per bin; '0' = exactly 0, 'a-b' = above a up to b %):",
        _row("", summary["histogram_bins"], 7),
    ]
    lines += [_row(name, [str(c) for c in counts], 7) for name, counts in summary["histograms"].items()]
    lines.append("mean / median score per level (%):")
    lines.append(_row("", list(LEVEL_NAMES), 13))
    for name, means in summary["mean_per_level"].items():
        medians = summary["median_per_level"][name]
        lines.append(_row(name, [f"{m:.1f} / {d:.1f}" for m, d in zip(means, medians)], 13))
    span = summary["l1_to_l5_mm"]
    lines.append(f"L1 to L5 distance: {span['min']:.1f} .. {span['max']:.1f} mm")
    scans = summary["scans"]
    if scans is None:
        lines.append("scans: headers not read (--no-scans)")
    else:
        (zmin, ymin, xmin), (zmax, ymax, xmax) = scans["shape_zyx"]["min"], scans["shape_zyx"]["max"]
        (sxmin, symin, szmin), (sxmax, symax, szmax) = scans["spacing_xyz_mm"]["min"], scans["spacing_xyz_mm"]["max"]
        lines.append(
            f"scans: {zmin}..{zmax} slices of {ymin}..{ymax} x {xmin}..{xmax} pixels; spacing "
            f"{min(sxmin, symin):.3g}..{max(sxmax, symax):.3g} mm in-plane, "
            f"{szmin:.3g}..{szmax:.3g} mm between slices"
        )
    patterns = ", ".join(summary["patterns"]) or "none"
    lines.append(f"lung masks: {summary['lung_masks']}; texture patterns: {patterns}")
    splits = summary["splits"]
    lines.append(
        "splits: none yet (ssc data split)"
        if splits is None
        else f"splits: {splits['test']} test, folds of {'/'.join(map(str, splits['folds']))} (seed {splits['seed']})"
    )
    lines.append(f"fingerprint: {summary['fingerprint']}")
    warnings = summary["warnings"]
    if warnings:
        lines.append(f"{len(warnings)} warning(s):")
        lines += [f"  {w}" for w in warnings[:MAX_WARNINGS_SHOWN]]
        if len(warnings) > MAX_WARNINGS_SHOWN:
            lines.append(f"  ... and {len(warnings) - MAX_WARNINGS_SHOWN} more")
    return "\n".join(lines)


@data.command()
@click.argument("cohort_dir", type=COHORT_DIR)
@click.option("--no-scans", is_flag=True, help="Check only the CSVs and file names; do not read the scans (fast).")
@click.option(
    "--require-patterns",
    is_flag=True,
    help="Also require patterns/gg, ret and healthy (needed for S-Net data synthesis).",
)
def check(cohort_dir: Path, no_scans: bool, require_patterns: bool) -> None:
    """Validate a cohort and summarise it; list every problem and exit with code 2 if there are any.

    Every scan is read whole and checked as the other commands check it (geometry, HU values, enough slices
    for the five levels).

    ssc data check COHORT_DIR [--no-scans]
    """
    from sscjax.data.cohort import cohort_summary, load_cohort

    with _progress("reading scans") as progress:
        cohort = load_cohort(cohort_dir, check_scans=not no_scans, require_patterns=require_patterns, progress=progress)
    click.echo(format_summary(cohort_summary(cohort)))


@data.command()
@click.argument("cohort_dir", type=COHORT_DIR)
@click.option(
    "--folds", default=4, show_default=True, type=click.IntRange(min=2), help="Number of cross-validation folds."
)
@click.option(
    "--test-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of patients held out as the fixed test set (the paper: 50 of 230).",
)
@click.option("--n-test", type=click.IntRange(min=0), help="Exact number of test patients (overrides --test-fraction).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the patient shuffle.")
@click.option("--force", is_flag=True, help="Overwrite an existing, different splits.json.")
def split(cohort_dir: Path, folds: int, test_fraction: float, n_test: int | None, seed: int, force: bool) -> None:
    """Write COHORT_DIR/splits.json: a fixed test set and K folds, reproducible from the seed."""
    from sscjax.data.cohort import load_cohort
    from sscjax.data.splits import SPLITS_FILE, load_splits_file, make_splits, write_splits
    from sscjax.errors import SscError

    cohort = load_cohort(cohort_dir, check_scans=False, check_splits=False)
    splits = make_splits(cohort.ids, folds, test_fraction, n_test, seed)
    path = cohort_dir / SPLITS_FILE
    if path.exists():
        if load_splits_file(path)[0] == splits:
            click.echo(f"{path}: unchanged")
            return
        if not force:
            raise SscError(
                f"{path}: exists and differs from these splits; runs trained on it would no longer "
                "match (use --force to overwrite it)"
            )
    write_splits(cohort_dir, splits)
    click.echo(
        f"{path}: {len(splits.test)} test patients, {splits.n_folds} folds of "
        f"{'/'.join(str(len(f)) for f in splits.folds)} (seed {seed})"
    )


@data.command("import-goh")
@click.argument("xlsx", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--scans",
    "scans_dir",
    required=True,
    type=COHORT_DIR,
    help="Folder of the scans: <id>.mha/.nii.gz/..., DICOM folders <id>/, or <id>/CTimage.mha.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New cohort folder to write (must not exist or be empty).",
)
@click.option(
    "--positions",
    type=click.Choice(["mm", "index"]),
    default="mm",
    show_default=True,
    help="What L1_pos..L5_pos hold: world z in mm (the original study), or slice indices "
    "(0 = lowest slice) converted through each scan's geometry.",
)
@click.option("--copy", is_flag=True, help="Copy the scans into the cohort instead of linking to them.")
@click.option("--skip-missing", is_flag=True, help="Leave out patients without a scan instead of stopping.")
@click.option("--sheet", help="Sheet name (default: the first sheet).")
def import_goh(
    xlsx: Path, scans_dir: Path, out_dir: Path, positions: str, copy: bool, skip_missing: bool, sheet: str | None
) -> None:
    """Make a cohort from the original study's Goh-score spreadsheet (PatID, L{n}_pos, L{n}_disext, L{n}_gg,
    L{n}_retp) and a folder of scans; then validate it. The scans themselves are never modified."""
    from sscjax.data.goh import import_goh as run_import
    from sscjax.errors import CohortError

    with _progress("checking the new cohort") as progress:
        result = run_import(xlsx, scans_dir, out_dir, positions, copy, skip_missing, sheet, progress)
    how = "copies of" if copy else "links to"
    click.echo(f"{out_dir}: {len(result.ids)} patients ({how} their scans), levels.csv, scores.csv")
    if result.skipped:
        click.echo(f"left out (no scan): PatID {', '.join(result.skipped)}")
    if result.unused_scans:
        click.echo(f"scans not in the spreadsheet (not imported): {', '.join(p.name for p in result.unused_scans)}")
    if result.problems:
        raise CohortError(result.problems)
    click.echo("the cohort passes `ssc data check`")
