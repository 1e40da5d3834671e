"""The paper authors' trained PyTorch networks (their `model.pt` state dicts) as sscjax networks.

The architecture and its sizes are read from the keys and shapes alone: the L-Net `Vgg11_3d` (keys
`features.{0,4,8,...}`, `ln1/ln2/ln3`, conv -> ReLU -> BatchNorm), a one-channel ConvNeXt in torchvision's layout
(`features.0.0.weight`) and torchvision's VGG11-bn with one input channel and a custom classifier
(`features.0.weight` 4D, `classifier.0/3/6`). An imported network keeps the authors' conventions: the L-Net
takes a volume z-scored as a whole and answers in slices, the S-Nets take HU clipped to [-1500, 1500] scaled
to [0, 1] and answer TOT, GG, RET in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax.errors import ModelError
from sscjax.models import abstract_model
from sscjax.models.convert import RefusedGlobalError, assign_state, read_state_dict
from sscjax.models.convnext import ConvNeXt, torchvision_config
from sscjax.models.layers import at_path, torch_names
from sscjax.models.vgg2d import POOLED_SIZE as POOLED_2D
from sscjax.models.vgg2d import VGG11_STAGES, VGG11BN
from sscjax.models.vgg3d import POOLED_SIZE as POOLED_3D
from sscjax.models.vgg3d import VGG3D

STATE_DICT_FILE = "model.pt"
CONVNEXT_STOCHASTIC_DEPTH = 0.1  # torchvision's convnext_tiny default, which the authors kept (training only)
MAX_LISTED_KEYS = 6


@dataclass(frozen=True)
class AuthorsCheckpoint:
    """One of the authors' networks: its registry name, `create_model` keyword arguments and converted weights."""

    arch: str
    kwargs: dict[str, Any]
    state: nnx.State  # parameters and batch statistics in NNX layout
    source: str

    def model(self, seed: int = 0) -> nnx.Module:
        """The network with these weights in evaluation mode (dropout off, BatchNorm on its running statistics)."""
        model = abstract_model(self.arch, seed=seed, **self.kwargs)
        nnx.update(model, self.state)
        model.eval()
        return model


@dataclass(frozen=True)
class _Format:
    """How to read one of the authors' architectures: registry name, keyword arguments from the shapes, torch
    names of its layers (a function of the model), and the size of the feature map flattened into its first FC
    layer `fc1` (None: no flattened feature map)."""

    arch: str
    config: Callable[[dict[str, np.ndarray], Path], dict[str, Any]]
    layers: Callable[[Any], dict[str, tuple]]
    flattened: tuple[int, ...] | None


def read_authors_checkpoint(path: str | Path) -> AuthorsCheckpoint:
    """Recognise and convert one of the authors' checkpoints (a state dict, bare or under "model").

    ModelError naming the file for a whole-model pickle, another network, a missing key or a shape that does
    not fit.
    """
    path = Path(path)
    state = _state_dict(path)
    fmt = _recognise(state, path)
    kwargs = fmt.config(state, path)
    model = abstract_model(fmt.arch, **kwargs)
    assign_state(model, state, torch_names(model, fmt.layers(model)), str(path))
    if fmt.flattened is not None:
        _channels_last_rows(at_path(model, ("fc1", "kernel")), fmt.flattened)
    return AuthorsCheckpoint(fmt.arch, kwargs, nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)), str(path))


def load_authors_network(path: str | Path, seed: int = 0) -> nnx.Module:
    """The network of one of the authors' checkpoints, in evaluation mode (`read_authors_checkpoint`)."""
    return read_authors_checkpoint(path).model(seed)


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors by name; a whole-model pickle is refused with a pointer to the state dict file."""
    try:
        return read_state_dict(path)
    except RefusedGlobalError as e:
        raise ModelError(
            f"{path}: not a state dict: it pickles '{e.global_name}' (a whole model saved with torch.save(net), "
            f"like the authors' model_wt_structure.pt), and loading it would run its code; use {STATE_DICT_FILE}, "
            "the state_dict file saved beside it"
        ) from None


def _recognise(state: dict[str, np.ndarray], path: Path) -> _Format:
    """The format of the network the keys belong to."""
    stem = state.get("features.0.weight")
    if any(k.startswith(("ln1.", "ln2.", "ln3.")) for k in state) or getattr(stem, "ndim", 0) == 5:
        return FORMATS["vgg11_3d"]
    if "features.0.0.weight" in state:
        return FORMATS["convnext"]
    if stem is not None or any(k.startswith("classifier.6.") for k in state):
        return FORMATS["vgg11_bn"]
    keys = ", ".join(sorted(state)[:MAX_LISTED_KEYS])
    raise ModelError(
        f"{path}: not one of the authors' networks (L-Net Vgg11_3d, ConvNeXt or VGG11-bn S-Net): none of their "
        f"keys ln1.*, features.0.0.weight, features.0.weight (its keys: {keys}, ...)"
    )


def _tensor(state: dict[str, np.ndarray], key: str, ndim: int, path: Path) -> np.ndarray:
    """state[key], which must exist with `ndim` dimensions."""
    if key not in state:
        raise ModelError(f"{path}: the key {key} is missing")
    if state[key].ndim != ndim:
        raise ModelError(f"{path}: {key} is {tuple(state[key].shape)}, expected {ndim} dimensions")
    return state[key]


def _one_channel(stem: np.ndarray, key: str, path: Path) -> int:
    """The stem's input channels, which must be one (CT): more means an ImageNet checkpoint, not the authors'."""
    if stem.shape[1] != 1:
        raise ModelError(
            f"{path}: {key} is {tuple(stem.shape)}, with {stem.shape[1]} input channels; the authors' networks "
            "take one (a CT), so this is not one of their checkpoints"
        )
    return 1


def _lnet_config(state: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """VGG3D keyword arguments of a `Vgg11_3d` state dict: base width, FC widths, outputs."""
    stem = _tensor(state, "features.0.weight", 5, path)
    return {
        "num_outputs": int(_tensor(state, "ln3.weight", 2, path).shape[0]),
        "in_chans": _one_channel(stem, "features.0.weight", path),
        "base": int(stem.shape[0]),
        "fc1_width": int(_tensor(state, "ln1.weight", 2, path).shape[0]),
        "fc2_width": int(_tensor(state, "ln2.weight", 2, path).shape[0]),
    }


def _convnext_config(state: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """ConvNeXt keyword arguments of a torchvision-layout state dict: stage widths and depths, outputs."""
    stem = _tensor(state, "features.0.0.weight", 4, path)
    config = torchvision_config(state)
    if not config:
        raise ModelError(f"{path}: a ConvNeXt stem without blocks (features.1.0.block.0.weight is missing)")
    return {
        "num_outputs": int(_tensor(state, "classifier.2.weight", 2, path).shape[0]),
        "in_chans": _one_channel(stem, "features.0.0.weight", path),
        **config,
        "stochastic_depth_prob": CONVNEXT_STOCHASTIC_DEPTH,
    }


def _vgg2d_config(state: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """VGG11BN keyword arguments of a torchvision `vgg11_bn` state dict: conv widths, FC widths, outputs."""
    stem = _tensor(state, "features.0.weight", 4, path)
    convs = _conv_indices(VGG11_STAGES)
    return {
        "num_outputs": int(_tensor(state, "classifier.6.weight", 2, path).shape[0]),
        "in_chans": _one_channel(stem, "features.0.weight", path),
        "widths": tuple(int(_tensor(state, f"features.{i}.weight", 4, path).shape[0]) for i in convs),
        "fc1_width": int(_tensor(state, "classifier.0.weight", 2, path).shape[0]),
        "fc2_width": int(_tensor(state, "classifier.3.weight", 2, path).shape[0]),
    }


def _conv_indices(stages: tuple[int, ...]) -> list[int]:
    """Index of each convolution in a torch Sequential of three modules per convolution (conv, ReLU and
    BatchNorm in either order) and a max-pool after each stage: 0, 4, 8, 11, 15, 18, 22, 25 for VGG11."""
    indices, index = [], 0
    for n_convs in stages:
        for _ in range(n_convs):
            indices.append(index)
            index += 3
        index += 1
    return indices


def _vgg_layers(model: VGG3D | VGG11BN, bn_offset: int, head: tuple[str, str, str]) -> dict[str, tuple]:
    """torch module names -> NNX paths of a VGG: its convolutions and BatchNorms (`bn_offset` after each
    convolution) and its three FC layers, named `head`."""
    stages = tuple(b - a for a, b in pairwise((-1, *model.stage_ends)))
    layers: dict[str, tuple] = dict(zip(head, (("fc1",), ("fc2",), ("head",))))
    for i, index in enumerate(_conv_indices(stages)):
        layers[f"features.{index}"] = ("features", i, "conv")
        layers[f"features.{index + bn_offset}"] = ("features", i, "bn")
    return layers


def _lnet_layers(model: VGG3D) -> dict[str, tuple]:
    """`Vgg11_3d` names: conv -> ReLU -> BatchNorm, FC layers ln1, ln2, ln3."""
    return _vgg_layers(model, 2, ("ln1", "ln2", "ln3"))


def _vgg2d_layers(model: VGG11BN) -> dict[str, tuple]:
    """torchvision `vgg11_bn` names: conv -> BatchNorm -> ReLU, FC layers classifier.0, .3, .6."""
    return _vgg_layers(model, 1, ("classifier.0", "classifier.3", "classifier.6"))


def _convnext_layers(model: ConvNeXt) -> dict[str, tuple]:
    """torchvision ConvNeXt names (the model's own table)."""
    return model.torch_layers()


def _channels_last_rows(kernel: nnx.Variable, spatial: tuple[int, ...]) -> None:
    """Reorder an FC kernel's input rows from PyTorch's (C, *spatial) flatten to ours, (*spatial, C)."""
    rows = kernel[...]
    channels = rows.shape[0] // math.prod(spatial)
    moved = jnp.moveaxis(rows.reshape(channels, *spatial, rows.shape[1]), 0, -2)
    kernel.set_value(moved.reshape(rows.shape))


FORMATS = {
    f.arch: f
    for f in (
        _Format("vgg11_3d", _lnet_config, _lnet_layers, (POOLED_3D,) * 3),
        _Format("convnext", _convnext_config, _convnext_layers, None),
        _Format("vgg11_bn", _vgg2d_config, _vgg2d_layers, (POOLED_2D,) * 2),
    )
}
