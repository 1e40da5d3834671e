"""Run folders: where a training run keeps what defines it and what it produced, and loading its model back. The
only module that knows the folder's layout:

RUN/config.json (the resolved config), RUN/splits.json (the patients used), RUN/fingerprint.json (the cohort's
fingerprint), RUN/checkpoints/{best,latest}/, RUN/tensorboard/, RUN/log.jsonl, RUN/eval/<split>/ (evaluations, with
their slice cache in RUN/eval/cache/), RUN/explain/ (the heat-map calibration). The default run folder of a network
and fold is WORKDIR/<net>/fold<k>.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from sscjax.configs import to_dict
from sscjax.errors import CohortError, ConfigError, ModelError
from sscjax.io import atomic_write, write_json
from sscjax.networks import config_from_dict

if TYPE_CHECKING:
    from sscjax.data import Cohort

CONFIG_FILE = "config.json"
SPLITS_FILE = "splits.json"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LOG_FILE = "log.jsonl"
EVAL_DIR = "eval"
CALIBRATION_DIR = "explain"
CALIBRATION_FILE = "calibration.json"
# Settings (or whole sections) a resumed run may change: how long it trains, how its heat maps are made, and the
# record of the settings that training from random weights changes (the changed settings themselves are compared).
RESUMABLE = ("train.steps", "train.epochs", "train.early_stop", "explain", "scratch")


def default_run_dir(workdir: str | Path, net: str, fold: int) -> Path:
    return Path(workdir) / net / f"fold{fold}"


def find_runs(workdir: str | Path, net: str) -> list[Path]:
    """Every trained fold of a network under WORKDIR/<net>/ (folders with a config and a best checkpoint)."""
    root = Path(workdir) / net
    found = sorted(p for p in root.glob("*") if (p / CONFIG_FILE).is_file() and (p / CHECKPOINT_DIR / "best").is_dir())
    if not found:
        raise ModelError(f"{root}: no trained {net} runs found (train one with `ssc train {net}`, or name one)")
    return found


def eval_dir(run_dir: str | Path, split: str) -> Path:
    """Where an evaluation of a run on a split ("valid", "test") is written."""
    return Path(run_dir) / EVAL_DIR / split


def eval_cache(run_dir: str | Path) -> Path:
    """Where a run's evaluations cache the slices they extract."""
    return Path(run_dir) / EVAL_DIR / "cache"


def calibration_dir(run_dir: str | Path) -> Path:
    """Where an S-Net run keeps its heat-map calibration (CALIBRATION_FILE and its scatter plot)."""
    return Path(run_dir) / CALIBRATION_DIR


def run_workdir(run_dir: str | Path) -> Path:
    """The workdir (caches) of a run in the default layout WORKDIR/<net>/fold<k>."""
    return Path(run_dir).parent.parent


def save_config(path: str | Path, config) -> Path:
    """Write the resolved config as JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(to_dict(config), indent=1) + "\n")
    return Path(path)


def load_config(path: str | Path):
    """Read a config JSON written by `save_config` (settings added since it was written take their defaults)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    return config_from_dict(data, str(path))


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(f"{r}.") for r in RESUMABLE)


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read ({e})") from None


def start_run(run_dir: str | Path, config, splits: dict, fingerprint: str, resume: bool = False) -> None:
    """Record config, splits and cohort fingerprint in the run folder (process 0 writes). Resuming checks that
    they match the run being continued (only the schedule's length may change)."""
    run_dir = Path(run_dir)
    if not resume and has_checkpoint(run_dir, "latest"):
        raise ConfigError(f"{run_dir}: already holds a trained run; resume it (--resume) or choose another run folder")
    if resume and (run_dir / CONFIG_FILE).is_file():
        old, new = _flat(to_dict(load_config(run_dir / CONFIG_FILE))), _flat(to_dict(config))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not _resumable(k))
        if changed:
            raise ConfigError(
                f"{run_dir}: cannot resume with changed settings: "
                + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            )
        recorded = run_dir / FINGERPRINT_FILE
        previous = _read_json(recorded).get("fingerprint") if recorded.is_file() else None
        if previous not in (None, fingerprint):
            raise ConfigError(
                f"{run_dir}: the cohort changed since this run started (fingerprint {previous} -> "
                f"{fingerprint}); start a new run"
            )
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run_dir / CONFIG_FILE, config)
    write_json(run_dir / SPLITS_FILE, splits)
    write_json(run_dir / FINGERPRINT_FILE, {"data_dir": str(config.data_dir), "fingerprint": fingerprint})


def checkpoint_steps(run_dir: str | Path, kind: str = "best") -> list[int]:
    """The steps of a run's finished checkpoints of `kind` ("best" or "latest"), oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR / kind
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def has_checkpoint(run_dir: str | Path, kind: str = "best") -> bool:
    """Whether a run folder holds a finished checkpoint of `kind` ("best" or "latest")."""
    return bool(checkpoint_steps(run_dir, kind))


def read_config(run_dir: str | Path, net: str | None = None):
    """The config of a run folder; ModelError when it is not a run (of network `net`)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{run_dir}: not a training run (no {CONFIG_FILE})")
    found = _read_json(path).get("net")
    if net is not None and found != net:
        raise ModelError(f"{run_dir}: is a run of the {found}, not of the {net}")
    try:
        return load_config(path)
    except ConfigError as e:
        raise ModelError(str(e)) from None


def read_splits(run_dir: str | Path) -> dict:
    """The splits a run used: {"fold", "train", "valid", "test", ...}."""
    path = Path(run_dir) / SPLITS_FILE
    if not path.is_file():
        raise ModelError(f"{run_dir}: no {SPLITS_FILE} in this run")
    return _read_json(path)


def split_scans(run_dir: str | Path, split: str, data_dir: str | Path) -> tuple[Cohort, list[str]]:
    """(cohort in `data_dir`, scan ids) of a run's "valid" or "test" split; CohortError when a scan is missing. A run
    trained elsewhere (imported: no splits.json) never saw the cohort: its splits are the cohort's own (the test set,
    fold 0's validation patients)."""
    from sscjax.data import ensure_splits, load_cohort

    if split not in ("valid", "test"):
        raise ConfigError(f"split {split!r} is not 'valid' or 'test'")
    cohort = load_cohort(data_dir, check_scans=False)
    if (Path(run_dir) / SPLITS_FILE).is_file():
        ids = read_splits(run_dir)[split]
    else:
        splits = ensure_splits(cohort)
        ids = list(splits.test) if split == "test" else splits.fold(0)[1]
    missing = [i for i in ids if i not in cohort.scan_paths]
    if missing:
        raise CohortError([f"{cohort.root}: scan {i} of the run's {split} split is missing" for i in missing])
    return cohort, ids
