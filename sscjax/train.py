"""The training engine: one flat, jit-compiled, data-parallel train loop that every network (L-Net, S-Net) uses.

A network comes as a `Task` (model factory, batches, loss, validation). The engine owns the rest: optax Adam,
parameters replicated and the global batch sharded over a ("data",) device mesh (several hosts after
`initialize_distributed`), orbax checkpoints (the best by validation MAE and the latest, saved asynchronously),
exact resumption, TensorBoard and JSONL logs written by process 0 only. Step n's batch and random keys derive
from (seed, n) alone, so a resumed run repeats exactly the run it continues.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sscjax.configs import COMPUTE_DTYPES as DTYPE_NAMES
from sscjax.configs import DECAYS, TrainConfig
from sscjax.errors import ConfigError, ModelError
from sscjax.run_files import Checkpoints, RunLog, model_arrays

Batch = dict[str, np.ndarray]
Predictor = Callable[[np.ndarray], np.ndarray]
DATA_AXIS = "data"
# Everything in a model that is neither trained nor random: BatchNorm statistics and the like.
MODEL_STATE = nnx.Not(nnx.Any(nnx.Param, nnx.RngState))
COMPUTE_DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}
# Batches made ahead, each in its own thread (numpy releases the GIL: the S-Net loader at 512 px makes 116 images/s
# on one thread, 161 on two), so that a fast device does not wait for the loader.
PREFETCH = 2


@dataclass(frozen=True)
class Validation:
    """A validation's scalars (must include "mae", the lower the better) and images (name -> HxWx3 uint8)."""

    metrics: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)


class Task(Protocol):
    """What a network brings to the engine.

    `train_batch(step, process_index, process_count)` returns this host's rows of global batch `step`
    (a dict of numpy arrays, batch on axis 0, process `i` holding rows i*b/p .. (i+1)*b/p - 1), made from
    (seed, step) alone and safe to call from several threads at once (batches are made ahead in parallel).
    `loss` (a scalar) and `predict` (a batch of inputs -> float outputs) run under `jax.jit` with the model in
    training / evaluation mode; the engine reseeds the model's random streams (dropout,
    stochastic depth) from (seed, step) before each step. `validate` gets a numpy -> numpy predictor of the
    current model (split over all devices; every host gets every output) and must return the same Validation
    on each host. `examples_per_epoch` turns `epochs` into steps.
    """

    examples_per_epoch: int

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def train_batch(self, step: int, process_index: int, process_count: int) -> Batch: ...

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array: ...

    def predict(self, model: nnx.Module, inputs: jax.Array) -> jax.Array: ...

    def validate(self, predict: Predictor) -> Validation: ...


@dataclass(frozen=True)
class StepInfo:
    """What the progress callback hears after every step: the loss and speed as last read (every `log_every` steps
    and at validations and checkpoints; None before the first read), metrics only after a validation."""

    step: int
    total: int
    loss: float | None
    examples_per_s: float | None
    metrics: dict[str, float] | None = None


@dataclass
class TrainResult:
    """How a `train` call ended."""

    step: int
    best_step: int | None
    best_mae: float | None
    stopped_early: bool
    losses: dict[int, float]  # training loss of every step run in this call
    validations: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- devices and hosts


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join a multi-host run: `jax.distributed.initialize` (None values come from the cluster environment:
    SLURM, Open MPI, Kubernetes, or JAX_COORDINATOR_ADDRESS and friends). Call before any other JAX work."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def data_mesh() -> Mesh:
    """A one-axis mesh over every device of every host."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that host `process_index` feeds."""
    if batch_size % process_count:
        raise ConfigError(f"batch size {batch_size} is not divisible by the {process_count} processes")
    per_host = batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def _global_array(local: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """This host's rows of a batch -> global arrays split over the mesh's data axis."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return {k: _global_array(np.asarray(v), sharding, len(v) * jax.process_count()) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    """A pytree of host values (the same on every host) -> global arrays replicated on every device."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree)


# ---------------------------------------------------------------- schedule and optimiser


def steps_per_epoch(config: TrainConfig, examples_per_epoch: int) -> int:
    return max(1, examples_per_epoch // config.batch_size)


def total_steps(config: TrainConfig, examples_per_epoch: int) -> int:
    """`steps` if set, else `epochs` passes over the training examples."""
    return config.steps if config.steps is not None else config.epochs * steps_per_epoch(config, examples_per_epoch)


def epoch_rows(seed: int, step: int, n_examples: int, batch_size: int) -> np.ndarray:
    """The example indices of global batch `step`: each epoch visits the examples in its own random order."""
    per_epoch = max(1, n_examples // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    order = np.resize(order, max(n_examples, batch_size))  # fewer examples than a batch: repeat them
    return order[k * batch_size : (k + 1) * batch_size]


def learning_rate(config: TrainConfig, total: int = 0) -> optax.Schedule:
    """The configured rate, reached linearly over `warmup_steps` (if any), then held ("constant") or brought
    down to 0 at step `total` along a half cosine ("cosine")."""
    if config.decay not in DECAYS:
        raise ConfigError(f"learning-rate decay {config.decay!r} is not one of {', '.join(DECAYS)}")
    warmup = max(config.warmup_steps, 0)
    after = (
        optax.cosine_decay_schedule(config.learning_rate, max(total - warmup, 1))
        if config.decay == "cosine"
        else optax.constant_schedule(config.learning_rate)
    )
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup), after], [warmup])


class AverageState(NamedTuple):
    """The moving average of the parameters and the number of updates averaged."""

    count: jax.Array  # type: ignore[assignment]  # a field named as optax's states name it, not tuple.count
    params: optax.Params


def average_params(decay: float) -> optax.GradientTransformation:
    """Passes the updates through and keeps an exponential moving average of the updated parameters; its decay
    ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so early weights (a zero head) fade fast."""
    if not 0 < decay < 1:
        raise ConfigError(f"weight-average decay {decay} must lie in (0, 1)")

    def init(params):
        return AverageState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

    def update(updates, state, params):
        rate = jnp.minimum(decay, (1.0 + state.count) / (10.0 + state.count))
        new = optax.apply_updates(params, updates)
        average = jax.tree.map(lambda a, p: rate * a + (1 - rate) * p, state.params, new)
        return updates, AverageState(state.count + 1, average)

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state: optax.OptState, params: optax.Params) -> optax.Params:
    """The weights to validate and keep: their moving average if the optimizer keeps one, else `params`."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, AverageState))
        if isinstance(s, AverageState)
    ]
    return found[0].params if found else params


def make_optimizer(config: TrainConfig, total: int = 0) -> optax.GradientTransformation:
    """Adam over `total` steps; weight decay as an L2 term added to the gradient (PyTorch Adam) or decoupled
    (AdamW); with `average_decay`, a moving average of the weights beside."""
    rate = learning_rate(config, total)
    if config.decoupled_weight_decay:
        tx = optax.adamw(rate, weight_decay=config.weight_decay)
    else:
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(rate))
    return tx if config.average_decay is None else optax.chain(tx, average_params(config.average_decay))


# ---------------------------------------------------------------- functional model


@dataclass(frozen=True)
class ModelDef:
    """A model's structure in training and in evaluation mode, and the shapes of its random streams."""

    train: nnx.GraphDef
    eval: nnx.GraphDef
    rng_template: nnx.State


def split_model(model: nnx.Module) -> tuple[ModelDef, nnx.State, nnx.State]:
    """(definition, params, model state such as BatchNorm statistics), the latter two as plain arrays.
    Leaves `model` in evaluation mode."""
    model.train()
    train_def, _, rngs, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)  # type: ignore[misc]
    model.eval()
    eval_def, _, _, _ = nnx.split(model, nnx.Param, nnx.RngState, ...)  # type: ignore[misc]
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.as_pure(rngs))
    return ModelDef(train_def, eval_def, template), *model_arrays(model)


def _fresh_rngs(template: nnx.State, key: jax.Array) -> nnx.State:
    """Random streams for one step, all derived from `key` (stream keys folded with their position)."""
    leaves, treedef = jax.tree.flatten(template)
    fresh = [
        jax.random.split(jax.random.fold_in(key, i), math.prod(t.shape)).reshape(t.shape)
        if jnp.issubdtype(t.dtype, jax.dtypes.prng_key)
        else jnp.zeros(t.shape, t.dtype)
        for i, t in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, fresh)


def merge_model(model_def: ModelDef, params, state, key: jax.Array, training: bool) -> nnx.Module:
    """The module from its arrays, with random streams freshly derived from `key`."""
    graphdef = model_def.train if training else model_def.eval
    return nnx.merge(graphdef, params, _fresh_rngs(model_def.rng_template, key), state)


def set_compute_dtype(model: nnx.Module, name: str) -> nnx.Module:
    """Make every layer with a computation dtype (convolutions, linears, norms) compute in `name`; parameters
    and BatchNorm statistics keep their float32 storage (flax's mixed precision)."""
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"compute_dtype {name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if name != "float32":
        for _, module in nnx.iter_modules(model):
            if hasattr(module, "dtype"):
                module.dtype = COMPUTE_DTYPES[name]
    return model


def init_training(
    task: Task, config: TrainConfig, mesh: Mesh
) -> tuple[ModelDef, nnx.State, nnx.State, optax.GradientTransformation, optax.OptState]:
    """A run's start: (model definition, params, model state, optimizer, optimizer state), the arrays
    replicated on `mesh` with the shardings the train step returns (so it compiles once)."""
    model = set_compute_dtype(task.make_model(nnx.Rngs(config.seed)), config.compute_dtype)
    model_def, params, state = split_model(model)
    tx = make_optimizer(config, total_steps(config, task.examples_per_epoch))
    params, state = replicate((params, state), mesh)
    opt_state = jax.jit(tx.init, out_shardings=NamedSharding(mesh, PartitionSpec()))(params)
    return model_def, params, state, tx, opt_state


def layer_norms(tree) -> dict[str, jax.Array]:
    """The L2 norm of each layer's arrays (a layer: the arrays that share a path but for its last key, such as a
    convolution's kernel and bias), by the layer's dotted path."""
    squares: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path[:-1])
        squares[name] = squares.get(name, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {name: jnp.sqrt(total) for name, total in squares.items()}


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The mean squared error over batch and outputs, in float32 (every network's loss, the authors' too)."""
    return jnp.mean((outputs.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2)


def make_train_step(task: Task, model_def: ModelDef, tx: optax.GradientTransformation) -> Callable:
    """(params, opt_state, state, batch, key) -> (params, opt_state, state, {"loss", "grad_norm", "layer_grad_norms"}),
    jitted; the buffers of params, opt_state and state are donated to their successors (one copy of the weights in
    memory). `layer_grad_norms` shows whether the gradient reaches every layer (logged as grad_norm/<layer>)."""

    def loss_fn(params, state, batch, key):
        model = merge_model(model_def, params, state, key, training=True)
        loss = task.loss(model, batch)
        return loss.astype(jnp.float32), nnx.as_pure(nnx.state(model, MODEL_STATE))

    def step(params, opt_state, state, batch, key):
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (
            params,
            opt_state,
            new_state,
            {"loss": loss, "grad_norm": optax.tree.norm(grads), "layer_grad_norms": layer_norms(grads)},
        )

    return jax.jit(step, donate_argnums=(0, 1, 2))


def make_predict_step(forward: Callable, model_def: ModelDef, mesh: Mesh) -> Callable:
    """(params, state, inputs) -> float32 `forward(model, inputs)` in evaluation mode, jitted, replicated on `mesh`."""

    def predict(params, state, inputs):
        model = merge_model(model_def, params, state, jax.random.key(0), training=False)
        return forward(model, inputs).astype(jnp.float32)

    return jax.jit(predict, out_shardings=NamedSharding(mesh, PartitionSpec()))


@dataclass(frozen=True)
class MeshPredictor:
    """numpy inputs -> numpy outputs of a model: `chunk` inputs per forward pass (a multiple of the device count),
    each split over the mesh; every host passes all inputs and gets all outputs. A last, shorter chunk is padded
    to the full chunk, so one compilation serves every number of inputs."""

    predict_step: Callable
    params: nnx.State
    state: nnx.State
    mesh: Mesh
    chunk: int

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs)
        rows = host_rows(self.chunk, jax.process_index(), jax.process_count())
        sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        outputs = []
        for start in range(0, len(inputs), self.chunk):
            part = inputs[start : start + self.chunk]
            padded = np.concatenate([part, np.zeros((self.chunk - len(part), *part.shape[1:]), part.dtype)])
            out = self.predict_step(self.params, self.state, _global_array(padded[rows], sharding, self.chunk))
            outputs.append(np.asarray(out)[: len(part)])
        return np.concatenate(outputs)


def predictor(predict_step: Callable, params, state, mesh: Mesh, batch_size: int) -> MeshPredictor:
    """A predictor with `batch_size` rounded up to a multiple of the device count."""
    return MeshPredictor(predict_step, params, state, mesh, -(-batch_size // mesh.size) * mesh.size)


def inference_batch(batch_size: int, input_values: int) -> int:
    """Inputs per forward pass at inference: on a CPU one at a time once an input holds 2^16 values or more (a
    256x256 slice, any L-Net window), measured fastest there (ConvNeXt-T at 512x512: 0.39 s a slice, 0.48 s at
    batch 5; VGG11 at 192x256x256: 0.63 s a window, 0.72 s at batch 4); `batch_size` otherwise."""
    return 1 if jax.default_backend() == "cpu" and input_values >= 1 << 16 else batch_size


def model_predictor(
    model: nnx.Module, batch_size: int, forward: Callable | None = None, compute_dtype: str = "float32"
) -> MeshPredictor:
    """A predictor of `forward(model, inputs)` (default `model(inputs)`) in evaluation mode on all devices."""
    model_def, params, state = split_model(set_compute_dtype(model, compute_dtype))
    mesh = data_mesh()
    params, state = replicate((params, state), mesh)
    step = make_predict_step(forward or (lambda m, x: m(x)), model_def, mesh)
    return predictor(step, params, state, mesh, batch_size)


# ---------------------------------------------------------------- the loop


def _restore_latest(checkpoints: Checkpoints, resume: bool, arrays: tuple) -> tuple[tuple, dict[str, Any], int]:
    """((params, state, optimizer state), model-selection meta, step) to start from: the latest checkpoint's when the
    run has one and `resume` is set (ConfigError when it has one and `resume` is not), else `arrays` at step 0."""
    if checkpoints.latest_step("latest") is None:
        return arrays, {"best_mae": None, "best_step": None, "bad_validations": 0}, 0
    if not resume:
        raise ConfigError(f"{checkpoints.run_dir}: already holds a trained run; resume it or choose another run folder")
    params, state, opt_state = arrays
    items, meta = checkpoints.restore("latest", {"model": {"params": params, "state": state}, "optimizer": opt_state})
    step = meta.pop("step")  # each save records its own step
    return (items["model"]["params"], items["model"]["state"], items["optimizer"]), meta, step


def _train_scalars(latest: dict, rate: float, speed: float) -> dict[str, float]:
    """What is logged of a training step: loss, gradient norms (overall and per layer), learning rate, speed."""
    return {
        "train/loss": latest["loss"],
        "train/grad_norm": latest["grad_norm"],
        "train/lr": rate,
        "train/examples_per_s": speed,
        **{f"grad_norm/{k}": v for k, v in latest["layer_grad_norms"].items()},
    }


def _log_validation(log: RunLog, result: TrainResult, step: int, validation: Validation) -> None:
    """A validation's metrics and images into the run's logs and the result."""
    log.scalars(step, {f"valid/{k}": v for k, v in validation.metrics.items()})
    log.images(step, validation.images)
    result.validations.append({"step": step, **validation.metrics})


def _selection(meta: dict, mae: float, step: int) -> tuple[dict, bool]:
    """Model selection after a validation: the new {best_mae, best_step, bad_validations} and whether it improved."""
    improved = meta["best_mae"] is None or mae < meta["best_mae"]
    if improved:
        return {"best_mae": mae, "best_step": step, "bad_validations": 0}, True
    return {**meta, "bad_validations": meta["bad_validations"] + 1}, False


def read_losses(pending: dict[int, dict], run_dir: Path) -> dict[int, dict]:
    """The train step's outputs (loss, gradient norms) of the steps run since the last read, in one transfer to the
    host, as floats by step; ModelError naming the first step whose loss is not finite."""
    values = jax.tree.map(float, jax.device_get(pending))
    for step, out in values.items():
        if not math.isfinite(out["loss"]):
            raise ModelError(
                f"{run_dir}: the training loss is {out['loss']} at step {step} (training diverged); "
                "lower the learning rate or check the data (the run keeps its last checkpoints)"
            )
    return values


def prefetch_batches(task: Task, start: int, stop: int) -> Iterator[Batch]:
    """Batches start .. stop-1 of this host, the next PREFETCH ones prepared in background threads."""
    pi, pc = jax.process_index(), jax.process_count()
    with ThreadPoolExecutor(max_workers=PREFETCH) as pool:
        pending = collections.deque(
            pool.submit(task.train_batch, step, pi, pc) for step in range(start, min(start + PREFETCH, stop))
        )
        for step in range(start, stop):
            batch = pending.popleft().result()
            if step + PREFETCH < stop:
                pending.append(pool.submit(task.train_batch, step + PREFETCH, pi, pc))
            yield batch


@dataclass(frozen=True)
class _Cadence:
    """Which steps are logged, validated and checkpointed: every `log_every`, `valid_every` and `checkpoint_every`
    steps, and the last step for all three."""

    total: int
    log_every: int
    valid_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: TrainConfig, examples_per_epoch: int) -> _Cadence:
        """The config's cadence: unless set, a validation each epoch and a checkpoint at each validation."""
        valid_every = config.valid_every or steps_per_epoch(config, examples_per_epoch)
        total = total_steps(config, examples_per_epoch)
        return cls(total, config.log_every, valid_every, config.checkpoint_every or valid_every)

    def _at(self, done: int, every: int) -> bool:
        """Whether something done every `every` steps is due after `done` steps."""
        return done % every == 0 or done == self.total

    def due(self, done: int) -> tuple[bool, bool, bool]:
        """(logging, validating, checkpointing) after `done` steps."""
        return self._at(done, self.log_every), self._at(done, self.valid_every), self._at(done, self.checkpoint_every)


class _Throughput:
    """Training examples per second between logged steps, measured when the losses are read; the time spent
    validating is left out."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size = batch_size
        self.since_time, self.since_step = time.perf_counter(), step
        self.read_time = self.since_time

    def measure(self, step: int) -> float:
        """Examples per second from the last logged step to now, when step `step`'s losses were read."""
        self.read_time = time.perf_counter()
        return (step - self.since_step) * self.batch_size / max(self.read_time - self.since_time, 1e-9)

    def logged(self, step: int) -> None:
        """Step `step` was logged: the next measure starts from its read."""
        self.since_time, self.since_step = self.read_time, step

    def validated(self) -> None:
        """A validation just ended: the next measure leaves its time out."""
        self.since_time = time.perf_counter()


def _check_batch_size(config: TrainConfig, mesh: Mesh) -> None:
    """ConfigError unless the global batch splits evenly over the devices and the hosts."""
    if config.batch_size % mesh.size:
        raise ConfigError(f"batch size {config.batch_size} is not divisible by the {mesh.size} devices")
    host_rows(config.batch_size, jax.process_index(), jax.process_count())


def _start(
    task: Task, config: TrainConfig, mesh: Mesh, run_dir: Path, resume: bool
) -> tuple[Callable, Callable, Checkpoints, tuple, dict[str, Any], int]:
    """The compiled train and predict steps, the run's checkpoints (opened) and what `_restore_latest` starts from:
    fresh (params, state, optimizer state) or, on `resume`, the latest checkpoint's."""
    model_def, params, state, tx, opt_state = init_training(task, config, mesh)
    train_step = make_train_step(task, model_def, tx)
    predict_step = make_predict_step(task.predict, model_def, mesh)
    checkpoints = Checkpoints(run_dir)
    try:
        return train_step, predict_step, checkpoints, *_restore_latest(checkpoints, resume, (params, state, opt_state))
    except ConfigError:
        checkpoints.close()
        raise


def _device_batch(host_batch: Batch, mesh: Mesh, batch_size: int) -> dict[str, jax.Array]:
    """This host's rows of a batch as global arrays sharded over the mesh; ConfigError when the task made batches
    of another size than the config's."""
    batch = shard_batch(host_batch, mesh)
    rows = {v.shape[0] for v in batch.values()}
    if rows != {batch_size}:
        raise ConfigError(f"the task made batches of {rows} rows, the config asks for {batch_size}")
    return batch


def _read_pending(pending: dict[int, dict], step: int, run_dir: Path, result: TrainResult) -> dict:
    """The outputs of the steps run since the last read, read in one transfer (see `read_losses`) and their losses
    kept in `result`; returns step `step`'s (the newest)."""
    read = read_losses(pending, run_dir)
    pending.clear()
    result.losses.update({s: out["loss"] for s, out in read.items()})
    return read[step]


def _validate(
    task: Task,
    predict: Predictor,
    model: dict,
    step: int,
    meta: dict,
    checkpoints: Checkpoints,
    log: RunLog,
    result: TrainResult,
) -> tuple[dict[str, float], dict]:
    """Validate `model` (its params and state, run by `predict`), save it as the "best" checkpoint when the MAE
    improved (see `_selection`) and log the validation; returns its metrics and the new meta."""
    validation = task.validate(predict)
    meta, improved = _selection(meta, float(validation.metrics["mae"]), step)
    if improved:
        checkpoints.save("best", step, {"model": model}, {"step": step, **meta})
    _log_validation(log, result, step, validation)
    return validation.metrics, meta


def _save_latest(checkpoints: Checkpoints, step: int, arrays: tuple, meta: dict) -> None:
    """(params, state, optimizer state) and the model-selection meta as the "latest" checkpoint, all a resume needs."""
    params, state, opt_state = arrays
    checkpoints.save(
        "latest", step, {"model": {"params": params, "state": state}, "optimizer": opt_state}, {"step": step, **meta}
    )


def train(
    task: Task,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train `task` in `run_dir` (checkpoints, TensorBoard, log.jsonl); `resume` continues from the latest
    checkpoint there. Returns when the schedule ends or early stopping triggers."""
    run_dir = Path(run_dir)
    mesh = data_mesh()
    _check_batch_size(config, mesh)
    cadence = _Cadence.of(config, task.examples_per_epoch)
    total = cadence.total
    train_step, predict_step, checkpoints, (params, state, opt_state), meta, start = _start(
        task, config, mesh, run_dir, resume
    )
    log = RunLog(run_dir)
    base_key = jax.random.key(config.seed)
    result = TrainResult(start, meta["best_step"], meta["best_mae"], False, {})
    throughput = _Throughput(start, config.batch_size)
    pending, loss, speed = {}, None, None  # the steps' outputs stay on the device until read
    try:
        for step, host_batch in zip(range(start, total), prefetch_batches(task, start, total)):
            batch = _device_batch(host_batch, mesh, config.batch_size)
            key = jax.random.fold_in(base_key, step)
            params, opt_state, state, out = train_step(params, opt_state, state, batch, key)
            done = step + 1
            pending[done] = out
            logging, validating, checkpointing = cadence.due(done)
            metrics = None
            if logging or validating or checkpointing:  # nothing is logged, validated or saved unchecked
                latest = _read_pending(pending, done, run_dir, result)
                loss, speed = latest["loss"], throughput.measure(done)
                if logging:
                    log.scalars(done, _train_scalars(latest, float(learning_rate(config, total)(step)), speed))
                    throughput.logged(done)
            if validating:
                model = {"params": averaged_params(opt_state, params), "state": state}
                predict = predictor(predict_step, model["params"], state, mesh, config.predict_batch)
                metrics, meta = _validate(task, predict, model, done, meta, checkpoints, log, result)
                throughput.validated()
            stop_early = config.early_stop is not None and meta["bad_validations"] >= config.early_stop
            if checkpointing or stop_early:
                _save_latest(checkpoints, done, (params, state, opt_state), meta)
            result.step, result.best_step, result.best_mae = done, meta["best_step"], meta["best_mae"]
            if progress is not None:
                progress(StepInfo(done, total, loss, speed, metrics))
            if stop_early:
                result.stopped_early = True
                break
    finally:
        checkpoints.close()
        log.close()
    return result
