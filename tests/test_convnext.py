"""ConvNeXt as torchvision defines it: sizes, stochastic depth, and the two depthwise implementations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sscjax.models import abstract_model, count_parameters
from sscjax.models.layers import DepthwiseConv2d, default_depthwise_impl


def reference_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int, pads) -> np.ndarray:
    """Depthwise convolution written out: out[h, w, c] = sum_ij xpad[h*s+i, w*s+j, c] * k[i, j, c]."""
    (top, bottom), (left, right) = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = kernel.shape[0]
    h_out, w_out = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, x.shape[3]))
    for h in range(h_out):
        for w in range(w_out):
            patch = xp[:, h * stride : h * stride + k, w * stride : w * stride + k, :]
            out[:, h, w] = (patch * kernel[:, :, 0, :]).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("impl", ["grouped", "shifted"])
@pytest.mark.parametrize(
    "kernel,stride,padding,expected_pads",
    [
        (7, 1, ((3, 3), (3, 3)), ((3, 3), (3, 3))),
        (5, 2, "SAME", ((1, 2), (1, 2))),  # TensorFlow SAME on an even size pads more at the end
        (3, 2, "SAME", ((0, 1), (0, 1))),
    ],
)
def test_depthwise_matches_the_written_out_convolution(impl, kernel, stride, padding, expected_pads):
    layer = nnx.eval_shape(
        lambda: DepthwiseConv2d(6, kernel, stride=stride, padding=padding, impl=impl, rngs=nnx.Rngs(0))
    )
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(kernel, kernel, 1, 6)).astype(np.float32)
    layer.kernel.set_value(jnp.asarray(weights))
    layer.bias.set_value(jnp.arange(6.0))
    x = rng.normal(size=(2, 12, 12, 6)).astype(np.float32)
    expected = reference_depthwise(x, weights, stride, expected_pads) + np.arange(6)
    y = nnx.jit(lambda layer, x: layer(x))(layer, jnp.asarray(x))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_cpu_default_is_the_shifted_sum():
    assert jax.default_backend() != "cpu" or default_depthwise_impl() == "shifted"


def random_weights(model: nnx.Module, seed: int) -> nnx.Module:
    """Fill every parameter (layer scales included) with N(0, 0.2) noise: no block is near identity."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(jnp.asarray(rng.normal(0, 0.2, var.shape), jnp.float32))
    return model


def test_grouped_and_shifted_networks_agree():
    grouped = random_weights(
        abstract_model("convnext", 10, widths=(16, 32, 64, 128), depths=(1, 1, 2, 1), depthwise="grouped"), 0
    )
    grouped.eval()
    shifted = nnx.clone(grouped)
    for stage in shifted.stages:
        for block in stage:
            block.dwconv.impl = "shifted"

    forward = nnx.jit(lambda model, x: model(x))
    x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
    logits = forward(grouped, x)
    assert logits.shape == (2, 10)
    assert float(jnp.abs(logits).max()) > 1e-2  # a real signal, not a near-zero output
    np.testing.assert_allclose(logits, forward(shifted, x), rtol=1e-5, atol=1e-5)


def test_stochastic_depth_schedule_is_torchvisions():
    model = abstract_model("convnext", 10, widths=(8, 8, 8, 8), depths=(1, 1, 2, 1), stochastic_depth_prob=0.5)
    rates = [block.drop_path.rate for stage in model.stages for block in stage]
    np.testing.assert_allclose(rates, [0.0, 0.125, 0.25, 0.375, 0.5])  # p * i / (n - 1)


def test_stochastic_depth_drops_whole_samples():
    model = random_weights(abstract_model("convnext", 10, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1)), 5)
    block = model.stages[0][0]
    block.drop_path.rate = 0.5
    x = jax.random.normal(jax.random.key(4), (32, 4, 4, 8))
    residual = nnx.jit(lambda block, x: block(x) - x)
    block.eval()
    delta = np.asarray(residual(block, x))
    block.train()
    delta_train = np.asarray(residual(block, x))
    # "row" mode: each sample keeps the whole residual branch scaled by 1 / (1 - p) = 2, or none of it
    kept = np.all(np.isclose(delta_train, 2 * delta, atol=1e-5), axis=(1, 2, 3))
    dropped = np.all(delta_train == 0, axis=(1, 2, 3))
    assert np.all(kept ^ dropped) and 0 < kept.sum() < 32


@pytest.mark.parametrize(
    "arch,expected",
    [  # torchvision's published parameter counts
        ("convnext_tiny", 28_589_128),
        ("convnext_base", 88_591_464),
    ],
)
def test_named_variants_have_torchvisions_size(arch, expected):
    model = abstract_model(arch, 1000)
    assert count_parameters(model) == expected
    assert model.stages[-1][-1].drop_path.rate == {"convnext_tiny": 0.1, "convnext_base": 0.5}[arch]
