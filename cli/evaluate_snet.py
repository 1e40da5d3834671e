"""`ssc evaluate snet --model RUN --split valid|test`: how well a trained S-Net scores the level slices."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--model", "run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An S-Net run folder (e.g. runs/snet/fold0); its best checkpoint is used.")
@click.option("--split", default="valid", show_default=True, type=click.Choice(["valid", "test"]),
              help="Which of the run's patients to evaluate: its validation fold or the test set.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cohort folder, if it moved since training (default: the run's).")
def snet(run: Path, split: str, data_dir: Path | None) -> None:
    """Scoring agreement of an S-Net run on the true level slices: MAE (SD), weighted kappa and ICC(A,1)
    (95 % CI) per pattern, over all and per level; correlation and Bland-Altman plots; predictions.csv
    (scan_id,level,TOT,GG,RET) for `ssc evaluate --pred`. Written to RUN/eval/SPLIT/."""
    from sscjax import metrics
    from sscjax.snet import evaluate_snet

    with click.progressbar(length=1, label=f"slices ({split})") as bar:
        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        result = evaluate_snet(run, split, data_dir, progress)
    click.echo(metrics.agreement_markdown(result))
    click.echo(f"Wrote {len(result['files'])} files to {Path(result['files'][0]).parent}/")
