"""Networks (3D VGG L-Net, ConvNeXt, VGG11-bn and EfficientNet-Lite0 S-Net backbones), a registry over them,
PyTorch weight conversion and our own weight files.

Input normalisation of pretrained 2D backbones (`normalize_input=True`, see `pretrained_input_norm`):
the S-Net's input is the HU window [-1500, 1500] mapped to [0, 1]; the model then subtracts the
mean and divides by the std its ImageNet weights were trained with. With one input channel the stem's
RGB kernels are summed, so a grey image is treated as that grey value in all three channels; the grey
statistics are ConvNeXt's ImageNet ones averaged over RGB (mean 0.449, std 0.226) and EfficientNet-Lite's
TensorFlow ones (mean 127/255, std 128/255, the same for every channel).
"""

from __future__ import annotations

import inspect
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax.configs import ModelConfig
from sscjax.errors import ConfigError, ModelError
from sscjax.models.convert import assign_state, check_npz, read_state_dict, torchvision_convnext_keys
from sscjax.models.convnext import CONVNEXT_VARIANTS, ConvNeXt, torchvision_config
from sscjax.models.efficientnet import EfficientNetLite0
from sscjax.models.layers import InputNorm, at_path, torch_names
from sscjax.models.levelnet import LevelNet
from sscjax.models.vgg2d import VGG11BN
from sscjax.models.vgg3d import VGG3D, VGG_STAGES

IMAGENET_RGB: InputNorm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_GREY: InputNorm = ((0.449,), (0.226,))
TF_LITE: InputNorm = ((127 / 255,), (128 / 255,))


@dataclass(frozen=True)
class Arch:
    """A registry entry: the network class, its head-size argument, natural input channels, presets."""

    cls: type[nnx.Module]
    outputs_arg: str
    in_chans: int
    defaults: dict[str, Any] = field(default_factory=dict)


ARCHS = {
    **{f"vgg{d}_3d": Arch(VGG3D, "num_outputs", 1, {"depth": d}) for d in VGG_STAGES},
    "levelnet": Arch(LevelNet, "num_outputs", 1),  # slice-wise heat maps + soft-argmax (models/levelnet.py)
    "convnext": Arch(ConvNeXt, "num_classes", 3),  # custom sizes: options widths=..., depths=...
    **{
        f"convnext_{name}": Arch(
            ConvNeXt, "num_classes", 3, {"widths": widths, "depths": depths, "stochastic_depth_prob": sd_prob}
        )
        for name, (widths, depths, sd_prob) in CONVNEXT_VARIANTS.items()
    },
    "efficientnet_lite0": Arch(EfficientNetLite0, "num_classes", 3),
    "vgg11_bn": Arch(VGG11BN, "num_classes", 3),  # torchvision's 2D VGG11-bn; custom sizes: widths=..., fc1_width=...
}


def _arch(arch: str) -> Arch:
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    return ARCHS[arch]


def pretrained_input_norm(arch: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that a pretrained 2D backbone expects of [0, 1] images (see module doc)."""
    cls = _arch(arch).cls
    if cls is EfficientNetLite0:
        mean, std = TF_LITE
    elif cls is ConvNeXt:
        mean, std = IMAGENET_RGB if in_chans == 3 else IMAGENET_GREY
    else:
        raise ConfigError(f"{arch} has no pretrained input normalisation")
    return (mean * in_chans, std * in_chans) if len(mean) == 1 else (mean, std)


def create_model(
    arch: str,
    num_outputs: int,
    *,
    in_chans: int | None = None,
    rngs: nnx.Rngs,
    normalize_input: bool = False,
    **options: Any,
) -> nnx.Module:
    """A freshly initialised network from the registry (`ARCHS`), in training mode.

    in_chans None: the architecture's natural input (1 for the 3D L-Nets, 3 for the 2D backbones).
    normalize_input: apply `pretrained_input_norm` inside the model. Other options go to the network
    (e.g. base=8 for VGG, stochastic_depth_prob or depthwise="shifted" for ConvNeXt).
    """
    spec = _arch(arch)
    in_chans = spec.in_chans if in_chans is None else in_chans
    if normalize_input:
        options["input_norm"] = pretrained_input_norm(arch, in_chans)
    kwargs = {**spec.defaults, **options, spec.outputs_arg: num_outputs, "in_chans": in_chans, "rngs": rngs}
    try:
        inspect.signature(spec.cls.__init__).bind(None, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{arch}: {e}") from None
    return spec.cls(**kwargs)


def abstract_model(
    arch: str, num_outputs: int, *, in_chans: int | None = None, seed: int = 0, **options: Any
) -> nnx.Module:
    """`create_model` without computing the random initial weights (fast): for loading weights into.

    Parameters and batch statistics are shapes only until set; the random streams (dropout,
    stochastic depth) get concrete keys derived from `seed`.
    """
    model = nnx.eval_shape(lambda: create_model(arch, num_outputs, in_chans=in_chans, rngs=nnx.Rngs(seed), **options))
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.RngState))):
        var.set_value(
            jax.random.fold_in(jax.random.key(seed), i)
            if isinstance(var, nnx.RngKey)
            else jnp.zeros(var.shape, var.dtype)
        )
    return model


def _load_torch(
    path: str | Path,
    arch: str,
    num_classes: int | None,
    in_chans: int,
    normalize_input: bool,
    seed: int,
    options: dict[str, Any],
) -> tuple[nnx.Module, dict[str, Any]]:
    """`load_torch_weights`, also returning the metadata that rebuilds the network."""
    cls: Any = _arch(arch).cls  # a convertible network has torch_layers, torch_head and torch_stem
    if not hasattr(cls, "torch_layers"):
        convertible = [name for name, spec in ARCHS.items() if hasattr(spec.cls, "torch_layers")]
        raise ModelError(f"{arch} has no PyTorch weights to convert (convertible: {', '.join(convertible)})")
    if in_chans not in (1, 3) or (num_classes is not None and num_classes < 1):
        raise ConfigError(f"in_chans must be 1 or 3 and num_classes >= 1, got {in_chans}, {num_classes}")
    state = read_state_dict(path)
    if cls is ConvNeXt:
        state = torchvision_convnext_keys(state, str(path))
        if arch == "convnext":
            options = {**torchvision_config(state), **options}
    if cls.torch_head[0] in state and num_classes is None:
        out = int(state[cls.torch_head[0]].shape[0])
    else:
        out = num_classes or 1000
    if num_classes is not None:
        state = {k: v for k, v in state.items() if k not in cls.torch_head}
    if in_chans == 1 and cls.torch_stem in state and state[cls.torch_stem].ndim == 4:
        state[cls.torch_stem] = state[cls.torch_stem].sum(axis=1, keepdims=True)
    if normalize_input:
        options = {**options, "normalize_input": True}
    model: Any = abstract_model(arch, out, in_chans=in_chans, seed=seed, **options)
    names = torch_names(model, model.torch_layers())
    if num_classes is not None:
        names = {k: v for k, v in names.items() if v[0][0] != "head"}
    assign_state(model, state, names, str(path))
    if num_classes is not None:
        model.head = nnx.Linear(
            model.head.in_features, num_classes, kernel_init=nnx.initializers.normal(0.02), rngs=nnx.Rngs(seed)
        )
    model.eval()
    meta = {"arch": arch, "num_classes": out, "in_chans": in_chans, "options": options, "source": str(path)}
    return model, json.loads(json.dumps(meta))


def load_torch_weights(
    path: str | Path,
    arch: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    *,
    normalize_input: bool = False,
    seed: int = 0,
    **options: Any,
) -> nnx.Module:
    """A 2D backbone with the weights of a PyTorch (.pth) or .safetensors file, in evaluation mode.

    Accepts torchvision, timm and original-release ConvNeXt state dicts (bare, or under "model" or
    "state_dict") and the lukemelas-layout EfficientNet-Lite0. num_classes None keeps the file's head;
    otherwise a fresh head of num_classes outputs (initialised from `seed`). in_chans=1 sums the stem's
    RGB kernels. arch "convnext" takes the stage widths and depths from the file.
    """
    return _load_torch(path, arch, num_classes, in_chans, normalize_input, seed, options)[0]


def convert_weights(
    src: str | Path,
    dst: str | Path,
    arch: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    *,
    normalize_input: bool = False,
    seed: int = 0,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Convert a PyTorch weight file to our .npz (`load_torch_weights` then `save_weights`)."""
    model, meta = _load_torch(src, arch, num_classes, in_chans, normalize_input, seed, {})
    save_weights(dst, model, meta)
    return model, meta


def count_parameters(model: nnx.Module) -> int:
    """Number of trainable parameters (batch statistics not counted)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _weight_paths(model: nnx.Module) -> dict[str, tuple]:
    """NNX paths of the parameters and batch statistics, by their dotted names."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {".".join(map(str, path)): path for path, _ in flat}


def save_weights(path: str | Path, model: nnx.Module, meta: dict[str, Any]) -> Path:
    """Write the model's parameters and batch statistics with `meta` to one .npz, atomically.

    meta needs arch, num_classes and in_chans (to rebuild the network); options (create_model
    keyword arguments) and anything else JSON-able are kept.
    """
    from sscjax.io import atomic_write

    lacking = sorted({"arch", "num_classes", "in_chans"} - meta.keys())
    if lacking:
        raise ModelError(f"{path}: weight metadata lacks {', '.join(lacking)}")
    arrays = {k: np.asarray(at_path(model, p).get_value()) for k, p in _weight_paths(model).items()}
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays may fill allow_pickle
    return Path(path)


def load_weights(path: str | Path, *, seed: int = 0) -> tuple[nnx.Module, dict[str, Any]]:
    """The network saved by `save_weights` (in evaluation mode) and its metadata."""
    path = Path(path)
    try:
        check_npz(path)
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
            arrays = {k: npz[k] for k in npz.files if k != "__meta__"}
    except FileNotFoundError:
        raise ModelError(f"{path}: no such weights file") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ModelError(f"{path}: not an sscjax weights file ({e})") from None
    try:
        model = abstract_model(
            meta["arch"], meta["num_classes"], in_chans=meta["in_chans"], seed=seed, **meta.get("options", {})
        )
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ModelError(f"{path}: its metadata does not describe a network ({type(e).__name__}: {e})") from None
    assign_state(model, arrays, {k: (p, "same") for k, p in _weight_paths(model).items()}, str(path))
    model.eval()
    return model, meta


def build_model(model: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The network a config names, from the registry, with its dropout rate and BatchNorm momentum overridden if
    asked."""
    return with_rates(create_model(model.name, rngs=rngs, **model.kwargs), model)


def with_rates(network: nnx.Module, model: ModelConfig) -> nnx.Module:
    """`network` with the dropout rate and BatchNorm momentum of `model` where it sets them."""
    for _, module in nnx.iter_modules(network):
        if isinstance(module, nnx.Dropout) and model.dropout is not None:
            module.rate = model.dropout
        if isinstance(module, nnx.BatchNorm) and model.batch_norm_momentum is not None:
            module.momentum = model.batch_norm_momentum
    return network
