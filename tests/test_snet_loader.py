"""S-Net loader: determinism from (seed, step), the synthetic share, the engine's prefetch, host shards."""

import threading

import numpy as np
import pytest
from loader import LoaderTask  # benchmarks/loader.py

from sscjax import train
from sscjax.data.slices import SliceSet, window
from sscjax.data.snet_loader import SNetLoader
from sscjax.data.synthesis import Patterns
from sscjax.errors import ConfigError

SIZE = 48


def toy_slices(n: int = 45) -> SliceSet:
    """n chest-like slices (body, two lungs, noise) of 3 scans; half healthy, the rest TOT 5..100."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.48) ** 2 <= 1
    lung = ((yy - 0.5) / 0.3) ** 2 + ((np.abs(xx - 0.5) - 0.2) / 0.14) ** 2 <= 1
    hu = np.where(lung, -850.0, np.where(body, 40.0, -1000.0)) + rng.normal(0, 30, (n, SIZE, SIZE))
    tot = np.where(np.arange(n) % 2 == 0, 0.0, rng.choice(np.arange(5, 101, 5), n))
    gg = np.round(tot * rng.random(n) / 5) * 5
    return SliceSet(
        images=window(hu),
        lung=np.broadcast_to(lung, (n, SIZE, SIZE)).copy(),
        scores=np.stack([tot, gg, tot - gg], 1).astype(np.float32),
        scan_id=np.array([f"p{i // 15}" for i in range(n)]),
        level=np.arange(n, dtype=np.int8) // 3 % 5 + 1,
        offset=(np.arange(n) % 3 - 1).astype(np.int8),
        slice_index=np.arange(n, dtype=np.int32),
        z_mm=np.arange(n, dtype=float),
        spacing_yx=np.full((n, 2), 0.7 * 512 / SIZE),
        native_shape=np.full((n, 2), 512, np.int32),
    )


def toy_patterns() -> Patterns:
    rng = np.random.default_rng(1)
    gg = window(-550 + rng.normal(0, 40, (32, 32)))
    ret = window(np.where(rng.random((32, 32)) < 0.3, -200.0, -700.0))
    return Patterns(gg, ret, 0.7)


@pytest.fixture(scope="module")
def slices() -> SliceSet:
    return toy_slices()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_deterministic_from_seed_and_step(slices):
    loader = SNetLoader(slices, 8, seed=3, patterns=toy_patterns())
    first = loader.batch(5)
    assert first["image"].shape == (8, SIZE, SIZE, 1) and first["image"].dtype == np.float32
    assert first["target"].shape == (8, 3) and first["target"].dtype == np.float32
    assert same(first, SNetLoader(slices, 8, seed=3, patterns=toy_patterns()).batch(5))
    assert not np.array_equal(first["image"], loader.batch(6)["image"])
    assert not np.array_equal(first["image"], SNetLoader(slices, 8, seed=4, patterns=toy_patterns()).batch(5)["image"])


def test_batches_do_not_depend_on_the_blocking(slices):
    one_by_one = SNetLoader(slices, 8, seed=3, patterns=toy_patterns(), block_pixels=1).batch(2)
    whole = SNetLoader(slices, 8, seed=3, patterns=toy_patterns(), block_pixels=10**9).batch(2)
    assert same(one_by_one, whole)


def test_half_of_each_batch_is_synthetic_from_healthy_slices(slices):
    loader = SNetLoader(slices, 10, seed=0, patterns=toy_patterns())
    known = {tuple(s) for s in slices.scores}
    for step in range(6):
        plan, batch = loader.plan(step), loader.batch(step)
        assert batch["synthetic"].sum() == 5
        assert np.all(slices.healthy[plan.source[batch["synthetic"]]])
        synthetic = batch["target"][batch["synthetic"]]
        tot, gg, ret = synthetic.T
        assert np.all(tot > 0) and np.all(np.maximum(gg, ret) <= tot + 1e-4) and np.all(tot <= gg + ret + 1e-4)
        assert all(tuple(t) in known for t in batch["target"][~batch["synthetic"]])  # real labels unchanged
    assert (
        SNetLoader(slices, 10, seed=0, patterns=toy_patterns(), synthetic_fraction=0.3).batch(0)["synthetic"].sum() == 3
    )
    assert not SNetLoader(slices, 10, seed=0, synthesis=False).batch(0)["synthetic"].any()
    with pytest.raises(ConfigError, match="pattern"):
        SNetLoader(slices, 10, seed=0)


def test_without_synthesis_and_augmentation_batches_are_the_slices(slices):
    loader = SNetLoader(slices, 6, seed=1, synthesis=False, augment=False)
    plan, batch = loader.plan(2), loader.batch(2)
    assert np.array_equal(batch["image"][..., 0], slices.images[plan.source])
    assert np.array_equal(batch["target"], slices.scores[plan.source])
    augmented = SNetLoader(slices, 6, seed=1, synthesis=False).batch(2)
    assert np.array_equal(augmented["target"], batch["target"]) and not np.array_equal(
        augmented["image"], batch["image"]
    )


def test_host_shards_make_up_the_global_batch(slices):
    whole = SNetLoader(slices, 8, seed=2, patterns=toy_patterns()).batch(4)
    shards = [
        SNetLoader(slices, 8, seed=2, patterns=toy_patterns(), process_index=i, process_count=2).batch(4)
        for i in (0, 1)
    ]
    assert same(whole, {k: np.concatenate([s[k] for s in shards]) for k in whole})
    with pytest.raises(ConfigError):
        SNetLoader(slices, 9, seed=2, patterns=toy_patterns(), process_count=2)


def prefetch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")}


def test_the_engines_prefetch_yields_the_direct_batches_and_shuts_down(slices):
    loader = SNetLoader(slices, 4, seed=7, patterns=toy_patterns())
    before = prefetch_threads()
    fetched = list(train.prefetch_batches(LoaderTask(loader), 3, 9))
    assert len(fetched) == 6 and all(same(b, loader.batch(3 + i)) for i, b in enumerate(fetched))
    assert prefetch_threads() == before
