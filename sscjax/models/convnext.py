"""ConvNeXt (tiny/small/base/large and custom sizes) exactly as torchvision defines it, on NHWC images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import count, pairwise
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sscjax.models.layers import DepthwiseConv2d, DepthwiseImpl, InputNorm, apply_input_norm, as_input_norm

# variant -> (stage widths, stage depths, torchvision's default stochastic depth probability)
CONVNEXT_VARIANTS = {
    "tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
    "small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
    "base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
    "large": ((192, 384, 768, 1536), (3, 3, 27, 3), 0.5),
}
LN_EPS = 1e-6
LAYER_SCALE = 1e-6  # torchvision's starting scale of every block's output

_init = nnx.initializers.normal(0.02)  # torchvision: trunc_normal_(std=0.02) (cut at +-2, i.e. 100 sd)


def layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over channels with torch's eps and its two-pass variance."""
    return nnx.LayerNorm(dim, epsilon=LN_EPS, use_fast_variance=False, rngs=rngs)


def conv(cin: int, cout: int, size: int, rngs: nnx.Rngs) -> nnx.Conv:
    """size x size convolution with stride size and no padding (stem and downsampling)."""
    return nnx.Conv(cin, cout, (size, size), strides=size, padding=((0, 0), (0, 0)), kernel_init=_init, rngs=rngs)


class ConvNeXtBlock(nnx.Module):
    """dw7x7 -> LayerNorm -> Linear 4x -> exact GELU -> Linear -> layer scale -> stochastic depth, + x."""

    def __init__(
        self, dim: int, drop_prob: float, depthwise: DepthwiseImpl | None, layer_scale: float, *, rngs: nnx.Rngs
    ):
        self.dwconv = DepthwiseConv2d(dim, 7, padding=((3, 3), (3, 3)), impl=depthwise, rngs=rngs)
        self.norm = layer_norm(dim, rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, kernel_init=_init, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, kernel_init=_init, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((dim,), layer_scale))
        # torchvision's StochasticDepth "row": one keep/drop draw per sample, survivors scaled by 1/(1-p)
        self.drop_path = nnx.Dropout(drop_prob, broadcast_dims=(1, 2, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.fc2(jax.nn.gelu(self.fc1(self.norm(self.dwconv(x))), approximate=False))
        return x + self.drop_path(self.gamma[...] * y)


class Downsample(nnx.Module):
    """LayerNorm then a 2x2 stride-2 convolution, between stages."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(cin, rngs)
        self.conv = conv(cin, cout, 2, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.norm(x))


class ConvNeXt(nnx.Module):
    """torchvision's ConvNeXt on (N, H, W, in_chans) images.

    Stochastic depth grows linearly over all blocks, p_i = stochastic_depth_prob * i / (n_blocks - 1).
    `input_norm` = (mean, std) per channel, applied to the input first (None: the input is used as is).
    `depthwise` picks the 7x7 depthwise implementation (None: the faster one for the backend).
    `layer_scale` is every block's starting output scale (torchvision's 1e-6; ImageNet weights bring their own).
    """

    torch_stem = "features.0.0.weight"
    torch_head = ("classifier.2.weight", "classifier.2.bias")

    def __init__(
        self,
        widths: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 9, 3),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = LAYER_SCALE,
        depthwise: DepthwiseImpl | None = None,
        input_norm: InputNorm | None = None,
        rngs: nnx.Rngs,
    ):
        self.stem_conv = conv(in_chans, widths[0], 4, rngs)
        self.stem_norm = layer_norm(widths[0], rngs)
        n_blocks, index = sum(depths), 0
        stages = []
        for width, depth in zip(widths, depths):
            blocks = []
            for _ in range(depth):
                p = stochastic_depth_prob * index / max(n_blocks - 1, 1)
                blocks.append(ConvNeXtBlock(width, p, depthwise, layer_scale, rngs=rngs))
                index += 1
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.downsamples = nnx.List([Downsample(a, b, rngs=rngs) for a, b in pairwise(widths)])
        self.head_norm = layer_norm(widths[-1], rngs)
        self.head = nnx.Linear(widths[-1], num_classes, kernel_init=_init, rngs=rngs)
        self.input_norm = as_input_norm(input_norm)

    def features(self, x: jax.Array) -> jax.Array:
        """Last-stage feature map (N, H/32, W/32, C) (torchvision's `model.features`)."""
        x = apply_input_norm(x, self.input_norm)
        x = self.stem_norm(self.stem_conv(x))
        for i, stage in enumerate(self.stages):
            if i:
                x = self.downsamples[i - 1](x)
            for block in stage:
                x = block(x)
        return x

    def pooled(self, x: jax.Array) -> jax.Array:
        """Global average of the features, (N, C), before the head's LayerNorm."""
        return self.features(x).mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.head_norm(self.pooled(x)))

    def torch_layers(self) -> dict[str, tuple]:
        """torchvision module names -> NNX paths (see layers.torch_names)."""
        layers: dict[str, tuple] = {
            "features.0.0": ("stem_conv",),
            "features.0.1": ("stem_norm",),
            "classifier.0": ("head_norm",),
            "classifier.2": ("head",),
        }
        for s, stage in enumerate(self.stages):
            if s:
                layers[f"features.{2 * s}.0"] = ("downsamples", s - 1, "norm")
                layers[f"features.{2 * s}.1"] = ("downsamples", s - 1, "conv")
            for b in range(len(stage)):
                prefix, path = f"features.{2 * s + 1}.{b}", ("stages", s, b)
                layers[f"{prefix}.layer_scale"] = (*path, "gamma")
                for part, module in (("0", "dwconv"), ("2", "norm"), ("3", "fc1"), ("5", "fc2")):
                    layers[f"{prefix}.block.{part}"] = (*path, module)
        return layers


def torchvision_config(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Stage widths and depths read off a state dict in torchvision's naming (empty if none)."""
    widths: list[int] = []
    depths: list[int] = []
    while f"features.{2 * len(widths) + 1}.0.block.0.weight" in state:
        stage = 2 * len(widths) + 1
        widths.append(int(state[f"features.{stage}.0.block.0.weight"].shape[0]))
        depths.append(next(b for b in count() if f"features.{stage}.{b}.layer_scale" not in state))
    return {"widths": tuple(widths), "depths": tuple(depths)} if widths else {}
