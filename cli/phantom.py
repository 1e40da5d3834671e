"""`ssc phantom`: write a synthetic chest-CT cohort with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--patients",
    "-n",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Number of patients (one scan each).",
)
@click.option(
    "--preset",
    type=click.Choice(["small", "full"]),
    default="small",
    show_default=True,
    help="small: 128x128 in-plane, ~100 slices of ~3 mm (about a second per scan); "
    "full: 512x512, 0.5-1.5 mm slices (seconds per scan to draw, as long again to write; "
    "0.1-0.25 GB per scan on disk).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Cohort seed; patient i uses a seed derived from (seed, i), so it can be regenerated alone.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into OUT even if it is not empty (replaces an earlier phantom cohort's files there; "
    "other files are left alone).",
)
def phantom(out: Path, patients: int, preset: str, seed: int, overwrite: bool) -> None:
    """Generate a synthetic chest-CT cohort in OUT: scans, levels, scores, lung masks, texture patterns,
    and the exact truth (lesion masks, exact scores, parameters) in OUT/truth.
    """
    import numpy as np

    from sscjax.phantom import write_cohort
    from sscjax.phantom.cohort import check_out_dir

    check_out_dir(out, overwrite)
    totals: list[float] = []
    with click.progressbar(length=patients, label=f"Phantoms ({preset})", show_pos=True) as bar:

        def done(case):
            totals.extend(case.scores[:, 0].tolist())
            bar.update(1)

        write_cohort(out, patients, preset, seed, overwrite=overwrite, progress=done)
    tot = np.asarray(totals)
    click.echo(
        f"Wrote {patients} patient(s) to {out}: {np.mean(tot == 0) * 100:.0f} % of the {tot.size} levels "
        f"healthy (TOT = 0), mean TOT {tot.mean():.1f} %, max TOT {tot.max()} %."
    )
