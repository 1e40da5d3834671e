"""Agreement reports written to a folder: metrics.json, metrics.md and metrics.csv (per pattern and per level),
the paired comparison with a second method if any, and Bland-Altman and correlation plots per pattern."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sscjax import metrics, plots
from sscjax.io import atomic_write, write_csv, write_json


def write_agreement(out: str | Path, joined: pd.DataFrame, result: dict, paired: dict | None = None,
                    labels: tuple[str, str] = ("pred", "compare"), header: dict | None = None,
                    title: str = "") -> tuple[str, list[Path]]:
    """Write the report of `result` (from `metrics.joined_agreement` on `joined`, predictions in columns TOT, GG,
    RET and references in TOT_true, ...) into `out`; `header` adds fields to metrics.json. Returns the markdown
    tables and the files written."""
    out = Path(out)
    if paired is not None:
        result = {**result, "compare": paired}
    markdown = metrics.agreement_markdown(result, paired, labels)
    written = [write_json(out / "metrics.json", {**(header or {}), **result})]
    with atomic_write(out / "metrics.md") as tmp:
        tmp.write_text(markdown)
    written += [out / "metrics.md", write_csv(out / "metrics.csv", metrics.agreement_rows(result))]
    if paired is not None:
        written.append(write_csv(out / "compare.csv", metrics.compare_rows(paired)))
    prefix = f"{title} " if title else ""
    for p in metrics.PATTERNS:
        args = (joined[p].to_numpy(), joined[f"{p}_true"].to_numpy())
        written.append(plots.bland_altman_plot(*args, out / f"bland_altman_{p}.png", f"{prefix}{p}: Bland-Altman"))
        written.append(plots.correlation_plot(*args, out / f"correlation_{p}.png", f"{prefix}{p}: prediction vs reference"))
    return markdown, written
