"""The networks this toolkit trains, in one table: per network its config class, its presets, its trainer and its
evaluator; and how a run's settings are put together from a preset, a TOML file and `--set` assignments.

Presets are the TOML files of the top-level `configs/<net>/` folder, installed as the package `sscjax.presets`:
adding configs/<net>/<name>.toml adds the preset <name>. The entry points are "module:function" names imported
when called, so this table imports neither JAX nor SciPy nor SimpleITK.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sscjax.configs import from_dict, merge, text, to_dict
from sscjax.configs.lnet import LNetConfig
from sscjax.configs.snet import NO_PRETRAINING, SNetConfig
from sscjax.errors import ConfigError

PRESETS_PACKAGE = "sscjax.presets"
PRESET_SUFFIX = ".toml"


@dataclass(frozen=True)
class Network:
    """One trainable network. `trainer` has the signature of `sscjax.lnet.train_lnet` (config, workdir, run_dir, *,
    resume, progress, prepare_progress), `evaluator` that of `sscjax.lnet.evaluate_lnet` (run, split, data_dir,
    progress)."""

    name: str
    title: str
    config: type
    trainer: str
    evaluator: str

    def presets(self) -> tuple[str, ...]:
        """The names of the preset files configs/<net>/*.toml."""
        folder = resources.files(PRESETS_PACKAGE) / self.name
        return tuple(sorted(p.name[: -len(PRESET_SUFFIX)] for p in folder.iterdir() if p.name.endswith(PRESET_SUFFIX)))

    def preset_text(self, name: str) -> str:
        """The TOML text of a preset file; ConfigError naming the presets there are."""
        if name not in self.presets():
            raise ConfigError(f"unknown {self.name} preset {name!r} (presets: {', '.join(self.presets())})")
        return (resources.files(PRESETS_PACKAGE) / self.name / f"{name}{PRESET_SUFFIX}").read_text(encoding="utf-8")

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Train one fold: the trainer, imported now, called with these arguments."""
        return _entry_point(self.trainer)(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate a run: the evaluator, imported now, called with these arguments."""
        return _entry_point(self.evaluator)(*args, **kwargs)


def _entry_point(name: str) -> Callable:
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


NETWORKS = {
    n.name: n
    for n in (
        Network("lnet", "L-Net", LNetConfig, "sscjax.lnet:train_lnet", "sscjax.lnet:evaluate_lnet"),
        Network("snet", "S-Net", SNetConfig, "sscjax.snet:train_snet", "sscjax.snet:evaluate_snet"),
    )
}


def network(name: str) -> Network:
    """The registry entry of a network; ConfigError for an unknown name."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown network {name!r} (known: {', '.join(NETWORKS)})")
    return NETWORKS[name]


def shared_presets() -> list[str]:
    """The presets every network has (for tools that set up both networks from one preset name)."""
    return sorted(set.intersection(*(set(n.presets()) for n in NETWORKS.values())))


def _from_data(net: Network, data: dict, source: str):
    try:
        return from_dict(net.config, data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def preset(net: str, name: str, **fields: Any):
    """The named preset of a network (its file configs/<net>/<name>.toml), top-level fields replaced by `fields`."""
    entry = network(net)
    config = _from_data(entry, text.parse(entry.preset_text(name), f"{net} preset {name}"), f"{net} preset {name}")
    return dataclasses.replace(config, **fields)


def config_from_dict(data: dict, source: str = "settings"):
    """Any network's config from plain data (a run's config.json); its `net` picks the class."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {data!r}")
    return _from_data(network(data.get("net", "?")), data, source)


def resolve(
    net: str,
    preset_name: str = "paper",
    config_file: str | Path | None = None,
    assignments: Sequence[str] = (),
    overrides: dict | None = None,
):
    """A run's settings: the preset, changed by the TOML file `config_file` (settings it leaves out keep the
    preset's), then by `key.path=value` assignments, then by `overrides` (plain data, e.g. from command-line
    flags); every step checked, its errors naming the file or --set."""
    config = preset(net, preset_name)
    if config_file is not None:
        config = _from_data(network(net), merge(to_dict(config), text.read(config_file)), str(config_file))
    config = with_changes(config, assignments, overrides)
    scratch = scratch_settings(config)
    return with_changes(with_changes(config, scratch, where="scratch"), assignments, overrides) if scratch else config


def fold_config(net: str, preset_name: str, data_dir: str | Path, changes: dict | None = None, fold: int = 0):
    """The settings of a run on fold `fold` of the cohort `data_dir`: the preset with `changes` (plain data, as a
    TOML file holds them) on top, resolved as `resolve` does."""
    place = {"data_dir": str(Path(data_dir).resolve()), "fold": fold}
    return resolve(net, preset_name, overrides=merge(place, changes or {}))


def scratch_settings(config) -> tuple[str, ...]:
    """The settings a config changes because it trains from random weights (an S-Net's `scratch` when its
    `pretrained` is "none"; nothing otherwise)."""
    return tuple(getattr(config, "scratch", ())) if getattr(config, "pretrained", None) == NO_PRETRAINING else ()


def with_changes(config, assignments: Sequence[str] = (), overrides: dict | None = None, where: str = "--set"):
    """`config` changed by `key.path=value` assignments (errors name them as `where`), then by `overrides` (plain
    data), each step checked."""
    entry = network(config.net)
    if assignments:
        config = _from_data(entry, text.assign(to_dict(config), assignments), where)
    if overrides:
        config = _from_data(entry, merge(to_dict(config), overrides), "options")
    return config


def render(config, header: str = "") -> str:
    """A config as a TOML settings file, every setting documented with the paper's value."""
    return text.render(config, type(config)(), header)


def preset_file(net: str, name: str) -> Path:
    """Where a preset file lies (in the source tree after `pip install -e .`, in site-packages otherwise)."""
    network(net).preset_text(name)
    return Path(str(resources.files(PRESETS_PACKAGE) / net / f"{name}{PRESET_SUFFIX}"))


def rewrite_presets() -> list[Path]:
    """Rewrite every preset file in its generated form (values as read, comments from the field docs, the file's
    own header kept): run after changing a field's doc, or to normalise a hand-edited value."""
    written = []
    for net in NETWORKS:
        for name in network(net).presets():
            path = preset_file(net, name)
            path.write_text(
                render(preset(net, name), text.header_of(path.read_text(encoding="utf-8"))), encoding="utf-8"
            )
            written.append(path)
    return written
