"""PyTorch weights without torch: the three file formats, key schemes, safety, errors, our .npz files."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx
from sscjax.cli.main import cli

from sscjax.errors import ModelError
from sscjax.models import load_torch_weights, load_weights, save_weights
from sscjax.models.convert import read_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_convnext"
FILES = ["convnext.pth", "convnext_legacy.pth", "convnext.safetensors"]
GREY = ((0.449,), (0.226,))


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_state_dict(FIXTURE / "convnext.pth")


@pytest.fixture(scope="module")
def image() -> jax.Array:
    """The fixture's input batch, NCHW -> NHWC."""
    return jnp.asarray(np.load(FIXTURE / "input_nchw.npy").transpose(0, 2, 3, 1))


@nnx.jit
def outputs(model: nnx.Module, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model(x), model.pooled(x)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32") -> Path:
    """A .safetensors file written from its specification (8-byte header size, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        blob = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def rename(state: dict[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    """torchvision keys -> timm's or the original ConvNeXt release's (layer scales as (C,) gammas)."""
    block = {
        "timm": ("stages.{s}.blocks.{b}.", {"0": "conv_dw", "2": "norm", "3": "mlp.fc1", "5": "mlp.fc2"}),
        "fb": ("stages.{s}.{b}.", {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}),
    }[scheme]
    head = {"timm": ("head.norm", "head.fc"), "fb": ("norm", "head")}[scheme]
    out = {}
    for key, value in state.items():
        if m := re.match(r"features\.(\d+)\.(\d+)\.(block\.(\d)\.|layer_scale)(.*)", key):
            stage, b = (int(m[1]) - 1) // 2, m[2]
            prefix = block[0].format(s=stage, b=b)
            key = prefix + (block[1][m[4]] + "." + m[5] if m[4] else "gamma")
            value = value.reshape(-1) if key.endswith("gamma") else value
        elif m := re.match(r"features\.(\d+)\.(\d)\.(.*)", key):
            stage = int(m[1]) // 2
            down = (
                ("stem" if stage == 0 else f"stages.{stage}.downsample")
                if scheme == "timm"
                else f"downsample_layers.{stage}"
            )
            key = f"{down}.{m[2]}.{m[3]}"
        else:
            key = re.sub(r"^classifier\.0", head[0], re.sub(r"^classifier\.2", head[1], key))
        out[key] = value
    return out


def wrap_zip_pth(path: Path, key: str) -> Path:
    """The fixture's torch zip file with its state dict nested as {key: state_dict} (pickle edited)."""
    with zipfile.ZipFile(FIXTURE / "convnext.pth") as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name.endswith("data.pkl"):  # PROTO 2 | body | STOP -> PROTO 2 {key: body} STOP
                assert content[:2] == b"\x80\x02" and content[-1:] == b"."
                label = key.encode()
                content = b"\x80\x02}X" + struct.pack("<I", len(label)) + label + content[2:-1] + b"s."
            dst.writestr(name, content)
    return path


@pytest.mark.parametrize("name", FILES)
def test_every_format_reproduces_torchvision(name, image):
    model = load_torch_weights(FIXTURE / name, "convnext")
    logits, pooled = outputs(model, image)
    np.testing.assert_allclose(logits, np.load(FIXTURE / "expected_logits.npy"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled, np.load(FIXTURE / "expected_pooled_features.npy"), atol=1e-5, rtol=0)


def test_the_three_formats_hold_the_same_tensors(state):
    assert len(state) == 65
    for name in FILES[1:]:
        other = read_state_dict(FIXTURE / name)
        assert other.keys() == state.keys()
        for key in state:
            assert other[key].dtype == np.float32
            np.testing.assert_array_equal(other[key], state[key])


def test_bfloat16_safetensors(tmp_path, state):
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    back = read_state_dict(write_safetensors(tmp_path / "bf16.safetensors", bf16, "BF16"))
    assert back["features.0.0.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back["features.0.0.weight"], bf16["features.0.0.weight"])


@pytest.mark.parametrize("scheme,wrapper", [("timm", "state_dict"), ("fb", "model")])
def test_timm_and_original_release_checkpoints(tmp_path, state, image, scheme, wrapper):
    renamed = rename(state, scheme)
    assert not renamed.keys() & state.keys()
    model = load_torch_weights(write_safetensors(tmp_path / f"{scheme}.safetensors", renamed), "convnext")
    np.testing.assert_allclose(outputs(model, image)[0], np.load(FIXTURE / "expected_logits.npy"), atol=1e-5)
    wrapped = read_state_dict(wrap_zip_pth(tmp_path / f"{wrapper}.pth", wrapper))
    assert wrapped.keys() == state.keys()


def evil_pickle(function: object, argument: str, protocol: int) -> bytes:
    class Evil:
        def __reduce__(self):
            return function, (argument,)

    return pickle.dumps({"features.0.0.weight": Evil()}, protocol=protocol)


def test_pickles_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
            pickle.dump(header, f, protocol=2)
        f.write(evil_pickle(os.system, f"touch {marker}", 2))  # GLOBAL opcode
    zipped = tmp_path / "zipped.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", evil_pickle(eval, f"open({str(marker)!r}, 'w')", 4))  # STACK_GLOBAL
    for path, refused in ((legacy, f"{os.system.__module__}.system"), (zipped, "builtins.eval")):
        with pytest.raises(ModelError, match=re.escape(refused)) as error:
            read_state_dict(path)
        assert str(path) in str(error.value)
    assert not marker.exists()


def test_corrupt_files_are_user_errors(tmp_path):
    truncated = tmp_path / "truncated.pth"
    with zipfile.ZipFile(FIXTURE / "convnext.pth") as src, zipfile.ZipFile(truncated, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name)[:100] if name.endswith("data/0") else src.read(name))
    short = tmp_path / "short.safetensors"
    short.write_bytes((FIXTURE / "convnext.safetensors").read_bytes()[:-1000])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    for path, problem in (
        (truncated, "holds 100 bytes, its tensor storage needs"),
        (short, "does not fit its offsets"),
        (junk, "unreadable"),
    ):
        with pytest.raises(ModelError, match=problem) as error:
            read_state_dict(path)
        assert str(path) in str(error.value)


def test_random_bytes_are_refused_as_user_errors(tmp_path):
    """Random files hit pickle opcodes whose length fields reach far past the file (the C unpickler would
    allocate them: MemoryError, OverflowError); each must be refused as a ModelError naming the file."""
    rng = np.random.default_rng(0)
    path = tmp_path / "junk.pth"
    for _ in range(2000):
        path.write_bytes(rng.bytes(512))
        with pytest.raises(ModelError) as error:
            read_state_dict(path)
        assert str(path) in str(error.value)


def test_mismatches_are_reported_by_name(tmp_path, state):
    broken = dict(state)
    del broken["features.5.1.block.3.bias"]
    broken["features.3.0.block.9.weight"] = np.zeros(3, np.float32)
    broken["features.2.1.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    path = write_safetensors(tmp_path / "broken.safetensors", broken)
    with pytest.raises(ModelError) as error:
        load_torch_weights(path, "convnext")
    message = str(error.value)
    for expected in (
        str(path),
        "missing 1: features.5.1.block.3.bias",
        "unexpected 1: features.3.0.block.9.weight",
        "features.2.1.weight is (32, 16, 3, 3), the model needs (32, 16, 2, 2)",
    ):
        assert expected in message
    with pytest.raises(ModelError, match="no such weights file"):
        load_torch_weights(tmp_path / "absent.pth", "convnext")
    with pytest.raises(ModelError, match="unknown architecture"):
        load_torch_weights(FIXTURE / "convnext.pth", "resnet50")
    with pytest.raises(ModelError, match="classifier.0.weight is"):
        load_torch_weights(FIXTURE / "convnext.pth", "convnext_tiny")


def test_one_channel_stem_sums_the_rgb_kernels(image):
    # grey g through the 1-channel net (normalising inside) = the RGB net on ((g - m) / s) x 3
    grey = image.mean(axis=-1, keepdims=True)
    one = load_torch_weights(FIXTURE / "convnext.pth", "convnext", in_chans=1, input_norm=GREY)
    three = load_torch_weights(FIXTURE / "convnext.pth", "convnext")
    replicated = jnp.repeat((grey - GREY[0][0]) / GREY[1][0], 3, axis=-1)
    np.testing.assert_allclose(outputs(one, grey)[0], outputs(three, replicated)[0], atol=1e-5)
    documented = load_torch_weights(FIXTURE / "convnext.pth", "convnext", in_chans=1, normalize_input=True)
    assert documented.input_norm == GREY


def test_fresh_head_keeps_the_backbone(state):
    model = load_torch_weights(FIXTURE / "convnext.pth", "convnext", num_classes=3, seed=1)
    assert model.head.kernel.shape == (128, 3)
    np.testing.assert_array_equal(model.head.bias[...], 0)
    np.testing.assert_array_equal(model.stem_conv.kernel[...], state["features.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.head_norm.scale[...], state["classifier.0.weight"])


def test_save_and_load_round_trip(tmp_path):
    model = load_torch_weights(FIXTURE / "convnext_legacy.pth", "convnext")
    meta = {
        "arch": "convnext",
        "num_classes": 10,
        "in_chans": 3,
        "source": "fixture",
        "options": {"widths": [16, 32, 64, 128], "depths": [1, 1, 2, 1]},
    }
    path = save_weights(tmp_path / "w.npz", model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]  # no temporary file left behind
    loaded, loaded_meta = load_weights(path)
    assert loaded_meta == meta
    original, again = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
    for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="bad.npz"):
        load_weights(tmp_path / "bad.npz")


def test_cli_convert(tmp_path):
    runner = CliRunner()
    dst = tmp_path / "snet.npz"
    result = runner.invoke(
        cli,
        [
            "weights",
            "convert",
            str(FIXTURE / "convnext.pth"),
            str(dst),
            "--arch",
            "convnext",
            "--num-classes",
            "3",
            "--in-chans",
            "1",
            "--normalize-input",
        ],
    )
    assert result.exit_code == 0, result.output
    # 270,298 parameters with 3 RGB channels and 10 classes; the stem loses 2 * 16 * 4 * 4, the head 7 * 129
    expected = f"convnext: {270298 - 512 - 903:,} parameters, 3 outputs, 1 input channel(s) -> {dst}"
    assert result.output.strip() == expected
    model, meta = load_weights(dst)
    assert (meta["num_classes"], meta["in_chans"], model.input_norm) == (3, 1, GREY)
    failed = runner.invoke(cli, ["weights", "convert", str(tmp_path / "absent.pth"), str(dst), "--arch", "convnext"])
    assert isinstance(failed.exception, ModelError)  # cli.main prints it as one line, exit code 2
