"""`ssc evaluate` end to end on small CSV files; numbers recomputed independently (numpy, sklearn, pingouin)."""

import json

import click
import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from click.testing import CliRunner
from conftest import pingouin_icc_a1
from conftest import run_ssc as _ssc
from PIL import Image
from sklearn.metrics import cohen_kappa_score
from sscjax.cli.evaluate import evaluate

SCORES = ["TOT", "GG", "RET"]
LABELS = list(range(0, 101, 5))
PATTERN_KEYS = {"mae", "sd", "kappa", "icc", "icc_ci95", "n"}


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    """truth.csv (8 scans x 5 levels), pred.csv (two folds overlap on 2 scans), other.csv (a worse method)."""
    folder = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(11)
    truth = pd.DataFrame([(f"{i:03d}", lv) for i in range(8) for lv in range(1, 6)], columns=["scan_id", "level"])
    for p in SCORES:
        truth[p] = np.round(rng.uniform(0, 14, len(truth))) * 5
    pred = truth.copy()
    pred[SCORES] = truth[SCORES] + rng.normal(0, 5, (len(truth), 3))
    extra_fold = pred[pred["scan_id"].isin(["000", "001"])].copy()
    extra_fold[SCORES] += 3.0
    other = truth.copy()
    other[SCORES] = truth[SCORES] + rng.normal(0, 12, (len(truth), 3))
    paths = {name: folder / f"{name}.csv" for name in ("truth", "pred", "other")}
    truth.to_csv(paths["truth"], index=False)
    pd.concat([pred, extra_fold]).sample(frac=1.0, random_state=1).to_csv(paths["pred"], index=False)
    other.to_csv(paths["other"], index=False)
    # the expected merged predictions: the mean over folds
    merged = pred.copy()
    merged.loc[merged["scan_id"].isin(["000", "001"]), SCORES] += 1.5
    return paths, truth, merged, other


@pytest.fixture(scope="module")
def evaluated(csvs, tmp_path_factory):
    paths, *_ = csvs
    out = tmp_path_factory.mktemp("out") / "eval"
    result = CliRunner().invoke(
        evaluate,
        [
            "--pred",
            str(paths["pred"]),
            "--truth",
            str(paths["truth"]),
            "--compare",
            str(paths["other"]),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def _expected(pred, true):
    err = np.abs(pred - true)
    icc, ci = pingouin_icc_a1(pred, true)
    rounded = [np.clip(np.floor(x / 5 + 0.5) * 5, 0, 100).astype(int) for x in (pred, true)]
    return {
        "mae": err.mean(),
        "sd": err.std(ddof=1),
        "kappa": cohen_kappa_score(*rounded, labels=LABELS, weights="linear"),
        "icc": icc,
        "icc_ci95": ci,
        "n": len(pred),
    }


def _assert_close(got, expected):
    assert set(got) == PATTERN_KEYS
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_metrics_json_has_the_documented_keys_and_recomputed_values(csvs, evaluated, monkeypatch):
    monkeypatch.setitem(pg.options, "round.column.CI95", None)
    _, truth, merged, _ = csvs
    out, _ = evaluated
    got = json.loads((out / "metrics.json").read_text())
    assert set(got) == {"TOT", "GG", "RET", "per_level", "merged_duplicates", "compare"}
    assert got["merged_duplicates"] == 10  # 2 scans x 5 levels predicted by two folds
    assert list(got["per_level"]) == ["1", "2", "3", "4", "5"]
    for p in SCORES:
        _assert_close(got[p], _expected(merged[p].to_numpy(), truth[p].to_numpy()))
        for level in range(1, 6):
            rows = (truth["level"] == level).to_numpy()
            expected = _expected(merged[p].to_numpy()[rows], truth[p].to_numpy()[rows])
            _assert_close(got["per_level"][str(level)][p], expected)


def test_compare_section_pairs_the_absolute_errors(csvs, evaluated):
    from scipy import stats

    _, truth, merged, other = csvs
    got = json.loads((evaluated[0] / "metrics.json").read_text())["compare"]
    for p in SCORES:
        ea, eb = np.abs(merged[p] - truth[p]), np.abs(other[p] - truth[p])
        assert got[p]["n"] == 40
        assert got[p]["mean_a"] == pytest.approx(ea.mean()) and got[p]["mean_b"] == pytest.approx(eb.mean())
        assert got[p]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(ea, eb).pvalue)
        assert got[p]["ttest_p"] == pytest.approx(stats.ttest_rel(ea, eb).pvalue)


def test_csv_markdown_and_printed_summary_agree_with_json(evaluated):
    out, printed = evaluated
    got = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "metrics.csv", dtype={"level": str})
    assert len(table) == 18
    row = table[(table["level"] == "3") & (table["pattern"] == "GG")].iloc[0]
    assert row["icc_ci95_hi"] == pytest.approx(got["per_level"]["3"]["GG"]["icc_ci95"][1])
    assert row["kappa"] == pytest.approx(got["per_level"]["3"]["GG"]["kappa"])
    assert pd.read_csv(out / "compare.csv")["ttest_p"].tolist() == pytest.approx(
        [got["compare"][p]["ttest_p"] for p in SCORES]
    )
    md = (out / "metrics.md").read_text()
    tot = got["TOT"]
    assert f"| TOT | 40 | {tot['mae']:.2f} ({tot['sd']:.2f}) | {tot['kappa']:.2f} |" in md
    assert md in printed and str(out) in printed


def test_plots_are_valid_pngs(evaluated):
    out, _ = evaluated
    for p in SCORES:
        for kind in ("bland_altman", "correlation"):
            with Image.open(out / f"{kind}_{p}.png") as im:
                assert im.format == "PNG" and im.size[0] > 300
                im.verify()
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temp files left behind


@pytest.mark.parametrize(
    "content,message",
    [
        ("scan_id,level,TOT,GG,RET\n000,1,5,5,0\n000,2,5,x,0\n", "data row 2 (line 3): GG 'x' is not a finite number"),
        ("scan_id,level,TOT,GG\n000,1,5,5\n", "missing column(s) RET"),
        ("", "not a readable CSV"),
    ],
)
def test_bad_csv_exits_2_with_one_line(csvs, tmp_path, monkeypatch, capsys, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code, out, err = _ssc(
        monkeypatch, capsys, "evaluate", "--pred", bad, "--truth", csvs[0]["truth"], "--out", tmp_path / "o"
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"Error: {bad}") and message in err
    assert not (tmp_path / "o").exists()


def test_unmatched_rows_exit_2_naming_keys_unless_only_predicted(csvs, tmp_path, monkeypatch, capsys):
    paths, truth, *_ = csvs
    part = tmp_path / "part.csv"
    truth.iloc[:5].to_csv(part, index=False)
    code, _, err = _ssc(
        monkeypatch, capsys, "evaluate", "--pred", part, "--truth", paths["truth"], "--out", tmp_path / "o"
    )
    assert code == 2 and "35 row(s) have no prediction" in err and "001 level 1" in err
    code, _, _ = _ssc(
        monkeypatch,
        capsys,
        "evaluate",
        "--pred",
        part,
        "--truth",
        paths["truth"],
        "--out",
        tmp_path / "o",
        "--only-predicted",
    )
    assert code == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["TOT"]["mae"] == 0.0


def test_missing_options_are_a_usage_error():
    result = CliRunner().invoke(evaluate, ["--pred", __file__])
    assert result.exit_code == 2 and "missing --truth, --out" in result.output


def test_subcommands_can_hang_off_the_group(monkeypatch, tmp_path):
    @click.command()
    def dummy():
        click.echo("dummy ran")

    monkeypatch.setitem(evaluate.commands, "dummy", dummy)
    result = CliRunner().invoke(evaluate, ["dummy"])
    assert result.exit_code == 0 and result.output == "dummy ran\n"
    result = CliRunner().invoke(evaluate, ["--out", str(tmp_path), "dummy"])
    assert result.exit_code == 2 and "--out belong(s) to the CSV evaluation" in result.output


@pytest.mark.parametrize(
    "value,message",
    [
        ("-20", "GG '-20' is outside 0..100 %"),
        ("150", "GG '150' is outside 0..100 %"),
        ("nan", "GG 'nan' is not a finite number"),
    ],
)
def test_reference_scores_outside_0_100_exit_2_naming_file_row_and_value(
    csvs, tmp_path, monkeypatch, capsys, value, message
):
    paths, truth, *_ = csvs
    bad = truth.astype(str)
    bad.loc[6, "GG"] = value
    bad.to_csv(tmp_path / "truth.csv", index=False)
    code, out, err = _ssc(
        monkeypatch,
        capsys,
        "evaluate",
        "--pred",
        paths["pred"],
        "--truth",
        tmp_path / "truth.csv",
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"Error: {tmp_path / 'truth.csv'}, data row 7 (line 8): {message}")
    assert not (tmp_path / "o").exists()


def test_predictions_may_overshoot_but_references_may_not(csvs, tmp_path, monkeypatch, capsys):
    paths, truth, *_ = csvs
    over = truth.copy()
    over["GG"] = over["GG"] - 3.0  # another method's regression output, below 0 where the truth is 0
    over.to_csv(tmp_path / "over.csv", index=False)
    code, _, err = _ssc(
        monkeypatch,
        capsys,
        "evaluate",
        "--pred",
        tmp_path / "over.csv",
        "--truth",
        paths["truth"],
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    code, _, err = _ssc(
        monkeypatch,
        capsys,
        "evaluate",
        "--pred",
        paths["truth"],
        "--truth",
        tmp_path / "over.csv",
        "--out",
        tmp_path / "o2",
    )
    assert code == 2 and "is outside 0..100 %" in err


def test_an_unwritable_out_is_refused_before_any_work(csvs, tmp_path, monkeypatch, capsys):
    paths, *_ = csvs
    (tmp_path / "afile").write_text("")
    code, out, err = _ssc(
        monkeypatch,
        capsys,
        "evaluate",
        "--pred",
        paths["pred"],
        "--truth",
        paths["truth"],
        "--out",
        tmp_path / "afile" / "out",
    )
    assert (
        code == 2
        and out == ""
        and err.strip()
        == (
            f"Error: {tmp_path / 'afile' / 'out'}: cannot write outputs here "
            f"({tmp_path / 'afile'} is a file, not a folder)"
        )
    )
