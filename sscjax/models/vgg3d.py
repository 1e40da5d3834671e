"""The L-Net: a 3D VGG regression network (conv3 -> ReLU -> BatchNorm) on NDHWC CT volumes."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax.errors import ConfigError, ModelError
from sscjax.models.layers import Conv3dImpl, TorchBatchNorm, conv3d_same, default_conv3d_impl, max_pool3d

# Convolutions per stage (a max-pool closes every stage), as in torchvision's VGG cfgs A, B, D, E.
VGG_STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
POOLED_SIZE = 6
FC_WIDTH = 1024
MIN_INPUT_SIZE = 2 ** (len(VGG_STAGES[11]) + 1) - 1  # 63: five valid 3/2 pools still leave one voxel


@lru_cache(maxsize=64)
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of PyTorch's adaptive average pooling along one axis.

    Cell i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1 (cells overlap
    when n_in is not a multiple of n_out, and repeat inputs when n_in < n_out).
    """
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    j = np.arange(n_in)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(np.float32)


def adaptive_avg_pool3d(x: jax.Array, size: int = POOLED_SIZE) -> jax.Array:
    """PyTorch's AdaptiveAvgPool3d on an NDHWC array, as one fixed averaging matrix per axis."""
    md, mh, mw = (jnp.asarray(adaptive_pool_matrix(n, size)) for n in x.shape[1:4])
    return jnp.einsum("ndhwc,id,jh,kw->nijkc", x, md, mh, mw)


def he_normal_fan_out(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """torchvision's VGG convolution init (He normal, fan out) of a (kd, kh, kw, in, out) kernel, drawn as
    (kd*kh*kw, in, out): the same fans and numbers (a partitionable threefry draw depends only on the flat index),
    which XLA on a CPU compiles three times faster than a five-dimensional draw (0.5 s against 1.5 s a shape)."""
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    return init(key, (int(np.prod(shape[:-2])), *shape[-2:]), dtype).reshape(shape)


def _linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A fully connected layer initialised like torchvision's VGG classifier, N(0, 0.01)."""
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.normal(0.01), rngs=rngs)


class ConvReluBN(nnx.Module):
    """3x3x3 convolution (padding 1) -> ReLU -> BatchNorm, the published L-Net order. `impl` picks how the
    convolution is computed (`layers.conv3d_same`; None: the fastest for the backend)."""

    def __init__(self, in_features: int, out_features: int, *, impl: Conv3dImpl | None = None, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (3, 3, 3),
            padding=((1, 1),) * 3,
            kernel_init=he_normal_fan_out,
            rngs=rngs,
        )
        self.bn = TorchBatchNorm(out_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.impl = impl or default_conv3d_impl(in_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        assert self.conv.bias is not None  # the convolution is made with its bias
        x, kernel, bias = self.conv.promote_dtype(
            (x, self.conv.kernel[...], self.conv.bias[...]), dtype=self.conv.dtype
        )  # nnx.Conv's (mixed) precision
        return self.bn(jax.nn.relu(conv3d_same(x, kernel, self.impl) + bias))


class VGG3D(nnx.Module):
    """3D VGG (depth 11/13/16/19) regressing `num_outputs` values from an (N, D, H, W, 1) volume.

    Stage s has width base * 2**s and ends with a max-pool (kernel 3, stride 2, no padding, floor,
    like torch's MaxPool3d(3, 2)); then PyTorch-exact adaptive average pooling to 6x6x6, flattened in
    (D, H, W, C) order, and the head FC fc1_width -> ReLU -> Dropout(0.5) -> FC fc2_width -> ReLU ->
    Dropout(0.5) -> FC num_outputs. Initialisation follows torchvision's VGG (He-normal fan-out convs,
    N(0, 0.01) linears).
    """

    def __init__(
        self,
        num_outputs: int = 5,
        base: int = 8,
        depth: int = 11,
        *,
        in_chans: int = 1,
        fc1_width: int = FC_WIDTH,
        fc2_width: int = FC_WIDTH,
        rngs: nnx.Rngs,
    ):
        if depth not in VGG_STAGES:
            raise ConfigError(f"VGG depth {depth} is not one of {sorted(VGG_STAGES)}")
        layers, width_in = [], in_chans
        for stage, n_convs in enumerate(VGG_STAGES[depth]):
            for _ in range(n_convs):
                layers.append(ConvReluBN(width_in, base * 2**stage, rngs=rngs))
                width_in = base * 2**stage
        self.features = nnx.List(layers)
        self.stage_ends = tuple(int(i) for i in np.cumsum(VGG_STAGES[depth]) - 1)
        self.fc1 = _linear(width_in * POOLED_SIZE**3, fc1_width, rngs)
        self.fc2 = _linear(fc1_width, fc2_width, rngs)
        self.head = _linear(fc2_width, num_outputs, rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def trunk(self, x: jax.Array) -> jax.Array:
        """Convolutional features after the last max-pool, (N, d, h, w, C)."""
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.stage_ends:
                x = max_pool3d(x, 3, 2)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, D, H, W, C) volume -> (N, num_outputs); every spatial size must be >= 63."""
        if min(x.shape[1:4]) < MIN_INPUT_SIZE:
            raise ModelError(f"VGG3D needs every spatial size >= {MIN_INPUT_SIZE}, got {x.shape[1:4]}")
        x = adaptive_avg_pool3d(self.trunk(x)).reshape(x.shape[0], -1)
        x = self.dropout(jax.nn.relu(self.fc1(x)))
        x = self.dropout(jax.nn.relu(self.fc2(x)))
        return self.head(x)
