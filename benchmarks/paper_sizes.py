"""Both paper presets at their real sizes: the L-Net (VGG11-3D on 256x256x256 volumes, 192-slice crops) and the
S-Net (ConvNeXt-T on 512x512 slices), each at its preset's batch, through the training engine with the networks' own
tasks (loss, model, loader: synthesis and augmentation included) on synthetic inputs. Per network: the compile
times, seconds per training step and per prediction (one forward pass of the preset's predict_batch inputs), and
peak memory. Each network runs in a process of its own, its prediction before its training, so that the
process's high-water marks after each phase are that phase's peaks: `peak_rss_bytes` is the resident set's
(`resource.getrusage` ru_maxrss: host memory, on a CPU the whole job with the runtime and the inputs),
`peak_device_bytes` the device's own (`peak_bytes_in_use`; null on a CPU). Prints one JSON object.

    python benchmarks/paper_sizes.py --quick      # the same networks at reduced sizes, CPU: a few minutes
    python benchmarks/paper_sizes.py              # the paper's sizes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from common import chest_slices, level_volumes, peak_memory_bytes, print_report, texture_patterns

from sscjax import networks, train
from sscjax.lnet import LNetTask
from sscjax.snet import SNetTask

QUICK = {"lnet_size": (96, 64, 64), "lnet_crop": 64, "lnet_batch": 2, "image_size": 128, "snet_batch": 4}


@dataclass
class Case:
    """One network at one size: its settings, its engine task and the inputs of one prediction."""

    net: str
    config: Any
    task: Any
    predict_inputs: np.ndarray
    sizes: dict[str, Any]


@dataclass
class Outcome:
    """What a case did: its training losses, its prediction and the figures measured on the way."""

    losses: list[float]
    outputs: np.ndarray
    figures: dict[str, Any]


def with_schedule(config: Any, batch: int | None, **data: Any) -> Any:
    """A preset with other data settings and (unless None) another batch for training and prediction."""
    schedule = (
        config.train if batch is None else dataclasses.replace(config.train, batch_size=batch, predict_batch=batch)
    )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **data), train=schedule)


def lnet_case(size: tuple[int, int, int] | None = None, crop: int | None = None, batch: int | None = None) -> Case:
    """The paper's L-Net (or at `size`, `crop`, `batch`) on random volumes with five level positions each."""
    paper = networks.preset("lnet", "paper")
    config = with_schedule(paper, batch, size=tuple(size or paper.data.size), crop=crop or paper.data.crop)
    size, seed = config.data.size, config.train.seed
    train_set, valid_set = level_volumes(config.train.batch_size, size, seed), level_volumes(1, size, seed + 1)
    task = LNetTask(config, train_set, valid_set)
    inputs = task.train_batch(0, 0, 1)["inputs"][: config.train.predict_batch]
    return Case("lnet", config, task, inputs, {"matrix": list(config.data.size), "crop": config.data.crop})


def snet_case(image_size: int | None = None, batch: int | None = None) -> Case:
    """The paper's S-Net (or at `image_size`, `batch`), random initialisation, on synthetic chest slices."""
    paper = dataclasses.replace(networks.preset("snet", "paper"), pretrained="none")
    config = with_schedule(paper, batch, image_size=image_size or paper.data.image_size)
    size, seed = config.data.image_size, config.train.seed
    slices = chest_slices(max(2 * config.train.batch_size, 6), size, seed)
    task = SNetTask(config, slices, chest_slices(config.train.predict_batch, size, seed + 1), texture_patterns(seed))
    inputs = task.valid_set.images[: config.train.predict_batch, ..., None]
    return Case("snet", config, task, inputs, {"image": [size, size]})


def peaks() -> dict[str, int | None]:
    """The process's peak resident set (ru_maxrss, kB on Linux) and the device's peak memory, in bytes."""
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": peak_memory_bytes(),
    }


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    """(seconds, result) of `function(*args)`, waiting for its device results."""
    start = time.perf_counter()
    result = jax.block_until_ready(function(*args))
    return time.perf_counter() - start, result


def run_case(case: Case, steps: int = 2, predictions: int = 1) -> Outcome:
    """`predictions` predictions (the first compiles), then `steps` training steps (the first compiles) from the
    case's fresh model, with the engine's own functions."""
    mesh = train.data_mesh()
    model_def, params, state, tx, opt_state = train.init_training(case.task, case.config.train, mesh)
    predict_step = train.make_predict_step(case.task.predict, model_def, mesh)
    predict = train.predictor(predict_step, params, state, mesh, case.config.train.predict_batch)
    predict_s = [timed(predict, case.predict_inputs) for _ in range(predictions)]
    inference = peaks()
    step_fn = train.make_train_step(case.task, model_def, tx)
    losses, step_s = [], []
    for step in range(steps):
        batch = train.shard_batch(case.task.train_batch(step, 0, 1), mesh)
        key = jax.random.fold_in(jax.random.key(case.config.train.seed), step)
        seconds, (params, opt_state, state, out) = timed(step_fn, params, opt_state, state, batch, key)
        losses.append(float(out["loss"]))
        step_s.append(seconds)
    figures = {
        **case.sizes,
        "model": case.config.model.name,
        "batch": case.config.train.batch_size,
        "predict_batch": case.config.train.predict_batch,
        "training": {"first_step_s": step_s[0], "step_s": _steady(step_s), "losses": losses, **peaks()},
        "inference": {"first_call_s": predict_s[0][0], "call_s": _steady([s for s, _ in predict_s]), **inference},
    }
    return Outcome(losses, predict_s[-1][1], figures)


def _steady(seconds: list[float]) -> float | None:
    """Mean seconds of the calls after the first (which compiles); None after one call."""
    return float(np.mean(seconds[1:])) if len(seconds) > 1 else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the one network `args.net` at the sizes asked for."""
    if args.net == "lnet":
        case = lnet_case(args.lnet_size, args.lnet_crop, args.lnet_batch)
    else:
        case = snet_case(args.image_size, args.snet_batch)
    return run_case(case, args.steps, args.predictions).figures


def in_subprocess(net: str, args: argparse.Namespace) -> dict[str, Any]:
    """One network's figures, measured in a fresh process (its own memory high-water marks)."""
    command = [sys.executable, __file__, *_sizes_argv(args), "--net", net, "--figures-only"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        return {"failed": True, "exit_code": done.returncode, "stderr_tail": done.stderr[-2000:]}
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=["lnet", "snet", "both"], default="both")
    parser.add_argument("--lnet-size", type=int, nargs=3, help="L-Net resampled matrix z y x (default: the paper's)")
    parser.add_argument("--lnet-crop", type=int, help="L-Net crop slices (default: the paper's)")
    parser.add_argument("--lnet-batch", type=int, help="L-Net batch (default: the paper preset's)")
    parser.add_argument("--image-size", type=int, help="S-Net slice size (default: the paper's)")
    parser.add_argument("--snet-batch", type=int, help="S-Net batch (default: the paper preset's)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per network (the first compiles)")
    parser.add_argument("--predictions", type=int, default=2, help="predictions per network (the first compiles)")
    parser.add_argument("--quick", action="store_true", help=f"the same networks at reduced sizes: {QUICK}")
    parser.add_argument("--figures-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, getattr(args, name) or value)
    if args.figures_only:
        print(json.dumps(measure(args)))
        return
    nets = ["lnet", "snet"] if args.net == "both" else [args.net]
    print_report("paper_sizes", vars(args), {net: in_subprocess(net, args) for net in nets})


def _sizes_argv(args: argparse.Namespace) -> list[str]:
    """The command-line arguments that give a child process the same sizes and counts."""
    argv = ["--steps", str(args.steps), "--predictions", str(args.predictions)]
    for name in ("lnet_crop", "lnet_batch", "image_size", "snet_batch"):
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.lnet_size is not None:
        argv += ["--lnet-size", *map(str, args.lnet_size)]
    return argv


if __name__ == "__main__":
    main()
