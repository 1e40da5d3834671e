"""`ssc demo` end to end (slow): with the stand-ins (about 4 minutes a seed on 2 cores) it must beat predict-the-mean
by at least 10 % of MAE on TOT, GG and RET, and the level baseline likewise, for every seed; with the paper's
networks (`--networks paper`) by 15 % within 40 minutes. And the settings of `--networks paper`."""

from __future__ import annotations

import json
import subprocess

import pytest
from sscjax.cli.demo import NETWORK_CHOICES, demo_config

from sscjax.domain import SCORES

# the method's MAE may be at most this share of the baseline's (the stand-ins' worst seed, 1: RET 0.81x, levels
# 0.86x; README); the demo at most this many minutes
MARGIN = {"stand-ins": 0.9, "paper": 0.85}
MINUTES = {"stand-ins": 15, "paper": 40}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("networks", "seed"), [("stand-ins", 0), ("stand-ins", 1), ("stand-ins", 2), ("paper", 0), ("paper", 1)]
)
def test_demo_beats_its_baselines_and_says_where_everything_is(tmp_path, networks, seed):
    out = tmp_path / "demo"
    result = subprocess.run(
        ["ssc", "demo", "--networks", networks, "--out", str(out), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=60 * MINUTES[networks] + 300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Headline figures on the test split" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds"] <= 60 * MINUTES[networks]
    for p in SCORES:
        m = summary["snet"][p]
        assert m["mae"] <= MARGIN[networks] * m["baseline_mae"], (p, m)
    assert summary["lnet"]["mae_mm"] <= MARGIN[networks] * summary["lnet"]["baseline_mae_mm"], summary["lnet"]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    splits = json.loads((out / "data" / "splits.json").read_text())
    assert metrics["TOT"]["n"] == 5 * len(splits["test"])
    for sid in splits["test"]:
        assert json.loads((out / "results" / sid / "scores.json").read_text())["scan"] == sid
    explained = out / "results" / splits["test"][0] / "explain"
    assert len(list(explained.glob("L*_overlay.png"))) == 15
    assert (out / "runs" / "snet" / "fold0" / "explain" / "calibration.json").is_file()
    assert str(out / "evaluation" / "metrics.md") in result.stdout


def test_the_paper_demo_trains_the_papers_networks_at_their_small_presets(tmp_path):
    """The VGG11-3D and the ConvNeXt-T of the small presets, the S-Net from random weights with the preset's scratch
    settings (uniform sampling, the lung-centred input, lr 1e-3, AdamW) and the demo's shorter schedule."""
    lnet = demo_config("lnet", NETWORK_CHOICES["paper"], tmp_path, seed=3)
    snet = demo_config("snet", NETWORK_CHOICES["paper"], tmp_path, seed=3)
    assert (lnet.model.name, lnet.data.size, lnet.train.steps, lnet.model.dropout) == (
        "vgg11_3d",
        (224, 64, 64),
        600,
        0,
    )
    assert (snet.model.name, snet.pretrained, snet.data.image_size) == ("convnext_tiny", "none", 128)
    assert not snet.balanced and not snet.model.kwargs["normalize_input"]
    assert (snet.train.learning_rate, snet.train.steps, snet.train.valid_every) == (1e-3, 800, 200)
    assert snet.train.decoupled_weight_decay and not lnet.train.decoupled_weight_decay
    assert lnet.train.seed == snet.train.seed == 3 and lnet.data_dir == snet.data_dir == str(tmp_path.resolve())
    stand_ins = demo_config("snet", NETWORK_CHOICES["stand-ins"], tmp_path, seed=0)
    assert (stand_ins.model.name, stand_ins.pretrained) == ("efficientnet_lite0", "efficientnet_lite0")
