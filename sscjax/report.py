"""Agreement reports written to a folder: metrics.json, metrics.md and metrics.csv (per pattern and per level),
the paired comparison with a second method if any, and Bland-Altman and correlation plots per pattern; and the
whole evaluation of predicted against reference score CSV files (`ssc evaluate --pred --truth`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sscjax import metrics, plots
from sscjax.domain import SCORES
from sscjax.errors import SscError
from sscjax.io import atomic_write, check_writable, write_csv, write_json


def read_scores(path: str | Path) -> pd.DataFrame:
    """A scores CSV as a table of strings (validated and typed later by `sscjax.metrics`)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SscError(f"{path}: not a readable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


def evaluate_csv(
    pred: Path, truth: Path, compare: Path | None, out: Path, only_predicted: bool = False
) -> tuple[str, list[Path]]:
    """Agreement of the scores in `pred` with those in `truth` (and the paired comparison with `compare`): the
    report written to `out` (see `write_agreement`); returns its markdown tables and the files written."""
    check_writable(out)
    pred_table, truth_table = read_scores(pred), read_scores(truth)
    joined, merged = metrics.join_truth(
        pred_table, truth_table, only_predicted=only_predicted, pred_name=str(pred), truth_name=str(truth)
    )
    result = metrics.joined_agreement(joined, merged)
    paired = None
    if compare is not None:
        paired = metrics.compare_methods(
            pred_table,
            read_scores(compare),
            truth_table,
            only_predicted=only_predicted,
            names=(str(pred), str(compare)),
            truth_name=str(truth),
        )
    labels = (pred.stem, compare.stem) if compare is not None and compare.stem != pred.stem else ("pred", "compare")
    return write_agreement(out, joined, result, paired, labels)


def write_agreement(
    out: str | Path,
    joined: pd.DataFrame,
    result: dict,
    paired: dict | None = None,
    labels: tuple[str, str] = ("pred", "compare"),
    header: dict | None = None,
    title: str = "",
) -> tuple[str, list[Path]]:
    """Write the report of `result` (from `metrics.joined_agreement` on `joined`, predictions in columns TOT, GG,
    RET and references in TOT_true, ...) into `out`; `header` adds fields to metrics.json. Returns the markdown
    tables and the files written."""
    out = Path(out)
    if paired is not None:
        result = {**result, "compare": paired}
    markdown = metrics.agreement_markdown(result, paired, labels)
    written = [write_json(out / "metrics.json", {**(header or {}), **result})]
    with atomic_write(out / "metrics.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    written += [out / "metrics.md", write_csv(out / "metrics.csv", metrics.agreement_rows(result))]
    if paired is not None:
        written.append(write_csv(out / "compare.csv", metrics.compare_rows(paired)))
    prefix = f"{title} " if title else ""
    for p in SCORES:
        args = (joined[p].to_numpy(), joined[f"{p}_true"].to_numpy())
        written.append(plots.bland_altman_plot(*args, out / f"bland_altman_{p}.png", f"{prefix}{p}: Bland-Altman"))
        written.append(
            plots.correlation_plot(*args, out / f"correlation_{p}.png", f"{prefix}{p}: prediction vs reference")
        )
    return markdown, written
