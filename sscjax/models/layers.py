"""Shared layers: input normalisation, a depthwise convolution with two interchangeable implementations, 3D
convolutions and max-pooling in forms that are fast on CPUs, and the naming that maps PyTorch tensors onto NNX
variables."""

from __future__ import annotations

import functools
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
from flax import nnx

DepthwiseImpl = Literal["grouped", "shifted"]
Conv3dImpl = Literal["xla", "slices", "stacked"]
Padding = tuple[tuple[int, int], tuple[int, int]] | Literal["SAME"]
InputNorm = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per input channel


def as_input_norm(input_norm: Any) -> InputNorm | None:
    """(mean, std) as tuples of floats (hashable static module data, also from JSON lists)."""
    if input_norm is None:
        return None
    mean, std = input_norm
    return tuple(map(float, mean)), tuple(map(float, std))


def apply_input_norm(x: jax.Array, input_norm: InputNorm | None) -> jax.Array:
    """(x - mean) / std per channel; x unchanged when input_norm is None."""
    if input_norm is None:
        return x
    return (x - jnp.asarray(input_norm[0])) / jnp.asarray(input_norm[1])


class TorchBatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm whose running variance averages each batch's unbiased variance (times n / (n - 1), n values per
    feature), as PyTorch's BatchNorm does; the batch itself is still normalised with its biased variance."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
        before = self.var[...]
        y = super().__call__(x, use_running_average, mask=mask)
        frozen = self.use_running_average if use_running_average is None else use_running_average
        if not frozen:
            n = x.size if mask is None else jnp.sum(jnp.broadcast_to(mask, x.shape))
            n = n // self.num_features
            # flax averaged momentum * before + (1 - momentum) * biased: add (1 - momentum) * biased / (n - 1)
            self.var[...] = self.var[...] + (self.var[...] - self.momentum * before) / jnp.maximum(n - 1, 1)
        return y


def default_depthwise_impl() -> DepthwiseImpl:
    """ "shifted" on CPU, where XLA's grouped convolution is ~13x slower; "grouped" on GPU/TPU."""
    return "shifted" if jax.default_backend() == "cpu" else "grouped"


class DepthwiseConv2d(nnx.Module):
    """Depthwise k x k convolution on NHWC, kernel (k, k, 1, C) like nnx.Conv with feature groups.

    impl="grouped" runs one grouped convolution; impl="shifted" sums k*k shifted, strided slices
    times the per-channel weights. Both give the same numbers up to float rounding. padding is
    explicit ((top, bottom), (left, right)) or "SAME" (TensorFlow's rule, from the input size).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: Padding,
        use_bias: bool = True,
        impl: DepthwiseImpl | None = None,
        rngs: nnx.Rngs,
        kernel_init: nnx.Initializer = nnx.initializers.normal(0.02),
    ):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, 1, channels)))
        self.bias = nnx.Param(jnp.zeros((channels,))) if use_bias else None
        self.stride = stride
        self.padding = padding
        self.impl = impl or default_depthwise_impl()

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel.shape[0]
        pads = tuple(
            jax.lax.padtype_to_pads(x.shape[1:3], (k, k), (self.stride,) * 2, "SAME")
            if self.padding == "SAME"
            else self.padding
        )
        kernel = self.kernel[...]
        if self.impl == "grouped":
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                (self.stride,) * 2,
                pads,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=x.shape[-1],
            )
        else:
            xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
            h_out = (xp.shape[1] - k) // self.stride + 1
            w_out = (xp.shape[2] - k) // self.stride + 1
            taps = (
                jax.lax.slice(
                    xp,
                    (0, i, j, 0),
                    (xp.shape[0], i + self.stride * (h_out - 1) + 1, j + self.stride * (w_out - 1) + 1, xp.shape[3]),
                    (1, self.stride, self.stride, 1),
                )
                * kernel[i, j, 0]
                for i in range(k)
                for j in range(k)
            )
            y = cast(jax.Array, sum(taps))  # k * k > 0 terms: never sum's 0 for no terms
        return y if self.bias is None else y + self.bias[...]


def default_conv3d_impl(in_features: int) -> Conv3dImpl:
    """On CPU, "stacked" for one input channel and "slices" otherwise (XLA's CPU 3D convolution is 2-3x slower
    than either, and ~30x slower for one channel; for one channel "stacked" is 2x faster than "slices", forward and
    backward); "xla" (one 3D convolution) on GPU/TPU."""
    if jax.default_backend() != "cpu":
        return "xla"
    return "stacked" if in_features == 1 else "slices"


def conv3d_same(x: jax.Array, kernel: jax.Array, impl: Conv3dImpl) -> jax.Array:
    """A k x k x k convolution (k odd, zero padding k // 2, no bias) of an NDHWC volume with a DHWIO kernel.

    impl="xla": one 3D convolution; "slices": the sum over the kernel's z taps of 2D convolutions of the
    slices; "stacked": one 2D convolution of the slices with the k z-neighbours of each slice stacked as channels
    (k times the input in memory: for few input channels). The same numbers up to float rounding.
    """
    k = kernel.shape[0]
    p = k // 2
    n, d, h, w, c = x.shape
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1, 1), ((p, p),) * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        )
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    conv2d = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if impl == "stacked":
        taps = jnp.concatenate([xp[:, i : i + d] for i in range(k)], axis=-1).reshape(n * d, h, w, k * c)
        y = conv2d(taps, jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(k, k, k * c, -1))
    else:
        y = cast(jax.Array, sum(conv2d(xp[:, i : i + d].reshape(n * d, h, w, c), kernel[i]) for i in range(k)))
    return y.reshape(n, d, h, w, -1)


def max_pool3d(x: jax.Array, size: int, stride: int) -> jax.Array:
    """Max-pooling of an NDHWC volume with a cubic window, no padding (floor), one axis at a time (max is
    separable), each axis as the maximum of `size` strided slices: the same result as one 3D window, and its
    gradient is elementwise (XLA's CPU gradient of a pooling window, select-and-scatter, is 2-3x slower)."""
    for axis in (1, 2, 3):
        n_out = (x.shape[axis] - size) // stride + 1
        taps = [jax.lax.slice_in_dim(x, i, i + stride * (n_out - 1) + 1, stride, axis) for i in range(size)]
        x = functools.reduce(jnp.maximum, taps)
    return x


def at_path(module: nnx.Module, path: tuple) -> Any:
    """The submodule or variable at an NNX state path (attribute names and list indices)."""
    node: Any = module
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def torch_names(model: nnx.Module, layers: dict[str, tuple]) -> dict[str, tuple[tuple, str]]:
    """Expand {torch module prefix: NNX module path} to {torch tensor name: (NNX variable path, layout)}.

    Layouts: "conv" (OIHW, also depthwise), "linear" ((out, in)), "vector" (per-channel; torch's
    (C, 1, 1) layer scales too). A path that ends at a variable maps the prefix itself.
    """
    names = {}
    for prefix, path in layers.items():
        layer = at_path(model, path)
        if isinstance(layer, nnx.Variable):
            names[prefix] = (path, "vector")
            continue
        if isinstance(layer, nnx.Linear):
            leaves = {"weight": ("kernel", "linear")}
        elif isinstance(layer, (nnx.Conv, DepthwiseConv2d)):
            leaves = {"weight": ("kernel", "conv")}
        else:  # LayerNorm, BatchNorm
            leaves = {
                "weight": ("scale", "vector"),
                "running_mean": ("mean", "vector"),
                "running_var": ("var", "vector"),
            }
        leaves["bias"] = ("bias", "vector")
        for tensor, (leaf, layout) in leaves.items():
            if getattr(layer, leaf, None) is not None:
                names[f"{prefix}.{tensor}"] = ((*path, leaf), layout)
    return names
