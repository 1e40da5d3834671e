"""torchvision's VGG11 with BatchNorm (`vgg11_bn`) on NHWC images, any widths, input channels and head sizes."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax.errors import ConfigError, ModelError
from sscjax.models.layers import TorchBatchNorm
from sscjax.models.vgg3d import VGG_STAGES, adaptive_pool_matrix

VGG11_STAGES = VGG_STAGES[11]  # convolutions per stage, a 2x2 max-pool after each stage
VGG11_BN_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)  # torchvision's cfg "A", one width per convolution
POOLED_SIZE = 7
FC_WIDTH = 4096
MIN_INPUT_SIZE = 2 ** len(VGG11_STAGES)  # 32: five 2x2 pools still leave one pixel


def adaptive_avg_pool2d(x: jax.Array, size: int = POOLED_SIZE) -> jax.Array:
    """PyTorch's AdaptiveAvgPool2d on an NHWC array, as one fixed averaging matrix per axis."""
    mh, mw = (jnp.asarray(adaptive_pool_matrix(n, size)) for n in x.shape[1:3])
    return jnp.einsum("nhwc,ih,jw->nijc", x, mh, mw)


def _linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A fully connected layer initialised like torchvision's VGG classifier, N(0, 0.01)."""
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.normal(0.01), rngs=rngs)


class ConvBNReLU(nnx.Module):
    """3x3 convolution (padding 1) -> BatchNorm -> ReLU, torchvision's VGG-bn order."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
            rngs=rngs,
        )
        self.bn = TorchBatchNorm(out_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class VGG11BN(nnx.Module):
    """torchvision's `vgg11_bn` on (N, H, W, in_chans) images, one width per convolution (`widths`).

    Five stages of 1, 1, 2, 2, 2 convolutions, each stage closed by a 2x2 stride-2 max-pool (floor); then
    PyTorch-exact adaptive average pooling to 7x7, flattened in (H, W, C) order, and the classifier
    FC fc1_width -> ReLU -> Dropout(0.5) -> FC fc2_width -> ReLU -> Dropout(0.5) -> FC num_classes.
    Initialisation follows torchvision (He-normal fan-out convs, N(0, 0.01) linears).
    """

    def __init__(
        self,
        widths: Sequence[int] = VGG11_BN_WIDTHS,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        fc1_width: int = FC_WIDTH,
        fc2_width: int = FC_WIDTH,
        rngs: nnx.Rngs,
    ):
        if len(widths) != sum(VGG11_STAGES):
            raise ConfigError(f"VGG11 has {sum(VGG11_STAGES)} convolutions, got {len(widths)} widths")
        ins = (in_chans, *widths[:-1])
        self.features = nnx.List([ConvBNReLU(a, b, rngs=rngs) for a, b in zip(ins, widths)])
        self.stage_ends = tuple(int(i) for i in np.cumsum(VGG11_STAGES) - 1)
        self.fc1 = _linear(widths[-1] * POOLED_SIZE**2, fc1_width, rngs)
        self.fc2 = _linear(fc1_width, fc2_width, rngs)
        self.head = _linear(fc2_width, num_classes, rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def trunk(self, x: jax.Array) -> jax.Array:
        """Convolutional features after the last max-pool, (N, h, w, C) (torchvision's `model.features`)."""
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.stage_ends:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C) images -> (N, num_classes); H and W must be >= 32."""
        if min(x.shape[1:3]) < MIN_INPUT_SIZE:
            raise ModelError(f"VGG11BN needs H, W >= {MIN_INPUT_SIZE}, got {x.shape[1:3]}")
        x = adaptive_avg_pool2d(self.trunk(x)).reshape(x.shape[0], -1)
        x = self.dropout(jax.nn.relu(self.fc1(x)))
        x = self.dropout(jax.nn.relu(self.fc2(x)))
        return self.head(x)
