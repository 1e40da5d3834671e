"""Training speed of the L-Net and the S-Net: the engine's jitted train step at a preset, input size and batch.
Reports compile time apart from the steady state, steps/s and images/s on one fixed batch and fed by the real
loader through the engine's background batches (the difference is the host-device stall), and peak device
memory where the backend reports it. Prints one JSON object.

    python benchmarks/train.py --quick                                  # CPU-sized, under two minutes
    python benchmarks/train.py --preset paper --steps 10                # VGG11-3D 192x256x256, ConvNeXt-T 512
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from common import chest_slices, level_volumes, peak_memory_bytes, print_report, random_crops, texture_patterns
from flax import nnx

from sscjax import networks, train
from sscjax.configs import ModelConfig
from sscjax.data.snet_loader import SNetLoader
from sscjax.models import build_model


@dataclass
class BenchTask:
    """The smallest engine task: a model, MSE on its outputs, and a batch maker."""

    model: ModelConfig
    make_batch: callable
    examples_per_epoch: int = 1  # the schedule's epochs are not used: the timed steps are counted

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return build_model(self.model, rngs)

    def train_batch(self, step: int, process_index: int, process_count: int) -> train.Batch:
        return self.make_batch(step)

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
        outputs = model(batch["inputs"]).astype(jnp.float32)
        return jnp.mean((outputs - batch["targets"]) ** 2)


def lnet_task(preset: str, size: tuple[int, int, int] | None, crop: int | None, batch: int, seed: int):
    config = networks.preset("lnet", preset)
    size, crop = tuple(size or config.data.size), crop or config.data.crop
    levels = level_volumes(max(batch, 4), size, seed)

    def make_batch(step: int) -> train.Batch:
        inputs, targets = random_crops(levels, crop, batch, seed, step)
        return {"inputs": inputs, "targets": targets / crop}

    return config, BenchTask(config.model, make_batch), {"crop": [crop, *size[1:]], "matrix": list(size)}


def snet_task(preset: str, image_size: int | None, batch: int, seed: int):
    config = networks.preset("snet", preset)
    size = image_size or config.data.image_size
    loader = SNetLoader(
        chest_slices(60, size, seed),
        batch,
        seed,
        patterns=texture_patterns(seed),
        synthesis=True,
        augment=True,
        balanced=True,
    )

    def make_batch(step: int) -> train.Batch:
        rendered = loader.batch(step)
        return {"inputs": rendered["image"], "targets": rendered["target"] / 100}

    return config, BenchTask(config.model, make_batch), {"image": [size, size]}


def measure(config, task: BenchTask, batch: int, steps: int, compute_dtype: str) -> dict:
    """Compile time, then `steps` steps on one fixed batch and `steps` steps fed by the loader."""
    schedule = dataclasses.replace(config.train, batch_size=batch, compute_dtype=compute_dtype)
    mesh = train.data_mesh()
    model_def, params, state, tx, opt_state = train.init_training(task, schedule, mesh)
    step_fn = train.make_train_step(task, model_def, tx)
    fixed = train.shard_batch(task.train_batch(0, 0, 1), mesh)
    key = jax.random.key(0)

    def run(batches) -> float:
        nonlocal params, opt_state, state
        start = time.perf_counter()
        for batch in batches:
            params, opt_state, state, out = step_fn(params, opt_state, state, batch, key)
        float(out["loss"])  # the engine reads the losses every log_every steps; one read waits for all the steps
        return time.perf_counter() - start

    compile_s = run([fixed])
    fixed_s = run([fixed] * steps) / steps
    fed_s = run(train.shard_batch(b, mesh) for b in train.prefetch_batches(task, 1, 1 + steps)) / steps
    return {
        "model": config.model.name,
        "parameters": sum(x.size for x in jax.tree.leaves(params)),
        "batch": batch,
        "compute_dtype": compute_dtype,
        "compile_s": compile_s,
        "fixed_batch": {"step_s": fixed_s, "steps_per_s": 1 / fixed_s, "images_per_s": batch / fixed_s},
        "with_loader": {"step_s": fed_s, "steps_per_s": 1 / fed_s, "images_per_s": batch / fed_s},
        "loader_stall": fed_s / fixed_s - 1,
        "peak_memory_bytes": peak_memory_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=["lnet", "snet", "both"], default="both")
    parser.add_argument(
        "--preset", choices=networks.shared_presets(), default="paper", help="model and sizes of a preset"
    )
    parser.add_argument("--lnet-size", type=int, nargs=3, help="L-Net resampled matrix (default: the preset's)")
    parser.add_argument("--lnet-crop", type=int, help="L-Net crop slices (default: the preset's)")
    parser.add_argument("--lnet-batch", type=int, default=2, help="L-Net batch size")
    parser.add_argument("--image-size", type=int, help="S-Net slice size (default: the preset's)")
    parser.add_argument("--snet-batch", type=int, default=10, help="S-Net batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: tiny presets, 5 steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.steps, args.lnet_batch, args.snet_batch = "tiny", 5, 4, 16
    figures = {}
    if args.net in ("lnet", "both"):
        config, task, sizes = lnet_task(args.preset, args.lnet_size, args.lnet_crop, args.lnet_batch, args.seed)
        figures["lnet"] = {**sizes, **measure(config, task, args.lnet_batch, args.steps, args.compute_dtype)}
    if args.net in ("snet", "both"):
        config, task, sizes = snet_task(args.preset, args.image_size, args.snet_batch, args.seed)
        figures["snet"] = {**sizes, **measure(config, task, args.snet_batch, args.steps, args.compute_dtype)}
    print_report("train", vars(args), figures)


if __name__ == "__main__":
    main()
