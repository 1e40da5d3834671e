"""The paper authors' PyTorch checkpoints: each fixture network (made with PyTorch, every weight and statistic
random) reproduced from its state dict alone, and every file that is not one of them refused by name."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sscjax.errors import ModelError
from sscjax.models import count_parameters, create_model
from sscjax.models.authors import load_authors_network, read_authors_checkpoint
from sscjax.models.convert import read_state_dict
from sscjax.train import model_predictor

FIXTURES = Path(__file__).parent / "fixtures" / "authors_networks"
IMAGENET_CONVNEXT = Path(__file__).parent / "fixtures" / "torchvision_convnext" / "convnext.pth"
RTOL = 1e-4
SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def predict(model: nnx.Module, inputs: np.ndarray) -> np.ndarray:
    """The network's outputs through the engine's jitted predictor (eager NNX calls compile every op: 10x slower)."""
    return np.asarray(model_predictor(model, len(inputs))(np.asarray(inputs)))


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest |actual - expected| / |expected| (the fixtures hold no zeros)."""
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


def authors_slices(hu: np.ndarray) -> jax.Array:
    """The authors' S-Net input: HU clipped to [-1500, 1500], scaled to [0, 1], NHWC; no other normalisation."""
    return jnp.asarray(((np.clip(hu.astype(np.float32), -1500, 1500) + 1500) / 3000)[..., None])


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A .safetensors file (8-byte header size, JSON header, data): a state dict edited without torch."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        blob = np.ascontiguousarray(value).tobytes()
        dtype = SAFETENSORS_DTYPES[value.dtype]
        header[name] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def wrap_in_model_key(src: Path, dst: Path) -> Path:
    """The torch zip checkpoint `src` with its state dict saved as {"model": state_dict} (pickle edited)."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for name in archive.namelist():
            content = archive.read(name)
            if name.endswith("data.pkl"):  # PROTO 2 | body | STOP -> PROTO 2 {"model": body} STOP
                assert content[:2] == b"\x80\x02" and content[-1:] == b"."
                content = b"\x80\x02}X" + struct.pack("<I", 5) + b"model" + content[2:-1] + b"s."
            out.writestr(name, content)
    return dst


@pytest.fixture(scope="module")
def lnet_state() -> dict[str, np.ndarray]:
    return read_state_dict(FIXTURES / "lnet_vgg11_3d.pt")


def test_lnet_reproduces_the_authors_vgg11_3d():
    checkpoint = read_authors_checkpoint(FIXTURES / "lnet_vgg11_3d.pt")
    assert checkpoint.arch == "vgg11_3d"
    assert checkpoint.kwargs == {"num_outputs": 5, "in_chans": 1, "base": 2, "fc1_width": 32, "fc2_width": 32}
    volume = jnp.asarray(np.load(FIXTURES / "lnet_input.npy").transpose(0, 2, 3, 4, 1))  # NCDHW -> NDHWC
    expected = np.load(FIXTURES / "lnet_expected.npy")
    out = predict(checkpoint.model(), volume)
    assert out.shape == expected.shape == (1, 5)
    assert max_relative_error(out, expected) < RTOL, (out, expected)


@pytest.mark.parametrize(
    ("name", "arch", "sizes"),
    [
        ("convnext", "convnext", {"widths": (16, 32, 64, 128), "depths": (1, 1, 2, 1)}),
        ("vgg11_bn", "vgg11_bn", {"widths": (8, 16, 32, 32, 64, 64, 64, 64), "fc1_width": 32, "fc2_width": 32}),
    ],
)
def test_snet_reproduces_the_authors_percent_scores(name, arch, sizes):
    checkpoint = read_authors_checkpoint(FIXTURES / f"snet_{name}.pt")
    assert checkpoint.arch == arch
    assert {k: checkpoint.kwargs[k] for k in sizes} == sizes
    assert (checkpoint.kwargs["num_outputs"], checkpoint.kwargs["in_chans"]) == (3, 1)
    expected = np.load(FIXTURES / f"snet_{name}_expected.npy")
    out = predict(checkpoint.model(), authors_slices(np.load(FIXTURES / "snet_input_hu.npy")))
    assert out.shape == expected.shape == (4, 3)
    assert max_relative_error(out, expected) < RTOL, (out, expected)


def test_the_first_fc_needs_the_flatten_order_permutation():
    # the same weights with PyTorch's (C, H, W) column order left as is: far from PyTorch's scores, so the
    # comparison above would catch a missing or wrong permutation
    model = load_authors_network(FIXTURES / "snet_vgg11_bn.pt")
    torch_order = read_state_dict(FIXTURES / "snet_vgg11_bn.pt")["classifier.0.weight"]
    model.fc1.kernel.set_value(jnp.asarray(torch_order.T))
    out = predict(model, authors_slices(np.load(FIXTURES / "snet_input_hu.npy")))
    assert max_relative_error(out, np.load(FIXTURES / "snet_vgg11_bn_expected.npy")) > 1e-2


@pytest.mark.parametrize("name", ["lnet_vgg11_3d", "snet_convnext", "snet_vgg11_bn"])
def test_networks_load_in_evaluation_mode(name):
    modules = [m for _, m in nnx.iter_modules(load_authors_network(FIXTURES / f"{name}.pt"))]
    dropouts = [m for m in modules if isinstance(m, nnx.Dropout)]
    norms = [m for m in modules if isinstance(m, nnx.BatchNorm)]
    assert dropouts and all(m.deterministic for m in dropouts)
    assert all(m.use_running_average for m in norms) and (name == "snet_convnext") != bool(norms)


def test_a_state_dict_under_model_is_unwrapped(tmp_path):
    bare = read_authors_checkpoint(FIXTURES / "snet_vgg11_bn.pt")
    wrapped = read_authors_checkpoint(wrap_in_model_key(FIXTURES / "snet_vgg11_bn.pt", tmp_path / "model.pt"))
    assert (wrapped.arch, wrapped.kwargs) == (bare.arch, bare.kwargs)
    for a, b in zip(jax.tree.leaves(bare.state), jax.tree.leaves(wrapped.state)):
        np.testing.assert_array_equal(a, b)


def test_a_whole_model_pickle_is_refused_with_a_pointer_to_model_pt():
    path = FIXTURES / "snet_convnext_whole_model.pt"
    with pytest.raises(ModelError) as info:
        read_authors_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "model.pt" in message and "torchvision.models.convnext.ConvNeXt" in message


def test_another_network_is_refused(tmp_path):
    resnet = {"conv1.weight": np.zeros((4, 1, 7, 7), np.float32), "fc.weight": np.zeros((3, 4), np.float32)}
    path = write_safetensors(tmp_path / "resnet.safetensors", resnet)
    with pytest.raises(ModelError, match=r"resnet\.safetensors: not one of the authors' networks"):
        read_authors_checkpoint(path)
    with pytest.raises(
        ModelError, match=r"convnext\.pth: features\.0\.0\.weight is \(16, 3, 4, 4\), with 3 input channels"
    ):
        read_authors_checkpoint(IMAGENET_CONVNEXT)  # an RGB ImageNet ConvNeXt, not one of theirs


def test_missing_keys_and_wrong_shapes_are_named(tmp_path, lnet_state):
    state = dict(lnet_state)
    del state["features.13.running_var"]
    state["ln2.weight"] = np.zeros((32, 16), np.float32)
    state["features.11.weight"] = np.zeros((8, 7, 3, 3, 3), np.float32)
    path = write_safetensors(tmp_path / "lnet.safetensors", state)
    with pytest.raises(ModelError) as info:
        read_authors_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the weights do not fit")
    assert "missing 1: features.13.running_var" in message
    assert "ln2.weight is (32, 16), the model needs (32, 32)" in message
    assert "features.11.weight is (8, 7, 3, 3, 3), the model needs (8, 8, 3, 3, 3)" in message


def test_a_first_fc_that_does_not_fit_the_pooled_features_is_named(tmp_path):
    state = read_state_dict(FIXTURES / "snet_vgg11_bn.pt")
    state["classifier.0.weight"] = np.zeros((32, 3000), np.float32)
    del state["features.8.weight"]
    path = write_safetensors(tmp_path / "vgg.safetensors", state)
    with pytest.raises(ModelError, match=r"vgg\.safetensors: the key features\.8\.weight is missing"):
        read_authors_checkpoint(path)
    state["features.8.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    write_safetensors(path, state)
    with pytest.raises(ModelError, match=r"classifier\.0\.weight is \(32, 3000\), the model needs \(32, 3136\)"):
        read_authors_checkpoint(path)


def test_vgg11_bn_is_torchvisions_at_full_size():
    model = nnx.eval_shape(lambda: create_model("vgg11_bn", 1000, rngs=nnx.Rngs(0)))
    assert count_parameters(model) == 132_868_840  # torchvision's vgg11_bn
    x = jax.ShapeDtypeStruct((1, 512, 512, 1), jnp.float32)
    out = jax.eval_shape(lambda x: create_model("vgg11_bn", 3, in_chans=1, rngs=nnx.Rngs(0))(x), x)
    assert out.shape == (1, 3)
