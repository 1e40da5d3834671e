"""Settings as data: frozen dataclasses whose defaults are the paper's values, each field declared by `setting`
with a one-line doc (what it is, its unit) and optional bounds, rebuilt strictly from plain data (a run's
config.json, TOML preset and user files, `--set` overrides).

`from_dict` refuses unknown keys, values of the wrong type and values out of bounds with one ConfigError naming
the key. Each network's config class lives in a module here (`lnet`, `snet`); `sscjax.networks` names them and
reads the preset files. Nothing here imports JAX, SciPy or SimpleITK.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sscjax.errors import ConfigError

Decay = Literal["constant", "cosine"]
ComputeDtype = Literal["float32", "bfloat16"]
# Whose inference conventions a network follows: this project's, or those of the paper authors' published networks
# (imported with `ssc weights import-authors`); each network's config says what each value means for it.
Conventions = Literal["sscjax", "authors"]
DECAYS = typing.get_args(Decay)
COMPUTE_DTYPES = typing.get_args(ComputeDtype)
AUTHORS: Conventions = "authors"


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> Any:
    """A config field with its one-line doc (what it is and its unit; the comment above it in the TOML files) and
    bounds on its value (or on each value of a list), inclusive unless `exclusive`."""
    metadata = {"doc": doc, "minimum": minimum, "maximum": maximum, "exclusive": exclusive}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """The training schedule and optimiser, the same engine for every network."""

    epochs: int = setting(500, "passes over the training examples (when steps is not set)", minimum=1)
    steps: int | None = setting(None, "total optimiser steps; not set: epochs x steps per epoch", minimum=1)
    batch_size: int = setting(4, "global batch, split over all devices of all hosts", minimum=1)
    learning_rate: float = setting(1e-4, "Adam's learning rate after the warm-up", minimum=0, exclusive=True)
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up from 0 (0: none)", minimum=0)
    decay: Decay = setting("constant", 'the rate after the warm-up: "constant", or "cosine" down to 0 at the last step')
    average_decay: float | None = setting(
        None,
        "decay of a moving average of the weights that is validated and kept; not set: none",
        minimum=0,
        maximum=1,
        exclusive=True,
    )
    weight_decay: float = setting(1e-4, "weight decay factor", minimum=0)
    decoupled_weight_decay: bool = setting(False, "false: L2 added to the gradient (PyTorch's Adam); true: AdamW")
    valid_every: int | None = setting(None, "steps between validations; not set: once per epoch", minimum=1)
    checkpoint_every: int | None = setting(
        None, "steps between latest checkpoints; not set: at each validation", minimum=1
    )
    early_stop: int | None = setting(
        None, "stop after this many validations without a better MAE; not set: never", minimum=1
    )
    log_every: int = setting(10, "steps between logged training losses", minimum=1)
    seed: int = setting(0, "seed of the initial weights and of every random draw", minimum=0)
    compute_dtype: ComputeDtype = setting(
        "float32", '"bfloat16": compute in bfloat16, parameters stay float32 (for GPUs)'
    )
    predict_batch: int = setting(4, "inputs per forward pass in validation and inference", minimum=1)


@dataclass(frozen=True)
class ModelConfig:
    """The network, from the model registry `sscjax.models.create_model`: its name and keyword arguments."""

    name: str = setting(dataclasses.MISSING, "network in the model registry, sscjax.models.ARCHS")
    kwargs: dict = setting(doc="Keyword arguments of the network.", factory=dict)
    dropout: float | None = setting(
        None, "rate of every dropout layer; not set: the network's own", minimum=0, maximum=1
    )
    batch_norm_momentum: float | None = setting(
        None, "running-average momentum of every BatchNorm; not set: the network's own", minimum=0, maximum=1
    )
    imported_from: str | None = setting(
        None, "the weights file this network was imported from (ssc weights import-authors); not set: trained here"
    )
    imported_sha256: str | None = setting(None, "SHA-256 of that weights file")


@dataclass(frozen=True)
class InitRun:
    """The run whose best weights a training started from (ssc train --init), as `sscjax.provenance.run_record`
    describes it; training checks that its checkpoint is still this one."""

    run: str = setting(dataclasses.MISSING, "the run folder")
    config_sha256: str = setting(dataclasses.MISSING, "SHA-256 of its config.json")
    checkpoint: str = setting(dataclasses.MISSING, 'its checkpoint the weights came from ("best")')
    checkpoint_step: int = setting(dataclasses.MISSING, "the step of that checkpoint", minimum=0)
    checkpoint_sha256: str = setting(dataclasses.MISSING, "SHA-256 of the checkpoint's files (sha256sum manifest)")


# The keyword arguments the presets give networks (ModelConfig.kwargs), documented once for the TOML files.
MODEL_ARGUMENTS = {
    "num_outputs": "outputs of the head: 5 level positions (L-Net), 3 scores (S-Net)",
    "base": "channels of the first convolution, doubled at each stage",
    "in_chans": "input channels: 1 (CT), the stem of RGB weights summed",
    "normalize_input": "subtract the mean and divide by the SD of the images the ImageNet weights saw",
    "input_norm": "[[mean], [SD]] per input channel (window units) applied first, when normalize_input is false: "
    "[[0.2667], [0.1]] centres lung density (-700 HU, SD 300 HU) for networks that start from random weights",
    "stochastic_depth_prob": "probability of dropping a residual block, rising linearly to this at the last block",
    "widths": "channels of each stage (ConvNeXt) or convolution (VGG11-bn)",
    "depths": "blocks of each ConvNeXt stage",
    "layer_scale": "starting scale of each ConvNeXt block's output (torchvision: 1e-6; ImageNet weights bring theirs)",
    "fc1_width": "outputs of the first fully connected layer",
    "fc2_width": "outputs of the second fully connected layer",
    "depthwise": 'how the 7x7 depthwise convolutions run: "shifted" sums (fast on CPUs) or "grouped" (GPUs)',
}


def to_dict(config) -> dict:
    """A config dataclass as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def merge(base: dict, changes: dict) -> dict:
    """`base` with the values of `changes` put in, tables merged key by key (plain data, as `to_dict` gives)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar(value: Any, hint: type, key: str) -> Any:
    """`value` as a bool, int, float (ints accepted) or str; ConfigError naming `key` for any other type."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_KINDS[hint]}, got {value!r}")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """`value` (parsed JSON or TOML) checked against type `hint`: nested dataclasses, optional fields, choices
    (Literal), fixed-length and variadic tuples, tables (dict) and scalars."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            allowed = f"must be {args[0]!r}" if len(args) == 1 else f"is not one of {', '.join(map(repr, args))}"
            raise ConfigError(f"{key}: {value!r} {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        kinds = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(kinds) != len(value):
            raise ConfigError(f"{key}: expected a list of {len(kinds)} values, got {value!r}")
        return tuple(_convert(v, kind, f"{key}[{i}]") for i, (v, kind) in enumerate(zip(value, kinds)))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
        return dict(value)
    return _scalar(value, hint, key)


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _check_bounds(value: Any, meta: typing.Mapping, key: str) -> Any:
    """`value` (or each value of a tuple) within the field's bounds, else ConfigError naming `key`."""
    strict = meta.get("exclusive", False)
    rules = [
        (op, bound)
        for op, bound in (
            (">" if strict else ">=", meta.get("minimum")),
            ("<" if strict else "<=", meta.get("maximum")),
        )
        if bound is not None
    ]
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not all(_COMPARE[op](v, b) for op, b in rules):
            raise ConfigError(f"{key}: {v!r} must be {' and '.join(f'{op} {b}' for op, b in rules)}")
    return value


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def from_dict(cls: type, data: dict, where: str = ""):
    """Rebuild config dataclass `cls` from plain data (`to_dict` output, a TOML table): settings left out take
    the field's default; unknown keys, wrong types and values out of bounds are refused, naming the key path
    (`where` is the path of `data` itself, "" at the top)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'settings'}: expected a table of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k not in getattr(cls, "RETIRED", ())}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{', '.join(_key(where, k) for k in unknown)}: unknown setting(s) (known "
            f"{'in ' + where if where else 'at the top level'}: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{', '.join(_key(where, k) for k in missing)}: missing setting(s)")
    hints = typing.get_type_hints(cls)
    values = {
        k: _check_bounds(_convert(v, hints[k], _key(where, k)), fields[k].metadata, _key(where, k))
        for k, v in data.items()
    }
    try:
        return cls(**values)
    except ConfigError as e:  # a check across fields (__post_init__)
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
