"""Agreement statistics against hand-computed values and reference implementations (sklearn, pingouin, scipy)."""

import math
import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from sscjax import metrics as M
from sscjax.domain import SCORES
from sscjax.errors import SscError

LABELS = list(range(0, 101, 5))


def _scores(rng, n):
    """Noisy predictions around Goh-like reference scores (skewed to low values, like real data)."""
    true = np.clip(np.round(rng.gamma(1.0, 15.0, n) / 5) * 5, 0, 100)
    return np.clip(true + rng.normal(0, 7, n), -3, 103), true


def _pingouin_icc2(pred, true, monkeypatch):
    monkeypatch.setitem(pg.options, "round.column.CI95", None)  # pingouin rounds the CI to 2 digits by default
    n = len(pred)
    long = pd.DataFrame(
        {
            "target": np.tile(np.arange(n), 2),
            "rater": np.repeat(["pred", "true"], n),
            "score": np.concatenate([pred, true]),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = pg.intraclass_corr(long, targets="target", raters="rater", ratings="score").set_index("Type")
    return table.at["ICC(A,1)", "ICC"], table.at["ICC(A,1)", "CI95"]


def test_mae_sd_is_mean_and_sample_sd_of_absolute_errors():
    mae, sd = M.mae_sd([0, 10, 20], [5, 5, 5])  # absolute errors 5, 5, 15
    assert mae == pytest.approx(25 / 3)
    assert sd == pytest.approx(math.sqrt(((5 - 25 / 3) ** 2 * 2 + (15 - 25 / 3) ** 2) / 2))
    assert math.isnan(M.mae_sd([3], [1])[1])


def test_round_to_step_rounds_half_up_and_clips():
    got = M.round_to_step([2.5, 7.5, 12.5, 2.49, 47.5, -3, 101, 97.5, 0.0])
    np.testing.assert_array_equal(got, [5, 10, 15, 0, 50, 0, 100, 100, 0])
    assert got.dtype.kind == "i"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_kappa_equals_sklearn_with_full_label_list(seed):
    pred, true = _scores(np.random.default_rng(seed), 80)
    expected = cohen_kappa_score(M.round_to_step(pred), M.round_to_step(true), labels=LABELS, weights="linear")
    assert M.weighted_kappa(pred, true) == pytest.approx(expected, abs=1e-12)


def test_weighted_kappa_counts_absent_categories_and_100():
    pred, true = np.array([0, 5, 100, 100, 5, 0]), np.array([0, 100, 100, 5, 5, 0])
    full = cohen_kappa_score(pred, true, labels=LABELS, weights="linear")
    present_only = cohen_kappa_score(pred, true, weights="linear")  # what forgetting `labels` would give
    assert M.weighted_kappa(pred, true) == pytest.approx(full, abs=1e-12)
    assert abs(full - present_only) > 0.05


def test_weighted_kappa_perfect_and_undefined():
    assert M.weighted_kappa([0, 20, 100], [1, 19, 98]) == pytest.approx(1.0)  # equal after rounding to 5 %
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.weighted_kappa([10, 10], [10, 10]))  # one shared category: undefined
        assert math.isnan(M.weighted_kappa([], []))


@pytest.mark.parametrize("seed,n", [(0, 40), (1, 12), (2, 200)])
def test_icc_a1_and_ci_equal_pingouin(seed, n, monkeypatch):
    pred, true = _scores(np.random.default_rng(seed), n)
    icc, ci = M.icc_a1(pred, true)
    ref_icc, ref_ci = _pingouin_icc2(pred, true, monkeypatch)
    assert icc == pytest.approx(ref_icc, abs=1e-12)
    np.testing.assert_allclose(ci, ref_ci, atol=1e-10)
    assert ci[0] < icc < ci[1]


def test_icc_a1_hand_case(monkeypatch):
    # rows (0,1), (2,2), (4,3): MS_rows 4.5, MS_raters 0, MS_error 0.5 -> (4.5-0.5) / (4.5+0.5+2(0-0.5)/3) = 6/7
    icc, ci = M.icc_a1([0, 2, 4], [1, 2, 3])
    assert icc == pytest.approx(6 / 7)
    np.testing.assert_allclose(ci, _pingouin_icc2(np.array([0, 2, 4.0]), np.array([1, 2, 3.0]), monkeypatch)[1])
    # a constant offset is a disagreement in absolute terms: MS_rows 10/3, MS_raters 2, MS_error 0 -> 10/13
    icc, ci = M.icc_a1([1, 2, 3, 4], [2, 3, 4, 5])
    assert icc == pytest.approx(10 / 13)
    assert all(math.isnan(c) for c in ci)


def test_icc_a1_degenerate_input_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pred, true in [([], []), ([5], [5]), ([10, 10, 10], [10, 10, 10])]:
            icc, (lo, hi) = M.icc_a1(pred, true)
            assert math.isnan(icc) and math.isnan(lo) and math.isnan(hi)
        icc, ci = M.icc_a1([0, 10, 30], [0, 10, 30])
        assert icc == 1.0 and all(math.isnan(c) for c in ci)


def test_paired_tests_hand_case():
    a, b = np.array([3.0, 5.0, 7.0, 1.0]), np.array([2.0, 3.0, 4.0, 1.0])  # differences 1, 2, 3 (and a zero)
    got = M.paired_tests(a, b)
    assert got["n"] == 4 and got["mean_a"] == 4.0 and got["mean_b"] == 2.5
    # Wilcoxon drops the zero; all 3 remaining differences positive: W = 0, exact p = 2 / 2**3
    assert got["wilcoxon_statistic"] == 0.0 and got["wilcoxon_p"] == pytest.approx(0.25)
    t = 1.5 / (math.sqrt(5 / 3) / 2)  # differences 1, 2, 3, 0: mean 1.5, SD sqrt(5/3), n 4
    assert got["ttest_statistic"] == pytest.approx(t)
    assert got["ttest_p"] == pytest.approx(2 * stats.t.sf(t, 3))
    assert math.isnan(M.paired_tests([1.0], [2.0])["ttest_p"])


def test_bland_altman_stats_hand_case():
    got = M.bland_altman_stats([2, 4, 6], [1, 2, 3])  # differences 1, 2, 3
    assert got["n"] == 3 and got["mean_diff"] == pytest.approx(2.0) and got["sd_diff"] == pytest.approx(1.0)
    assert got["loa_low"] == pytest.approx(2 - 1.96) and got["loa_high"] == pytest.approx(2 + 1.96)


def test_pearson_r():
    assert M.pearson_r([1, 2, 3], [2, 4, 7]) == pytest.approx(stats.pearsonr([1, 2, 3], [2, 4, 7]).statistic)
    assert math.isnan(M.pearson_r([1, 1, 1], [1, 2, 3]))


def _table(rng, n_scans, levels=(1, 2, 3, 4, 5)):
    keys = [(f"s{i:02d}", lv) for i in range(n_scans) for lv in levels]
    scores = np.round(rng.uniform(0, 20, (len(keys), 3))) * 5
    return pd.DataFrame([(*k, *s) for k, s in zip(keys, scores)], columns=["scan_id", "level", *SCORES])


def test_agreement_overall_and_per_level_match_direct_computation():
    rng = np.random.default_rng(3)
    truth = _table(rng, 12)
    pred = truth.copy()
    pred[list(SCORES)] += rng.normal(0, 6, (len(pred), 3))
    pred = pred.sample(frac=1.0, random_state=0)  # row order must not matter
    result = M.agreement(pred, truth)
    assert set(result) == {"TOT", "GG", "RET", "per_level", "merged_duplicates"}
    assert result["merged_duplicates"] == 0
    assert list(result["per_level"]) == ["1", "2", "3", "4", "5"]
    pred = pred.sort_index()
    for p in SCORES:
        err = np.abs(pred[p] - truth[p])
        assert result[p]["mae"] == pytest.approx(err.mean()) and result[p]["sd"] == pytest.approx(err.std(ddof=1))
        assert result[p]["n"] == 60
        for level in range(1, 6):
            rows = truth["level"] == level
            got = result["per_level"][str(level)][p]
            assert got["n"] == 12
            assert got["mae"] == pytest.approx(err[rows].mean())
            assert got["kappa"] == pytest.approx(
                cohen_kappa_score(
                    M.round_to_step(pred[p][rows]), M.round_to_step(truth[p][rows]), labels=LABELS, weights="linear"
                )
            )
            assert got["icc"] == pytest.approx(M.icc_a1(pred[p][rows], truth[p][rows])[0])


def test_agreement_merges_fold_duplicates_by_averaging():
    truth = _table(np.random.default_rng(4), 4)
    low, high = truth.copy(), truth.copy()
    low[list(SCORES)] -= 4.0
    high[list(SCORES)] += 4.0
    # s00 and s01 predicted by two folds (errors -4 and +4 average to 0), the others by one fold (error +4)
    pred = pd.concat([high, low[low["scan_id"].isin(["s00", "s01"])]])
    result = M.agreement(pred, truth)
    assert result["merged_duplicates"] == 10
    assert result["TOT"]["n"] == 20
    assert result["TOT"]["mae"] == pytest.approx(4.0 * 10 / 20)


def test_agreement_names_missing_and_extra_keys():
    truth = _table(np.random.default_rng(5), 3)
    with pytest.raises(SscError, match=r"pred.csv: 1 prediction\(s\) have no row in truth.csv: s09 level 2"):
        M.agreement(
            pd.concat([truth, truth.iloc[:1].assign(scan_id="s09", level=2)]),
            truth,
            pred_name="pred.csv",
            truth_name="truth.csv",
        )
    partial = truth.iloc[:7]
    with pytest.raises(SscError, match=r"truth: 8 row\(s\) have no prediction in predictions: s01 level 3"):
        M.agreement(partial, truth)
    assert M.agreement(partial, truth, only_predicted=True)["TOT"]["n"] == 7
    with pytest.raises(SscError, match="duplicated reference rows for s00 level 1"):
        M.agreement(truth, pd.concat([truth, truth.iloc[:1]]))


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("level", "6", r"src, data row 3 \(line 4\): level '6' is not one of 1..5"),
        ("GG", "abc", r"src, data row 3 \(line 4\): GG 'abc' is not a finite number"),
        ("RET", "nan", "RET 'nan' is not a finite number"),
        ("scan_id", " ", "scan_id ' ' is empty"),
    ],
)
def test_validate_scores_names_row_and_problem(column, value, message):
    table = _table(np.random.default_rng(6), 1).astype(str)
    table.loc[2, column] = value
    with pytest.raises(SscError, match=message):
        M.validate_scores(table, "src")
    with pytest.raises(SscError, match="src: missing column"):
        M.validate_scores(table.drop(columns="GG"), "src")


def test_validate_scores_types_scan_ids_as_strings():
    table = pd.DataFrame({"scan_id": ["007"], "level": ["3"], "TOT": ["10"], "GG": ["5"], "RET": ["7.5"]})
    got = M.validate_scores(table, "src")
    assert got["scan_id"].tolist() == ["007"] and got["level"].tolist() == [3] and got["RET"].tolist() == [7.5]


def test_compare_methods_pairs_absolute_errors_per_pattern():
    rng = np.random.default_rng(7)
    truth = _table(rng, 6)
    a, b = truth.copy(), truth.copy()
    a[list(SCORES)] += rng.normal(0, 3, (len(a), 3))
    b[list(SCORES)] += rng.normal(0, 9, (len(b), 3))
    got = M.compare_methods(a, b.iloc[::-1], truth)
    for p in SCORES:
        ea, eb = np.abs(a[p] - truth[p]), np.abs(b[p] - truth[p])
        assert got[p]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(ea, eb).pvalue)
        assert got[p]["ttest_statistic"] == pytest.approx(stats.ttest_rel(ea, eb).statistic)
    with pytest.raises(SscError, match="cover different rows"):
        M.compare_methods(a, b.iloc[:10], truth, only_predicted=True)


def test_agreement_tables_for_files():
    truth = _table(np.random.default_rng(8), 5)
    result = M.agreement(truth.assign(TOT=truth["TOT"] + 2.0), truth)
    rows = M.agreement_rows(result)
    assert len(rows) == 3 * 6 and rows[0]["level"] == "all" and rows[-1]["level"] == "5"
    assert rows[0]["mae"] == pytest.approx(2.0) and rows[0]["pattern"] == "TOT"
    md = M.agreement_markdown(result)
    assert "| TOT | 25 | 2.00 (0.00) |" in md
    assert md.count("\n| 3 | 5 |") == 1  # one per-level row for level 3 with n = 5
