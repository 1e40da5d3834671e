"""What a run folder holds besides its settings: orbax checkpoints (the best and the latest), the trained model
restored from them, and the run's TensorBoard and JSONL logs. The folder's names are `sscjax.runs`'."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sscjax.configs import InitRun, from_dict
from sscjax.errors import ConfigError, ModelError
from sscjax.io import _json_ready
from sscjax.models import abstract_model, with_rates
from sscjax.provenance import run_record
from sscjax.runs import CHECKPOINT_DIR, CONFIG_FILE, LOG_FILE, TENSORBOARD_DIR, has_checkpoint, read_config, save_config

# The "meta" item of a run's best checkpoint that no training made (the training engine's keys).
UNTRAINED_META = {"step": 0, "best_mae": None, "best_step": 0, "bad_validations": 0}


def model_arrays(model: nnx.Module) -> tuple[nnx.State, nnx.State]:
    """(params, model state such as BatchNorm statistics) of a model as plain arrays, what a checkpoint's model item
    holds. Leaves `model` in evaluation mode."""
    model.eval()
    _, params, _, state = nnx.split(model, nnx.Param, nnx.RngState, ...)  # type: ignore[misc]
    return nnx.as_pure(params), nnx.as_pure(state)


class Checkpoints:
    """Two orbax managers under RUN/checkpoints: `latest` (items "model" and "optimizer") and `best` (item "model"
    of the best validation); a model item holds {"params", "state"}; each checkpoint has a JSON "meta" item."""

    def __init__(self, run_dir: Path, read_only: bool = False):
        self.run_dir = Path(run_dir)
        root = self.run_dir.absolute() / CHECKPOINT_DIR
        self.managers = {
            kind: ocp.CheckpointManager(
                root / kind,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    enable_async_checkpointing=not read_only,
                    create=not read_only,
                    read_only=read_only,
                    # the two managers save the same steps: their multi-host barriers need distinct names
                    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind),
                ),
            )
            for kind in ("latest", "best")
        }

    def save(self, kind: str, step: int, items: dict[str, dict], meta: dict) -> None:
        args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
        self.managers[kind].save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), force=True)

    def latest_step(self, kind: str) -> int | None:
        return self.managers[kind].latest_step()

    def restore(self, kind: str, targets: dict[str, dict]) -> tuple[dict, dict]:
        """(items, meta) of the newest checkpoint of `kind`; `targets` give the items' shapes, dtypes, shardings.
        ModelError naming the run when its files are unreadable (truncated, overwritten or missing)."""
        manager = self.managers[kind]
        step = manager.latest_step()
        if step is None:
            raise ModelError(f"{manager.directory}: no checkpoint saved")
        args = {name: ocp.args.StandardRestore(jax.tree.map(_abstract, tree)) for name, tree in targets.items()}
        try:
            restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
        except Exception as e:  # orbax and tensorstore raise ValueError, OSError, JSON errors ... for damaged files
            raise ModelError(
                f"{self.run_dir}: its {kind} checkpoint (step {step}) is unreadable or corrupt "
                f"({type(e).__name__} reading {manager.directory / str(step)}); train the run again"
            ) from None
        return {name: restored[name] for name in targets}, dict(restored["meta"])

    def close(self) -> None:
        for manager in self.managers.values():
            manager.wait_until_finished()
            manager.close()


def _abstract(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def restore_model(run_dir: str | Path, model: nnx.Module, kind: str = "best") -> nnx.Module:
    """Load the parameters and model state of a run's best (or latest) checkpoint into `model` (evaluation mode)."""
    params, state = model_arrays(model)
    checkpoints = Checkpoints(Path(run_dir), read_only=True)
    try:
        items, _ = checkpoints.restore(kind, {"model": {"params": params, "state": state}})
    finally:
        checkpoints.close()
    nnx.update(model, items["model"]["params"], items["model"]["state"])
    return model


class RunLog:
    """TensorBoard event files and a JSONL log in the run folder; silent on every process but process 0."""

    def __init__(self, run_dir: Path):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))
            self.jsonl = open(Path(run_dir) / LOG_FILE, "a")  # noqa: SIM115 (open for the run; closed by close())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(
            json.dumps(_json_ready({"step": step, "time": time.time(), **values}), allow_nan=False) + "\n"
        )  # a NaN loss is null: JSON has no NaN
        self.jsonl.flush()

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if self.enabled:
            for name, image in images.items():
                self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def load_model(run_dir: str | Path, net: str | None = None, kind: str = "best") -> tuple[nnx.Module, Any]:
    """(model in evaluation mode with the run's best (or latest) weights, the run's config: the config class of its
    network, e.g. an LNetConfig or SNetConfig)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir, net)
    if not has_checkpoint(run_dir, kind):
        raise ModelError(f"{run_dir}: has no saved {kind} model yet (nothing in {run_dir / CHECKPOINT_DIR / kind})")
    model = abstract_model(config.model.name, seed=config.train.seed, **config.model.kwargs)
    return restore_model(run_dir, model, kind), config


def write_run(run_dir: str | Path, config: Any, model: nnx.Module) -> Path:
    """A new run folder holding `config` (config.json) and `model` as its best checkpoint (step 0, the training
    engine's item layout), written in a temporary folder beside it and renamed into place: a failure leaves none.
    ConfigError when `run_dir` exists and is not an empty folder."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not (run_dir.is_dir() and not any(run_dir.iterdir())):
        raise ConfigError(f"{run_dir}: already exists and is not an empty folder; choose a new run folder")
    staging = run_dir.parent / f".{run_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        save_config(staging / CONFIG_FILE, config)
        params, state = model_arrays(model)
        checkpoints = Checkpoints(staging)
        try:
            checkpoints.save("best", 0, {"model": {"params": params, "state": state}}, UNTRAINED_META)
        finally:
            checkpoints.close()
        staging.replace(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def init_settings(config: Any, init_dir: str | Path) -> Any:
    """`config` set to start from the best weights of the run `init_dir` (ssc train --init): that run's network
    (with the dropout and BatchNorm momentum of `config` where set) and conventions, no ImageNet source (S-Net), and
    `init` its `run_record`. ModelError when `init_dir` is no run of the same network with a best checkpoint."""
    source = read_config(init_dir, config.net)
    if not has_checkpoint(init_dir):
        raise ModelError(f"{init_dir}: has no saved best model to start from")
    rates = {k: getattr(config.model, k) for k in ("dropout", "batch_norm_momentum")}
    model = dataclasses.replace(
        source.model,
        **{k: v for k, v in rates.items() if v is not None},
        imported_from=None,  # trained here, from the init run (whose config keeps the source)
        imported_sha256=None,
    )
    data = dataclasses.replace(config.data, conventions=source.data.conventions)
    imagenet = {"pretrained": None} if hasattr(config, "pretrained") else {}  # an S-Net's: the init weights replace it
    return dataclasses.replace(
        config, model=model, data=data, init=from_dict(InitRun, run_record(init_dir)), **imagenet
    )


def _weight_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """The shapes of a ModelConfig's network's parameters and model state, by dotted path (nothing computed)."""
    network = abstract_model(model.name, **model.kwargs)
    flat = nnx.to_flat_state(nnx.state(network, nnx.Not(nnx.RngState)))
    return {".".join(map(str, path)): tuple(value.shape) for path, value in flat}


def check_init(config: Any) -> None:
    """Nothing without `config.init`; else ConfigError unless that run still holds the recorded checkpoint and its
    weights fit the network `config` trains (ModelError when it is no longer a run of this network)."""
    init = config.init
    if init is None:
        return
    mine, theirs = _weight_shapes(config.model), _weight_shapes(read_config(init.run, config.net).model)
    misfits = [f"{k} {theirs.get(k, 'missing')} (network {v})" for k, v in mine.items() if theirs.get(k) != v]
    if misfits or mine.keys() != theirs.keys():
        raise ConfigError(
            f"{init.run}: its weights do not fit the {config.model.name} to train: "
            f"{', '.join(misfits[:3]) or 'extra weights'}; take its network with --init"
        )
    found = run_record(init.run, init.checkpoint)["checkpoint_sha256"]
    if found != init.checkpoint_sha256:
        raise ConfigError(
            f"{init.run}: its {init.checkpoint} checkpoint is no longer the one these settings start from (sha256 "
            f"{found[:12]}..., recorded {init.checkpoint_sha256[:12]}...); start again with --init"
        )


def init_model(config: Any) -> nnx.Module:
    """The network `config` trains, with the weights of its init run (`config.init`, checked by `check_init`); its
    random streams from the config's seed."""
    model = config.model
    network = abstract_model(model.name, seed=config.train.seed, **model.kwargs)
    return restore_model(config.init.run, with_rates(network, model), config.init.checkpoint)
