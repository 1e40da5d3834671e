"""`ssc evaluate`: agreement statistics of predicted against reference Goh scores (CSV files).

Without a subcommand it evaluates `--pred` against `--truth`; subcommands (e.g. per-network evaluations)
hang off the same group.
"""

from __future__ import annotations

from pathlib import Path

import click

from sscjax.networks import network

from .common import LazyBar, run_evaluation_options

CSV_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
CSV_OPTIONS = ("pred", "truth", "compare", "out", "only_predicted")


@click.group(invoke_without_command=True, subcommand_metavar="[COMMAND [ARGS]...]")
@click.option(
    "--pred",
    type=CSV_FILE,
    help="Predicted scores: CSV with scan_id,level,TOT,GG,RET (percent, level 1-5). "
    "Rows repeated for one scan and level (e.g. several folds) are averaged.",
)
@click.option("--truth", type=CSV_FILE, help="Reference scores, same columns (e.g. a cohort's scores.csv).")
@click.option(
    "--compare",
    type=CSV_FILE,
    help="A second method's predictions: paired Wilcoxon and t-tests of the two methods' absolute errors per pattern.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for metrics.json/.md/.csv and the plots.",
)
@click.option(
    "--only-predicted",
    is_flag=True,
    help="Evaluate only the reference rows that have a prediction "
    "(e.g. a test set scored against the whole cohort's scores.csv); otherwise every row must match.",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    pred: Path | None,
    truth: Path | None,
    compare: Path | None,
    out: Path | None,
    only_predicted: bool,
) -> None:
    """Agreement of predicted with reference scores: MAE (SD), weighted kappa, ICC(A,1), plots.

    ssc evaluate --pred PRED.csv --truth TRUTH.csv [--compare OTHER.csv] --out DIR
    """
    given = [f"--{name.replace('_', '-')}" for name in CSV_OPTIONS if ctx.params[name]]
    if ctx.invoked_subcommand is not None:
        if given:
            raise click.UsageError(
                f"{', '.join(given)} belong(s) to the CSV evaluation, not to '{ctx.invoked_subcommand}'", ctx
            )
        return
    missing = [f"--{name}" for name, value in (("pred", pred), ("truth", truth), ("out", out)) if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give a subcommand)", ctx)
    assert pred is not None and truth is not None and out is not None  # none is missing
    from sscjax.report import evaluate_csv

    echo_report(*evaluate_csv(pred, truth, compare, out, only_predicted), out)


def echo_report(markdown: str, written: list[Path], out: Path) -> None:
    """Print an agreement report's tables and the files it wrote."""
    click.echo(markdown)
    click.echo(f"Wrote {len(written)} files to {out}/: {', '.join(p.name for p in written)}")


def _number(value, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


@evaluate.command()
@run_evaluation_options(network("lnet").title)
def lnet(run: Path, split: str, data_dir: Path | None) -> None:
    """Level-finding agreement of an L-Net run: MAE (SD) in slices of the original scans and in mm, ICC(A,1)
    per level, Bland-Altman and correlation plots; written to RUN/eval/SPLIT/."""
    from sscjax import runs
    from sscjax.io import check_writable

    check_writable(runs.eval_dir(run, split))
    bar = LazyBar(f"levels ({split})")
    result = network("lnet").evaluate(run, split, data_dir, bar)
    bar.close()
    click.echo("| level | n | MAE (SD) slices | MAE (SD) mm | ICC(A,1) [95% CI] |")
    click.echo("|---|---|---|---|---|")
    for name, m in [*result["levels"].items(), ("all", result["all"])]:
        lo, hi = m["icc_ci"]
        click.echo(
            f"| {name} | {m['n']} | {_number(m['mae_slices'])} ({_number(m['sd_slices'])}) | "
            f"{_number(m['mae_mm'])} ({_number(m['sd_mm'])}) | "
            f"{_number(m['icc'])} [{_number(lo)}, {_number(hi)}] |"
        )
    click.echo(f"Wrote {len(result['files'])} files to {Path(result['files'][0]).parent}/")


@evaluate.command()
@run_evaluation_options(network("snet").title)
def snet(run: Path, split: str, data_dir: Path | None) -> None:
    """Scoring agreement of an S-Net run on the true level slices: MAE (SD), weighted kappa and ICC(A,1)
    (95 % CI) per pattern, over all and per level; correlation and Bland-Altman plots; predictions.csv
    (scan_id,level,TOT,GG,RET) for `ssc evaluate --pred`. Written to RUN/eval/SPLIT/."""
    from sscjax import metrics, runs
    from sscjax.io import check_writable

    check_writable(runs.eval_dir(run, split))
    bar = LazyBar(f"slices ({split})")
    result = network("snet").evaluate(run, split, data_dir, bar)
    bar.close()
    click.echo(metrics.agreement_markdown(result))
    click.echo(f"Wrote {len(result['files'])} files to {Path(result['files'][0]).parent}/")
