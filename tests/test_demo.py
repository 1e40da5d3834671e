"""`ssc demo` end to end with its default settings (slow: about 12 minutes per seed on 2 cores): it must beat
predict-the-mean by at least 20 % of MAE on TOT, GG and RET, and the level baseline likewise, for every seed."""

from __future__ import annotations

import json
import subprocess

import pytest

from sscjax.domain import SCORES

MARGIN = 0.8  # the method's MAE may be at most 80 % of the baseline's


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_beats_its_baselines_and_says_where_everything_is(tmp_path, seed):
    out = tmp_path / "demo"
    result = subprocess.run(
        ["ssc", "demo", "--out", str(out), "--seed", str(seed)], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Headline figures on the test split" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    for p in SCORES:
        m = summary["snet"][p]
        assert m["mae"] <= MARGIN * m["baseline_mae"], (p, m)
    assert summary["lnet"]["mae_mm"] <= MARGIN * summary["lnet"]["baseline_mae_mm"], summary["lnet"]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    splits = json.loads((out / "data" / "splits.json").read_text())
    assert metrics["TOT"]["n"] == 5 * len(splits["test"])
    for sid in splits["test"]:
        assert json.loads((out / "results" / sid / "scores.json").read_text())["scan"] == sid
    explained = out / "results" / splits["test"][0] / "explain"
    assert len(list(explained.glob("L*_overlay.png"))) == 15
    assert (out / "runs" / "snet" / "fold0" / "explain" / "calibration.json").is_file()
    assert str(out / "evaluation" / "metrics.md") in result.stdout
