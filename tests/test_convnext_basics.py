"""The basics a ConvNeXt S-Net must have to learn (issue: the paper's S-Net shown to learn): a narrow ConvNeXt fits
one fixed batch through the engine's own step, the gradient reaches every stage, stochastic depth acts in training
only, and LayerNorm (no batch statistics) computes the same in training and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fitting import fit_fixed_batch
from flax import nnx

from sscjax.configs import ModelConfig
from sscjax.models import build_model

# grouped depthwise convolutions compile faster than the CPU default (shifted sums); the two are equal elsewhere
NARROW = {"num_outputs": 3, "in_chans": 1, "widths": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "depthwise": "grouped"}


def narrow(stochastic_depth_prob: float = 0.0) -> ModelConfig:
    return ModelConfig("convnext", {**NARROW, "stochastic_depth_prob": stochastic_depth_prob})


@pytest.fixture(scope="module")
def narrow_fit():
    """A narrow ConvNeXt (the S-Net's one-channel stem, torchvision's layer scale 1e-6) trained 60 steps on one fixed
    batch of 8 random 32x32 images with random targets: (first loss, last loss, evaluation MSE, gradient norms, the
    targets' variance)."""
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.standard_normal((8, 32, 32, 1)).astype(np.float32),
        "targets": rng.uniform(0.0, 0.5, (8, 3)).astype(np.float32),
    }
    return (*fit_fixed_batch(narrow(), batch, steps=60, learning_rate=1e-3), float(batch["targets"].var()))


@pytest.mark.slow  # a 60-step fit: a proof that the network can learn, not a quick check
def test_a_narrow_convnext_fits_one_fixed_batch(narrow_fit):
    first, last, eval_mse, _, variance = narrow_fit
    assert first > 0.9 * variance and last < 0.02 * variance and eval_mse < 0.02 * variance, (first, last, eval_mse)


@pytest.mark.slow  # a 60-step fit: a proof that the network can learn, not a quick check
def test_the_gradient_reaches_every_stage(narrow_fit):
    norms = narrow_fit[3]
    blocks = [f"stages.{s}.{b}" for s, depth in enumerate(NARROW["depths"]) for b in range(depth)]
    assert {"stem_conv", "stem_norm", "head_norm", "head"} | {f"downsamples.{i}.conv" for i in range(3)} <= set(norms)
    inside = [f"{block}.{part}" for block in blocks for part in ("dwconv", "fc1", "fc2")]
    assert set(inside) <= set(norms) and all(np.isfinite(norms[k]) and norms[k] > 0 for k in norms), norms


def test_stochastic_depth_acts_in_training_only_and_layer_norm_the_same_in_both_modes():
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
    forward = nnx.jit(lambda m: m(x))  # one compiled program per mode, not one per operation
    model = build_model(narrow(0.5), nnx.Rngs(0))
    for block in (b for stage in model.stages for b in stage):  # blocks that matter, so dropping one shows
        block.gamma.set_value(jnp.ones_like(block.gamma.get_value()))
    model.train()
    dropped = [np.asarray(forward(model)) for _ in range(2)]  # the dropout stream advances between calls
    assert np.abs(dropped[0] - dropped[1]).max() > 1e-4
    model.eval()
    evaluated = np.asarray(forward(model))
    np.testing.assert_array_equal(evaluated, np.asarray(forward(model)))
    plain = build_model(narrow(0.0), nnx.Rngs(0))
    nnx.update(plain, nnx.state(model, nnx.Param))
    np.testing.assert_allclose(np.asarray(forward(plain)), evaluated, rtol=1e-5, atol=1e-6)  # eval: no block dropped
    plain.train()
    np.testing.assert_allclose(np.asarray(forward(plain)), evaluated, rtol=1e-5, atol=1e-6)  # LayerNorm: no mode
