"""`ssc demo` end to end (slow: it trains both networks, about 4-5 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_method_and_says_where_everything_is(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(["ssc", "demo", "--out", str(out), "--patients", "16"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Headline figures on the test split" in result.stdout
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    splits = json.loads((out / "data" / "splits.json").read_text())
    assert metrics["TOT"]["n"] == 5 * len(splits["test"])
    for sid in splits["test"]:
        assert json.loads((out / "results" / sid / "scores.json").read_text())["scan"] == sid
    explained = out / "results" / splits["test"][0] / "explain"
    assert len(list(explained.glob("L*_overlay.png"))) == 15
    assert (out / "runs" / "snet" / "fold0" / "explain" / "calibration.json").is_file()
    assert str(out / "evaluation" / "metrics.md") in result.stdout
