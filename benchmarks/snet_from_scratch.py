"""Does an S-Net network learn the scores from random weights? The diagnosis of docs/snet_training.md as one script:
a bare training loop (uniform sampling; synthetic lesions and augmentation only when asked) on the level and
neighbour slices of a cohort's fold-0 training patients, scored on its test split against predict-the-mean and against a linear
regression on the lung's density (mean and SD of the window values inside each slice's lung mask, and the level),
which shows how easy the signal is once the lung is known. Prints one JSON object.

    ssc phantom p21 --patients 48 --seed 21
    python benchmarks/snet_from_scratch.py --data p21 --size 64 --steps 300 --lr 1e-3    # about 5 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import print_report
from flax import nnx

from sscjax.data import fold_split
from sscjax.data.slices import SliceSet, load_slices, resize_slices
from sscjax.data.snet_loader import SNetLoader
from sscjax.data.synthesis import load_patterns
from sscjax.models import create_model

CACHE_SIZE = 128  # slices are extracted once at this size and resized for the network


def lung_features(slices: SliceSet) -> np.ndarray:
    """(N, 4): 1, the mean and SD of the window values inside each slice's lung mask, its level."""
    inside = slices.lung.sum(axis=(1, 2)).clip(1)
    mean = (slices.images * slices.lung).sum(axis=(1, 2)) / inside
    sd = np.sqrt((((slices.images - mean[:, None, None]) ** 2) * slices.lung).sum(axis=(1, 2)) / inside)
    return np.column_stack([np.ones(len(slices)), mean, sd, slices.level])


def linear_on_lung(train: SliceSet, test: SliceSet) -> np.ndarray:
    """(N_test, 3) scores of the least-squares fit of the training scores on `lung_features`, bounded to 0..100."""
    coef, *_ = np.linalg.lstsq(lung_features(train), train.scores, rcond=None)
    return np.clip(lung_features(test) @ coef, 0.0, 100.0)


def batch_source(args, train: SliceSet, cohort) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Training batch `step` -> (images at `args.size`, targets in percent / 100): the engine's S-Net loader with
    uniform sampling, and synthetic lesions and augmentation only where asked."""
    patterns = load_patterns(cohort.pattern_paths) if args.synthetic_fraction else None
    loader = SNetLoader(
        train,
        args.batch,
        0,
        patterns=patterns,
        synthetic_fraction=args.synthetic_fraction,
        balanced=False,
        synthesis=args.synthetic_fraction > 0,
        augment=args.augment,
    )

    def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        drawn = loader.batch(step)
        return resize_slices(drawn["image"][..., 0], args.size, order=1)[..., None], drawn["target"] / 100

    return batch


def train_network(args, batch: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> tuple[nnx.Module, float]:
    """The network trained `args.steps` steps of `batch(step)` (Adam, MSE on percent / 100, a zero head as the S-Net
    starts): (model in evaluation mode, mean training loss of the last 50 steps)."""
    options = {"input_norm": ((args.lung_norm[0],), (args.lung_norm[1],))} if args.lung_norm else {}
    model = create_model(args.model, 3, in_chans=1, normalize_input=not args.lung_norm, rngs=nnx.Rngs(0), **options)
    model.head.kernel.set_value(jnp.zeros_like(model.head.kernel.get_value()))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = []
    model.train()
    for i in range(args.steps):
        images, targets = batch(i)
        losses.append(float(step(model, optimizer, jnp.asarray(images), jnp.asarray(targets))))
    model.eval()
    return model, float(np.mean(losses[-50:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a cohort folder (ssc phantom)")
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--size", type=int, default=64, help="slice side the network sees, pixels")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--lung-norm", type=float, nargs=2, metavar=("MEAN", "SD"), help="input (x - MEAN) / SD instead of ImageNet's"
    )
    parser.add_argument(
        "--synthetic-fraction", type=float, default=0.0, help="share of each batch made by synthetic lesions"
    )
    parser.add_argument("--augment", action="store_true", help="the engine's affine and intensity augmentation")
    args = parser.parse_args()

    cohort, train_ids, _, record = fold_split(args.data, 0)
    cache = args.data.parent / f".{args.data.name}_slices"
    slices = load_slices(cohort, cache, image_size=CACHE_SIZE, neighbours=True, ids=train_ids + record["test"])
    train, test = slices.of_scans(train_ids), slices.of_scans(record["test"]).level_only()
    start = time.perf_counter()
    model, loss = train_network(args, batch_source(args, train, cohort))
    seconds = time.perf_counter() - start
    pred = np.clip(
        np.asarray(model(jnp.asarray(resize_slices(test.images, args.size, order=1)[..., None]))) * 100, 0, 100
    )
    mean_mae = np.abs(train.level_only().scores.mean(axis=0) - test.scores).mean(axis=0)
    mae, linear = (
        np.abs(pred - test.scores).mean(axis=0),
        np.abs(linear_on_lung(train, test) - test.scores).mean(axis=0),
    )
    print_report(
        "snet_from_scratch",
        {
            **{k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
            "backend": jax.default_backend(),
        },
        {
            "train_patients": len(train_ids),
            "test_patients": len(record["test"]),
            "train_seconds": seconds,
            "final_train_loss": loss,
            "target_variance": float((train.scores / 100).var()),
            "test_mae_pct": mae.tolist(),
            "mean_baseline_mae_pct": mean_mae.tolist(),
            "ratio_to_mean": (mae / mean_mae).tolist(),
            "linear_on_lung_ratio_to_mean": (linear / mean_mae).tolist(),
        },
    )


if __name__ == "__main__":
    main()
