"""`ssc evaluate lnet --model RUN --split valid|test`: how well a trained L-Net finds the levels."""

from __future__ import annotations

from pathlib import Path

import click


def _number(value, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


@click.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An L-Net run folder (e.g. runs/lnet/fold0); its best checkpoint is used.")
@click.option("--split", default="valid", show_default=True, type=click.Choice(["valid", "test"]),
              help="Which of the run's patients to evaluate: its validation fold or the test set.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cohort folder, if it moved since training (default: the run's).")
def lnet(run: Path, split: str, data_dir: Path | None) -> None:
    """Level-finding agreement of an L-Net run: MAE (SD) in slices of the original scans and in mm, ICC(A,1)
    per level, Bland-Altman and correlation plots; written to RUN/eval/SPLIT/."""
    from sscjax.lnet import evaluate_lnet

    with click.progressbar(length=1, label=f"levels ({split})") as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        result = evaluate_lnet(run, split, data_dir, progress)
    click.echo("| level | n | MAE (SD) slices | MAE (SD) mm | ICC(A,1) [95% CI] |")
    click.echo("|---|---|---|---|---|")
    for name, m in [*result["levels"].items(), ("all", result["all"])]:
        lo, hi = m["icc_ci"]
        click.echo(f"| {name} | {m['n']} | {_number(m['mae_slices'])} ({_number(m['sd_slices'])}) | "
                   f"{_number(m['mae_mm'])} ({_number(m['sd_mm'])}) | "
                   f"{_number(m['icc'])} [{_number(lo)}, {_number(hi)}] |")
    click.echo(f"Wrote {len(result['files'])} files to {Path(result['files'][0]).parent}/")
