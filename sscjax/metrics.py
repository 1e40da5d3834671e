"""Agreement statistics between predicted and reference scores: MAE, weighted kappa, ICC, paired tests.

Pure numpy/scipy functions (no printing, no files). `agreement` builds the paper's tables (overall and
per level, Table 5) from two `scan_id,level,TOT,GG,RET` tables; the single-measure functions (`mae_sd`,
`icc_a1`, ...) serve any pair of 1-D arrays, e.g. the L-Net's slice positions per level.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from sscjax.domain import LEVELS, SCORE_STEP, SCORES
from sscjax.errors import SscError

KEYS = ("scan_id", "level")
SCORE_LABELS = tuple(range(0, 101, SCORE_STEP))  # the 21 Goh categories 0, 5, ..., 100
LOA_Z = 1.96  # Bland-Altman limits of agreement: mean difference +- 1.96 SD
MAX_LISTED = 5  # keys named in a mismatch message before "..."


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in length: {pred.size} vs {true.size}")
    return pred, true


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size >= 2 else math.nan


def mae_sd(pred, true) -> tuple[float, float]:
    """Mean absolute error and the sample SD (ddof=1) of the absolute errors: the paper's "MAE (SD)".

    nan for an empty input (MAE) or fewer than two pairs (SD).
    """
    pred, true = _pair(pred, true)
    err = np.abs(pred - true)
    return (float(err.mean()) if err.size else math.nan), _sd(err)


def round_to_step(x, step: int = SCORE_STEP) -> np.ndarray:
    """Round percentages to the nearest multiple of `step` (halves round up, not to even), clipped to 0..100."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.floor(x / step + 0.5) * step, 0, 100).astype(np.int64)


def weighted_kappa(pred, true) -> float:
    """Cohen's linearly weighted kappa on the 21 categories 0, 5, ..., 100 after rounding both to 5 %: scikit-learn's
    `cohen_kappa_score` with all 21 labels (also those neither rater used).

    nan when undefined (no pairs, or both raters put everything in one and the same category).
    """
    from sklearn.metrics import cohen_kappa_score

    pred, true = _pair(pred, true)
    if pred.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undefined case: scikit-learn warns and gives nan
        kappa = cohen_kappa_score(round_to_step(pred), round_to_step(true), labels=list(SCORE_LABELS), weights="linear")
    return float(kappa)


def icc_a1(pred, true) -> tuple[float, tuple[float, float]]:
    """ICC(A,1) (Shrout & Fleiss ICC(2,1); pingouin's "ICC2"): two-way random, absolute agreement, single rater.

    Returns (icc, (lo, hi)) with the 95 % CI of McGraw & Wong (1996), computed as pingouin does.
    nan for fewer than two pairs or zero variance; the CI is nan when the residual mean square is zero
    (e.g. identical ratings), where the F-based interval is undefined.

    Written here rather than calling pingouin.intraclass_corr, for measured reasons (2 cores, pingouin 0.7): pingouin
    refuses fewer than 5 pairs (a level of a small fold has fewer), rounds the CI to 2 decimals unless its global
    options are changed, warns on degenerate input, takes 3-4 s to import (every `ssc evaluate` and cascade) and
    29 ms a call against 0.3 ms here. tests/test_metrics.py checks this against pingouin.
    """
    pred, true = _pair(pred, true)
    y = np.stack([pred, true], axis=1)
    n, k = y.shape
    nan = (math.nan, (math.nan, math.nan))
    if n < 2:
        return nan
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = max(((y - grand) ** 2).sum() - ss_rows - ss_cols, 0.0)
    df_rows, df_err = n - 1, (n - 1) * (k - 1)
    msb, msj, mse = ss_rows / df_rows, ss_cols / (k - 1), ss_err / df_err
    denominator = msb + (k - 1) * mse + k * (msj - mse) / n
    if denominator <= 0:
        return nan
    icc = (msb - mse) / denominator
    if mse <= 0:
        return float(icc), (math.nan, math.nan)
    alpha = 0.05
    fj = msj / mse
    vn = df_err * (k * icc * fj + n * (1 + (k - 1) * icc) - k * icc) ** 2
    vd = df_rows * k**2 * icc**2 * fj**2 + (n * (1 + (k - 1) * icc) - k * icc) ** 2
    v = vn / vd
    f_upper = stats.f.ppf(1 - alpha / 2, n - 1, v)
    f_lower = stats.f.ppf(1 - alpha / 2, v, n - 1)
    spread = k * msj + (k * n - k - n) * mse
    lo = n * (msb - f_upper * mse) / (f_upper * spread + n * msb)
    hi = n * (f_lower * msb - mse) / (spread + n * f_lower * msb)
    return float(icc), (float(lo), float(hi))


def pearson_r(pred, true) -> float:
    """Pearson's correlation coefficient; nan for fewer than two pairs or a constant input."""
    pred, true = _pair(pred, true)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return math.nan
    return float(np.corrcoef(pred, true)[0, 1])


def paired_tests(abs_err_a, abs_err_b) -> dict:
    """Wilcoxon signed-rank and paired t-test comparing two methods' absolute errors on the same cases.

    Returns n, the mean of each, and each test's statistic and two-sided p-value (scipy defaults; a
    zero difference is dropped by the Wilcoxon test). nan where a test is undefined (fewer than two
    pairs, or all differences zero).
    """
    a, b = _pair(abs_err_a, abs_err_b)
    result = {
        "n": int(a.size),
        "mean_a": float(a.mean()) if a.size else math.nan,
        "mean_b": float(b.mean()) if b.size else math.nan,
    }
    if a.size < 2:
        return result | dict.fromkeys(("wilcoxon_statistic", "wilcoxon_p", "ttest_statistic", "ttest_p"), math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate (all-zero) differences give nan
        wilcoxon = stats.wilcoxon(a, b)
        ttest = stats.ttest_rel(a, b)
    return result | {
        "wilcoxon_statistic": float(wilcoxon.statistic),
        "wilcoxon_p": float(wilcoxon.pvalue),
        "ttest_statistic": float(ttest.statistic),
        "ttest_p": float(ttest.pvalue),
    }


def bland_altman_stats(pred, true) -> dict:
    """Bland-Altman summary of pred - true: mean difference (bias), its SD (ddof=1) and the 95 % limits."""
    pred, true = _pair(pred, true)
    diff = pred - true
    mean = float(diff.mean()) if diff.size else math.nan
    sd = _sd(diff)
    return {
        "n": int(diff.size),
        "mean_diff": mean,
        "sd_diff": sd,
        "loa_low": mean - LOA_Z * sd,
        "loa_high": mean + LOA_Z * sd,
    }


def pattern_metrics(pred, true) -> dict:
    """The paper's statistics for one pattern: MAE, SD of absolute errors, weighted kappa, ICC(A,1) with 95 % CI, n."""
    pred, true = _pair(pred, true)
    mae, sd = mae_sd(pred, true)
    icc, (lo, hi) = icc_a1(pred, true)
    return {
        "mae": mae,
        "sd": sd,
        "kappa": weighted_kappa(pred, true),
        "icc": icc,
        "icc_ci95": [lo, hi],
        "n": int(pred.size),
    }


def _keys(table: pd.DataFrame) -> list[tuple]:
    return list(table[list(KEYS)].itertuples(index=False, name=None))


def _listed(keys: list[tuple]) -> str:
    shown = ", ".join(f"{s} level {lv}" for s, lv in keys[:MAX_LISTED])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED else "")


def validate_scores(table: pd.DataFrame, source: str, reference: bool = False) -> pd.DataFrame:
    """Check a `scan_id,level,TOT,GG,RET` table and return it typed (str, int, float columns).

    Raises SscError naming `source` and the row (data row i = line i + 1 of a CSV with a header):
    missing columns, empty scan ids, levels other than 1..5, scores that are not finite numbers, and for
    `reference` scores (a rater's Goh scores, as `ssc data check` demands) scores outside 0..100 %.
    """
    missing = [c for c in (*KEYS, *SCORES) if c not in table.columns]
    if missing:
        raise SscError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(expected scan_id,level,{','.join(SCORES)}; found {','.join(map(str, table.columns))})"
        )
    if table.empty:
        raise SscError(f"{source}: no rows")
    out = pd.DataFrame({"scan_id": table["scan_id"].astype(str).str.strip()})
    _check(out["scan_id"] != "", table["scan_id"], source, "scan_id", "is empty")
    level = pd.to_numeric(table["level"], errors="coerce")
    _check(level.isin(LEVELS), table["level"], source, "level", "is not one of 1..5")
    out["level"] = level.astype(np.int64)
    for p in SCORES:
        score = pd.to_numeric(table[p], errors="coerce")
        _check(np.isfinite(score), table[p], source, p, "is not a finite number")
        if reference:
            _check(score.between(0, 100), table[p], source, p, "is outside 0..100 %")
        out[p] = score.astype(np.float64)
    return out


def _check(ok: pd.Series, raw: pd.Series, source: str, column: str, problem: str) -> None:
    bad = np.flatnonzero(~np.asarray(ok, dtype=bool))
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more row(s))" if bad.size > 1 else ""
        raise SscError(f"{source}, data row {i + 1} (line {i + 2}): {column} {raw.iloc[i]!r} {problem}{more}")


def merge_folds(pred: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Average duplicated (scan_id, level) prediction rows (e.g. one patient predicted by several
    cross-validation folds) so each patient-level counts once; returns the table and how many keys were merged."""
    counts = pred.groupby(list(KEYS), sort=False).size()
    merged = pred.groupby(list(KEYS), sort=False, as_index=False)[list(SCORES)].mean()
    return merged, int((counts > 1).sum())


def join_truth(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    only_predicted: bool = False,
    pred_name: str = "predictions",
    truth_name: str = "truth",
) -> tuple[pd.DataFrame, int]:
    """Join predictions to the reference on (scan_id, level), after `validate_scores` and `merge_folds`.

    Returns the joined table (columns scan_id, level, TOT, GG, RET predicted and TOT_true, ... reference;
    sorted by key) and the number of merged duplicate keys. Raises SscError naming the keys that do not
    match: every prediction needs a reference row, and every reference row needs a prediction unless
    `only_predicted` (then the reference rows without a prediction are left out).
    """
    pred, merged = merge_folds(validate_scores(pred, pred_name))
    truth = validate_scores(truth, truth_name, reference=True)
    duplicated = truth[truth.duplicated(list(KEYS))]
    if len(duplicated):
        raise SscError(f"{truth_name}: duplicated reference rows for {_listed(_keys(duplicated))}")
    joined = pred.merge(truth, on=list(KEYS), how="outer", suffixes=("", "_true"), indicator=True)
    no_truth = joined[joined["_merge"] == "left_only"]
    if len(no_truth):
        raise SscError(
            f"{pred_name}: {len(no_truth)} prediction(s) have no row in {truth_name}: {_listed(_keys(no_truth))}"
        )
    no_pred = joined[joined["_merge"] == "right_only"]
    if len(no_pred) and not only_predicted:
        raise SscError(
            f"{truth_name}: {len(no_pred)} row(s) have no prediction in {pred_name}: "
            f"{_listed(_keys(no_pred))} "
            "(evaluate a subset with only_predicted / --only-predicted)"
        )
    joined = joined[joined["_merge"] == "both"].drop(columns="_merge")
    return joined.sort_values(list(KEYS)).reset_index(drop=True), merged


def _patterns(joined: pd.DataFrame) -> dict:
    return {p: pattern_metrics(joined[p], joined[f"{p}_true"]) for p in SCORES}


def agreement(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    only_predicted: bool = False,
    pred_name: str = "predictions",
    truth_name: str = "truth",
) -> dict:
    """The paper's agreement tables between predicted and reference Goh scores.

    Returns {"TOT": pattern_metrics, "GG": ..., "RET": ..., "per_level": {"1": {"TOT": ..., ...}, ...},
    "merged_duplicates": number of (scan_id, level) keys whose several prediction rows were averaged}.
    See `join_truth` for matching and errors.
    """
    return joined_agreement(
        *join_truth(pred, truth, only_predicted=only_predicted, pred_name=pred_name, truth_name=truth_name)
    )


def joined_agreement(joined: pd.DataFrame, merged_duplicates: int = 0) -> dict:
    """`agreement` of a table already joined by `join_truth`."""
    per_level = {str(level): _patterns(rows) for level, rows in joined.groupby("level")}
    return _patterns(joined) | {"per_level": per_level, "merged_duplicates": merged_duplicates}


def compare_methods(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    only_predicted: bool = False,
    names: tuple[str, str] = ("predictions", "comparison"),
    truth_name: str = "truth",
) -> dict:
    """Paired tests (`paired_tests`) of two methods' absolute errors per pattern, on the same reference rows.

    Both are joined to the truth as in `join_truth`; raises SscError when they cover different rows.
    """
    a, _ = join_truth(pred_a, truth, only_predicted=only_predicted, pred_name=names[0], truth_name=truth_name)
    b, _ = join_truth(pred_b, truth, only_predicted=only_predicted, pred_name=names[1], truth_name=truth_name)
    keys_a, keys_b = set(_keys(a)), set(_keys(b))
    if keys_a != keys_b:
        raise SscError(
            f"{names[0]} and {names[1]} cover different rows: "
            f"only in {names[0]}: {_listed(sorted(keys_a - keys_b)) or 'none'}; "
            f"only in {names[1]}: {_listed(sorted(keys_b - keys_a)) or 'none'}"
        )
    return {p: paired_tests((a[p] - a[f"{p}_true"]).abs(), (b[p] - b[f"{p}_true"]).abs()) for p in SCORES}


def agreement_rows(result: dict) -> list[dict]:
    """`agreement`'s result as flat rows (level "all" first, then each level; one row per pattern) for a CSV."""
    scopes = [("all", result), *result["per_level"].items()]
    return [
        {
            "level": level,
            "pattern": p,
            "n": m["n"],
            "mae": m["mae"],
            "sd": m["sd"],
            "kappa": m["kappa"],
            "icc": m["icc"],
            "icc_ci95_lo": m["icc_ci95"][0],
            "icc_ci95_hi": m["icc_ci95"][1],
        }
        for level, table in scopes
        for p in SCORES
        for m in [table[p]]
    ]


def compare_rows(compare: dict) -> list[dict]:
    """`compare_methods`' result as flat rows, one per pattern, for a CSV."""
    return [{"pattern": p, **compare[p]} for p in SCORES]


def _num(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _mae_sd(m: dict) -> str:
    """A pattern's MAE with its SD in brackets, as the tables show it."""
    return f"{_num(m['mae'])} ({_num(m['sd'])})"


def _overall_table(result: dict) -> str:
    """Agreement per pattern over all levels: n, MAE (SD), kappa and ICC with its 95 % interval."""
    return _table(
        ["Pattern", "n", "MAE (SD) %", "Kappa", "ICC (95 % CI)"],
        [
            [
                p,
                str(m["n"]),
                _mae_sd(m),
                _num(m["kappa"]),
                f"{_num(m['icc'])} ({_num(m['icc_ci95'][0])} to {_num(m['icc_ci95'][1])})",
            ]
            for p in SCORES
            for m in [result[p]]
        ],
    )


def _per_level_table(result: dict) -> str:
    """Agreement per level, each pattern's MAE (SD), kappa and ICC side by side (the paper's Table 5)."""
    return _table(
        ["Level", "n", *(f"{p} {s}" for p in SCORES for s in ("MAE (SD) %", "Kappa", "ICC"))],
        [
            [
                level,
                str(table[SCORES[0]]["n"]),
                *(c for p in SCORES for m in [table[p]] for c in (_mae_sd(m), _num(m["kappa"]), _num(m["icc"]))),
            ]
            for level, table in result["per_level"].items()
        ],
    )


def _comparison_table(compare: dict, a: str, b: str) -> str:
    """The paired tests per pattern on the absolute errors of methods `a` and `b`: their MAEs, Wilcoxon and t."""
    return _table(
        ["Pattern", "n", f"MAE {a}", f"MAE {b}", "Wilcoxon W", "p", "t", "p"],
        [
            [
                p,
                str(c["n"]),
                _num(c["mean_a"]),
                _num(c["mean_b"]),
                _num(c["wilcoxon_statistic"], 1),
                _num(c["wilcoxon_p"], 4),
                _num(c["ttest_statistic"]),
                _num(c["ttest_p"], 4),
            ]
            for p in SCORES
            for c in [compare[p]]
        ],
    )


def agreement_markdown(result: dict, compare: dict | None = None, names: tuple[str, str] = ("A", "B")) -> str:
    """Markdown tables: overall agreement per pattern, per level (the paper's Table 5) and, if given, the
    paired comparison of two methods (`names`: the evaluated and the compared method)."""
    parts = ["## Agreement", _overall_table(result), "## Per level", _per_level_table(result)]
    if result.get("merged_duplicates"):
        parts.insert(
            2,
            f"{result['merged_duplicates']} (scan_id, level) key(s) had several predictions "
            "(e.g. cross-validation folds); they were averaged so each counts once.",
        )
    if compare is not None:
        a, b = names
        parts += [f"## {a} vs {b}: paired tests on absolute errors", _comparison_table(compare, a, b)]
    return "\n\n".join(parts) + "\n"
