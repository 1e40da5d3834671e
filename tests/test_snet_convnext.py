"""The ImageNet-initialised ConvNeXt S-Net end to end: `ssc train snet --preset small --pretrained FILE` with a
torchvision ConvNeXt file (the fixture network: widths 16..128, depths 1/1/2/1) gets every backbone weight of the
file, the stem's RGB kernels summed, a fresh zero head, and trains. The expected weights come from the file read
here, with torchvision's layouts transposed by this test, not by the converter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx
from sscjax.cli.main import cli

from sscjax import networks, runs, snet
from sscjax.models.convert import read_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_convnext" / "convnext.pth"
FIXTURE_NETWORK = ('model.name="convnext"', "model.kwargs.widths=[16, 32, 64, 128]", "model.kwargs.depths=[1, 1, 2, 1]")
HEAD = ("classifier.2.weight", "classifier.2.bias")  # the file's 10-class head: never loaded
NORM_LEAVES = {"weight": "scale", "bias": "bias"}
BLOCK_PARTS = {"0": "dwconv", "2": "norm", "3": "fc1", "5": "fc2"}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) -> flax (kh, kw, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def _layer(key: str) -> tuple[str, str]:
    """(dotted NNX path, layout) of one torchvision ConvNeXt tensor name (not the head's)."""
    if m := re.fullmatch(r"features\.0\.0\.(weight|bias)", key):
        return f"stem_conv.{'kernel' if m[1] == 'weight' else 'bias'}", "stem" if m[1] == "weight" else "same"
    if m := re.fullmatch(r"features\.0\.1\.(weight|bias)", key):
        return f"stem_norm.{NORM_LEAVES[m[1]]}", "same"
    if m := re.fullmatch(r"features\.(\d+)\.0\.(weight|bias)", key):  # even index: the LayerNorm of a downsampling
        return f"downsamples.{int(m[1]) // 2 - 1}.norm.{NORM_LEAVES[m[2]]}", "same"
    if m := re.fullmatch(r"features\.(\d+)\.1\.(weight|bias)", key):
        conv = f"downsamples.{int(m[1]) // 2 - 1}.conv"
        return (f"{conv}.kernel", "conv") if m[2] == "weight" else (f"{conv}.bias", "same")
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.layer_scale", key):
        return f"stages.{(int(m[1]) - 1) // 2}.{m[2]}.gamma", "vector"
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(\d)\.(weight|bias)", key):
        part, leaf = BLOCK_PARTS[m[3]], m[4]
        prefix = f"stages.{(int(m[1]) - 1) // 2}.{m[2]}.{part}"
        if leaf == "bias":
            return f"{prefix}.bias", "same"
        return {"dwconv": (f"{prefix}.kernel", "conv"), "norm": (f"{prefix}.scale", "same")}.get(
            part, (f"{prefix}.kernel", "linear")
        )
    if m := re.fullmatch(r"classifier\.0\.(weight|bias)", key):
        return f"head_norm.{NORM_LEAVES[m[1]]}", "same"
    raise AssertionError(f"unexpected tensor {key} in the fixture")


def _converted(value: np.ndarray, layout: str) -> np.ndarray:
    """A torchvision tensor in flax's layout; the stem's RGB kernels summed to one input channel."""
    if layout == "stem":
        return conv_kernel(value).sum(axis=2, keepdims=True)
    if layout == "conv":
        return conv_kernel(value)
    return {"linear": value.T, "vector": value.reshape(-1), "same": value}[layout]


def expected_backbone(path: Path) -> dict[str, np.ndarray]:
    """Every backbone weight a one-channel S-Net must get from a torchvision ConvNeXt file, by dotted NNX path."""
    state = read_state_dict(path)
    return {name: _converted(state[key], layout) for key in state if key not in HEAD for name, layout in [_layer(key)]}


def params(model: nnx.Module) -> dict[str, np.ndarray]:
    """A model's parameters by dotted path."""
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def config():
    """The small preset with the fixture's network and its weights file."""
    return networks.resolve("snet", "small", None, FIXTURE_NETWORK, {"pretrained": str(FIXTURE)})


@pytest.fixture(scope="module")
def expected():
    return expected_backbone(FIXTURE)


def test_the_fixture_would_show_a_transpose_mistake(expected):
    # square 7x7 and 4x4 kernels are the ones a wrong transpose keeps in shape: none of them is symmetric
    for name, value in expected.items():
        if value.ndim == 4:
            assert not np.allclose(value, value.swapaxes(0, 1)), name


def test_the_small_preset_s_net_gets_every_backbone_weight_of_the_file(config, expected):
    model = snet.make_snet(config, nnx.Rngs(0))
    got = params(model)
    backbone = {k: v for k, v in got.items() if not k.startswith("head.")}
    assert sorted(backbone) == sorted(expected)  # every weight of the network, no more, no fewer
    for name, value in expected.items():
        np.testing.assert_array_equal(backbone[name], value, err_msg=name)
    # the stem: one input channel, the file's red, green and blue kernels summed
    rgb = read_state_dict(FIXTURE)["features.0.0.weight"]
    assert rgb.shape == (16, 3, 4, 4) and got["stem_conv.kernel"].shape == (4, 4, 1, 16)
    np.testing.assert_allclose(got["stem_conv.kernel"][:, :, 0], conv_kernel(rgb).sum(axis=2), rtol=1e-6)
    # a fresh head of three outputs, zero: the S-Net starts predicting 0 %
    assert got["head.kernel"].shape == (128, 3) and not got["head.kernel"].any() and not got["head.bias"].any()


def test_without_the_file_the_same_network_differs_from_it(config, expected):
    scratch = params(snet.make_snet(networks.with_changes(config, ("pretrained='none'",)), nnx.Rngs(0)))
    differ = [name for name, value in expected.items() if value.any() and not np.allclose(scratch[name], value)]
    assert differ == [name for name, value in expected.items() if value.any()]  # the comparison above is not vacuous


@pytest.mark.slow  # a ConvNeXt training step compiles for about 20 s: the loading is checked above
def test_ssc_train_snet_small_pretrained_loads_the_file_and_trains(tmp_path, expected):
    from sscjax.phantom import write_cohort

    data = write_cohort(tmp_path / "data", 8, "small", seed=5)
    sets = [arg for setting in FIXTURE_NETWORK for arg in ("--set", setting)]
    result = CliRunner().invoke(
        cli,
        ["train", "snet", "--data", str(data), "--fold", "0", "--preset", "small", "--pretrained", str(FIXTURE)]
        + ["--workdir", str(tmp_path / "runs"), "--steps", "2", *sets],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    run = runs.default_run_dir(tmp_path / "runs", "snet", 0)
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["preset"] == "small" and recorded["pretrained"] == str(FIXTURE.resolve())
    assert "snet fold 0: 2 steps" in result.output
    loaded = snet.SNet.read(run, "latest")
    model, trained_config = loaded.module, loaded.config
    # two Adam steps move a weight by at most the two steps' learning rates: the run started from the file
    moved = 2 * trained_config.train.learning_rate
    trained = params(model)
    for name, value in expected.items():
        np.testing.assert_allclose(trained[name], value, rtol=0, atol=moved, err_msg=name)
    assert np.abs(trained["head.kernel"]).max() <= moved
