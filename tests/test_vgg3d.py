"""The L-Net: PyTorch-exact adaptive pooling, published parameter count, shapes, layer order, and the CPU-fast
convolution and pooling forms against the plain ones."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fitting import fit_fixed_batch
from flax import nnx

from sscjax.errors import ConfigError, ModelError
from sscjax.models import abstract_model
from sscjax.models.layers import default_conv3d_impl, max_pool3d
from sscjax.models.vgg3d import VGG3D, ConvReluBN, adaptive_avg_pool3d, adaptive_pool_matrix
from sscjax.train import model_predictor


def test_adaptive_pool_4_to_6_repeats_inputs_like_torch():
    # cells [0,1) [0,2) [1,2) [2,3) [2,4) [3,4) worked out from floor(i*4/6) .. ceil((i+1)*4/6)
    x = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(adaptive_pool_matrix(4, 6) @ x, [1, 1.5, 2, 4, 6, 8], rtol=1e-6)


def test_adaptive_pool_13_to_6_overlaps_like_torch():
    # cells [0,3) [2,5) [4,7) [6,9) [8,11) [10,13)
    x = np.arange(13.0) ** 2
    expected = np.array([5, 29, 77, 149, 245, 365]) / 3
    np.testing.assert_allclose(adaptive_pool_matrix(13, 6) @ x, expected, rtol=1e-6)


def test_adaptive_pool_5_to_6():
    # cells [0,1) [0,2) [1,3) [2,4) [3,5) [4,5): the depth left by a 192-slice crop
    x = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(adaptive_pool_matrix(5, 6) @ x, [1, 2, 4, 6, 8, 9], rtol=1e-6)


def test_adaptive_pool_3d_is_the_box_mean():
    x = np.random.default_rng(0).normal(size=(2, 5, 13, 4, 3)).astype(np.float32)
    out = np.asarray(adaptive_avg_pool3d(jnp.asarray(x)))
    assert out.shape == (2, 6, 6, 6, 3)

    def cell(i: int, n: int) -> slice:
        return slice(i * n // 6, -(-(i + 1) * n // 6))

    for i, j, k in [(0, 0, 0), (1, 2, 3), (5, 5, 5), (3, 1, 4)]:
        box = x[:, cell(i, 5), cell(j, 13), cell(k, 4)]
        np.testing.assert_allclose(out[:, i, j, k], box.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)


def published_parameter_count(base: int = 8) -> int:
    """Hand count of the VGG11 L-Net: 8 conv3 (+bias) with BatchNorm scale/bias, then the FC head."""
    widths = [1] + [base * m for m in (1, 2, 4, 4, 8, 8, 16, 16)]
    convs = sum(27 * cin * cout + cout + 2 * cout for cin, cout in itertools.pairwise(widths))
    fc_in = 16 * base * 6**3  # 128 * 216 = 27648 at base 8, whatever the input size
    return convs + (fc_in * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 5 + 5)


@pytest.fixture(scope="module")
def tiny() -> VGG3D:
    """A base-2 VGG11 (same pooling arithmetic as the published net), built without random-init
    compilation: He-normal kernels, BatchNorm at its initial scale 1, bias 0, mean 0, variance 1."""
    model = abstract_model("vgg11_3d", 3, base=2)
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        if path[-1] == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(var.shape[:-1])), var.shape)
        else:
            value = np.full(var.shape, 1.0 if path[-1] in ("scale", "var") else 0.0)
        var.set_value(jnp.asarray(value, jnp.float32))
    model.eval()
    return model


def test_parameter_count_matches_the_published_net():
    model = nnx.eval_shape(lambda: VGG3D(num_outputs=5, base=8, depth=11, rngs=nnx.Rngs(0)))
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_params == published_parameter_count(8)
    assert 30.2e6 < n_params < 30.3e6


def test_full_size_shapes_without_computing(tiny):
    x = jax.ShapeDtypeStruct((1, 192, 256, 256, 1), jnp.float32)
    # 192 -> 95 -> 47 -> 23 -> 11 -> 5 and 256 -> 127 -> 63 -> 31 -> 15 -> 7 (torch MaxPool3d(3, 2))
    assert jax.eval_shape(tiny.trunk, x).shape == (1, 5, 7, 7, 32)
    assert jax.eval_shape(tiny, x).shape == (1, 3)


def test_tiny_forward_is_deterministic_in_eval_mode(tiny):
    x = jax.random.normal(jax.random.key(1), (1, 63, 63, 63, 1))
    forward = nnx.jit(lambda model, x: model(x))
    y = forward(tiny, x)
    assert y.shape == (1, 3) and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(y, forward(tiny, x))


def test_block_is_conv_relu_then_batchnorm(tiny):
    # in training mode the block output is normalised per channel (mean 0, variance 1), so it has
    # negative values, which conv -> BatchNorm -> ReLU could not give.
    block = nnx.clone(tiny.features[0])
    block.train()
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 16, 1))
    y = np.asarray(block(x)).reshape(-1, 2)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=0), 1, atol=1e-2)


def test_bad_depth_and_too_small_input_are_user_errors(tiny):
    with pytest.raises(ConfigError, match="depth 12"):
        VGG3D(depth=12, rngs=nnx.Rngs(0))
    vgg13 = nnx.eval_shape(lambda: VGG3D(base=2, depth=13, rngs=nnx.Rngs(0)))
    assert len(vgg13.features) == 10
    with pytest.raises(ModelError, match="63"):
        tiny(jnp.zeros((1, 62, 64, 64, 1)))


@pytest.mark.parametrize("impl", ["xla", "slices", "stacked"])
@pytest.mark.parametrize("cin", [1, 3])
def test_convolution_implementations_match_nnx_conv(impl, cin):
    block = ConvReluBN(cin, 4, impl=impl, rngs=nnx.Rngs(0))
    block.conv.bias.set_value(jnp.linspace(-0.5, 0.5, 4))
    block.eval()
    x = jax.random.normal(jax.random.key(3), (2, 7, 9, 8, cin))
    expected = block.bn(jax.nn.relu(block.conv(x)))
    np.testing.assert_allclose(block(x), expected, rtol=1e-5, atol=1e-5)


def test_cpu_default_convolutions():
    if jax.default_backend() == "cpu":
        assert (default_conv3d_impl(1), default_conv3d_impl(8)) == ("stacked", "slices")
    else:
        assert default_conv3d_impl(8) == "xla"


def test_separable_max_pool_equals_the_3d_window():
    x = jax.random.normal(jax.random.key(4), (2, 9, 12, 7, 3))
    expected = nnx.max_pool(x, (3, 3, 3), strides=(2, 2, 2), padding="VALID")
    np.testing.assert_array_equal(max_pool3d(x, 3, 2), expected)


# ---------------------------------------------------------------- the basics a network that learns must have


def random_batch(n: int, shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.standard_normal((n, *shape, 1)).astype(np.float32),
        "targets": rng.uniform(-0.3, 0.3, (n, 5)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def narrow_fit():
    """A narrow VGG11-3D (base 2, FC 128, dropout off: it only adds noise to the fit) trained 60 steps on one fixed
    batch of 4 random volumes with random targets: (first loss, last loss, evaluation MSE, last gradient norms,
    the targets' variance)."""
    from sscjax.configs import ModelConfig

    batch = random_batch(4, (64, 64, 64))
    kwargs = {"num_outputs": 5, "base": 2, "fc1_width": 128, "fc2_width": 128}
    config = ModelConfig("vgg11_3d", kwargs, dropout=0.0)
    return (*fit_fixed_batch(config, batch, steps=60, learning_rate=3e-4), float(batch["targets"].var()))


@pytest.mark.slow  # a 60-step fit: a proof that the network can learn, not a quick check
def test_the_gradient_reaches_every_layer(narrow_fit):
    norms = narrow_fit[3]
    layers = [f"features.{i}.{part}" for i in range(8) for part in ("conv", "bn")] + ["fc1", "fc2", "head"]
    assert sorted(norms) == sorted(layers)
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


@pytest.mark.slow  # a 60-step fit: a proof that the network can learn, not a quick check
def test_a_narrow_vgg11_fits_one_fixed_batch_to_near_zero_loss(narrow_fit):
    # A network that cannot fit 4 examples has a bug (wrong gradients, a frozen layer, BatchNorm statistics that
    # differ between modes). Measured: training loss 1.3e-4 of the targets' variance, evaluation 0.24 (the running
    # BatchNorm statistics trail the weights by a few steps).
    first, last, eval_mse, _, variance = narrow_fit
    assert first > 0.9 * variance and last < 0.01 * variance and eval_mse < 0.3 * variance, (first, last, eval_mse)


def test_batchnorm_uses_batch_statistics_in_training_and_running_averages_in_evaluation():
    # torch's BatchNorm3d(momentum=0.1) = flax's momentum 0.9: running = 0.9 running + 0.1 batch, the running
    # variance averaging the batch's unbiased variance as torch's does (the batch is normalised by the biased one)
    block = ConvReluBN(1, 3, impl="xla", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (2, 6, 7, 8, 1)) * 3 + 1
    pre_bn = np.asarray(jax.nn.relu(block.conv(x))).reshape(-1, 3)
    block.train()
    block(x)
    block(x)
    np.testing.assert_allclose(block.bn.mean[...], (1 - 0.9**2) * pre_bn.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(block.bn.var[...], 0.9**2 + (1 - 0.9**2) * pre_bn.var(axis=0, ddof=1), rtol=1e-5)
    block.eval()
    expected = (pre_bn - block.bn.mean[...]) / np.sqrt(block.bn.var[...] + 1e-5)
    np.testing.assert_allclose(np.asarray(block(x)).reshape(-1, 3), expected, rtol=1e-4, atol=1e-5)


def test_head_is_initialised_like_torchvision_and_dropout_acts_only_in_training():
    model = VGG3D(num_outputs=5, base=2, rngs=nnx.Rngs(0))
    for layer in (model.fc1, model.fc2, model.head):
        assert abs(float(layer.kernel[...].std()) - 0.01) < 0.001 and not np.any(layer.bias[...])
    assert model.dropout.rate == 0.5
    h = jnp.ones((4, 1024))
    model.train()
    kept = np.asarray(model.dropout(h)) != 0
    assert 0.45 < kept.mean() < 0.55 and set(np.unique(np.asarray(model.dropout(h)))) <= {0.0, 2.0}
    model.eval()
    np.testing.assert_array_equal(model.dropout(h), h)
    x = np.asarray(jax.random.normal(jax.random.key(6), (1, 63, 63, 63, 1)))
    # N(0, 0.01) layers keep the untrained outputs near 0, the middle of the crop: no large first steps
    assert float(np.abs(model_predictor(model, 1)(x)).max()) < 0.5


def test_convolutions_are_drawn_he_normal_fan_out_as_torchvision_and_flax_would():
    from sscjax.models.vgg3d import he_normal_fan_out

    shape, key = (3, 3, 3, 16, 32), jax.random.key(4)
    kernel = np.asarray(he_normal_fan_out(key, shape))
    np.testing.assert_array_equal(kernel, nnx.initializers.variance_scaling(2.0, "fan_out", "normal")(key, shape))
    assert kernel.shape == shape and abs(kernel.std() / np.sqrt(2 / (27 * 32)) - 1) < 0.05
