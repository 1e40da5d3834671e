"""Settings as data: versioned dataclass presets per network, stored with each run as JSON and reloadable.

Each network has a module here (`lnet`, `snet`) with a frozen config dataclass (fields `net`, `version`,
`preset`, ... and a `train: TrainConfig`) and `PRESETS` (name -> factory). `NETS` maps the network name to
that module, so a run's config.json can be turned back into the dataclass without knowing the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sscjax.errors import ConfigError

# network name -> module holding its config class (CONFIG) and PRESETS
NETS = {"lnet": "sscjax.configs.lnet", "snet": "sscjax.configs.snet"}


@dataclass(frozen=True)
class TrainConfig:
    """The engine's schedule and optimiser; the same for every network."""

    epochs: int = 500
    steps: int | None = None  # total optimiser steps; None: epochs x steps per epoch
    batch_size: int = 4  # global batch, split over all devices of all hosts
    learning_rate: float = 1e-4
    warmup_steps: int = 0  # linear learning-rate warm-up from 0 over this many steps (0: constant rate)
    decay: str = "constant"  # the rate after warm-up: "constant", or "cosine" down to 0 at the last step
    average_decay: float | None = None  # validate and keep an exponential moving average of the weights; None: off
    weight_decay: float = 1e-4
    decoupled_weight_decay: bool = False  # False: L2 added to the gradient (PyTorch Adam); True: AdamW
    valid_every: int | None = None  # steps between validations; None: once per epoch
    checkpoint_every: int | None = None  # steps between "latest" checkpoints; None: at each validation
    early_stop: int | None = None  # stop after this many validations without a better MAE; None: never
    log_every: int = 10  # steps between logged training losses
    seed: int = 0
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute (params stay float32), meant for GPUs
    predict_batch: int = 4  # inputs per forward pass in validation and inference


@dataclass(frozen=True)
class ModelConfig:
    """A network from `sscjax.models.create_model`: its registry name and keyword arguments."""

    name: str
    kwargs: dict = field(default_factory=dict)
    dropout: float | None = None  # rate of every dropout layer; None: the network's own
    batch_norm_momentum: float | None = None  # running-average momentum of every BatchNorm; None: the network's own


def _net_module(net: str) -> types.ModuleType:
    if net not in NETS:
        raise ConfigError(f"unknown network {net!r} (known: {', '.join(sorted(NETS))})")
    return importlib.import_module(NETS[net])


def preset(net: str, name: str, **overrides: Any):
    """The named preset of a network's config, with top-level fields replaced by `overrides`."""
    presets = _net_module(net).PRESETS
    if name not in presets:
        raise ConfigError(f"unknown {net} preset {name!r} (presets: {', '.join(sorted(presets))})")
    return dataclasses.replace(presets[name](), **overrides)


def to_dict(config) -> dict:
    """A config dataclass as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(value: Any, hint: Any, where: str) -> Any:
    """`value` (parsed JSON) as type `hint`: nested dataclasses, tuples and optional fields."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type, data: dict, where: str = "config"):
    """Rebuild config dataclass `cls` from `to_dict` output; unknown or misspelt keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def config_from_dict(data: dict, where: str = "config"):
    """Any network's config from its dict; the `net` field picks the class, `version` must be supported."""
    module = _net_module(data.get("net", "?"))
    version = data.get("version")
    if version != module.CONFIG.version:
        raise ConfigError(f"{where}: config version {version} is not the supported {module.CONFIG.version}")
    return from_dict(module.CONFIG, data, where)


def save_config(path: str | Path, config) -> Path:
    """Write the resolved config as JSON, atomically."""
    from sscjax.io import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(to_dict(config), indent=1) + "\n")
    return Path(path)


def load_config(path: str | Path):
    """Read a config JSON written by `save_config`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    return config_from_dict(data, str(path))
