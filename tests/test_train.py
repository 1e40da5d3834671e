"""The training engine on a toy regression task: exact resumption, optimiser maths, selection, logging."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sscjax import run_files, runs, train
from sscjax.configs import TrainConfig
from sscjax.errors import ConfigError, ModelError


class ToyModel(nnx.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: every kind of state the engine must carry."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


@dataclasses.dataclass
class ToyTask:
    """Noisy linear targets of 8 inputs; 64 training and 32 validation examples."""

    batch_size: int = 8
    seed: int = 0
    n: int = 64

    def __post_init__(self):
        rng = np.random.default_rng(123)
        self.x = rng.normal(size=(self.n + 32, 8)).astype(np.float32)
        self.y = (self.x @ rng.normal(size=(8, 2))).astype(np.float32)
        self.examples_per_epoch = self.n

    def make_model(self, rngs):
        return ToyModel(rngs)

    def train_batch(self, step, process_index, process_count):
        rows = train.epoch_rows(self.seed, step, self.n, self.batch_size)
        rows = rows[train.host_rows(self.batch_size, process_index, process_count)]
        return {"inputs": self.x[rows], "targets": self.y[rows]}

    def loss(self, model, batch):
        return jnp.mean((model(batch["inputs"]) - batch["targets"]) ** 2)

    def predict(self, model, inputs):
        return model(inputs)

    def validate(self, predict):
        pred = predict(self.x[self.n :])
        image = np.zeros((4, 6, 3), np.uint8)
        return train.Validation({"mae": float(np.abs(pred - self.y[self.n :]).mean())}, {"valid/toy": image})


TOY = TrainConfig(steps=40, batch_size=8, learning_rate=1e-2, valid_every=10, log_every=5, checkpoint_every=5)


def final_state(run_dir, kind="latest"):
    model = run_files.restore_model(run_dir, ToyModel(nnx.Rngs(99)), kind)
    return jax.tree.leaves(nnx.state(model, nnx.Not(nnx.RngState)))


class Killed(Exception):
    pass


def kill_at_27(config, run_dir):
    """Train `config` in `run_dir` until it is killed during step 27, as a SIGKILL would stop it."""

    def kill(info):
        if info.step == 27:
            raise Killed

    with pytest.raises(Killed):
        train.train(ToyTask(), config, run_dir, progress=kill)


def test_resume_after_kill_gives_identical_parameters(tmp_path):
    whole = train.train(ToyTask(), TOY, tmp_path / "whole")
    kill_at_27(TOY, tmp_path / "split")
    with pytest.raises(ConfigError, match="resume"):
        train.train(ToyTask(), TOY, tmp_path / "split")
    resumed = train.train(ToyTask(), TOY, tmp_path / "split", resume=True)

    assert min(resumed.losses) == 26  # continued after the step-25 checkpoint
    assert resumed.losses[40] == whole.losses[40]
    for a, b in zip(final_state(tmp_path / "whole"), final_state(tmp_path / "split"), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (resumed.best_step, resumed.best_mae) == (whole.best_step, whole.best_mae)
    assert whole.best_mae < whole.validations[0]["mae"] * 0.8  # it learns


def test_best_checkpoint_is_the_lowest_validation_mae(tmp_path):
    result = train.train(ToyTask(), dataclasses.replace(TOY, learning_rate=0.05, steps=30), tmp_path)
    maes = {v["step"]: v["mae"] for v in result.validations}
    assert result.best_step == min(maes, key=maes.get)
    best = ToyTask()
    model = run_files.restore_model(tmp_path, ToyModel(nnx.Rngs(5)), "best")
    predicted = np.asarray(model(best.x[best.n :]))
    assert np.abs(predicted - best.y[best.n :]).mean() == pytest.approx(maes[result.best_step], rel=1e-5)


@dataclasses.dataclass
class WorseningTask(ToyTask):
    """Validation MAE 1, 2, 3, ...: only the first validation is ever the best."""

    validations: int = 0

    def validate(self, predict):
        self.validations += 1
        return train.Validation({"mae": float(self.validations)})


def test_early_stop_after_validations_without_improvement(tmp_path):
    config = dataclasses.replace(TOY, steps=100, early_stop=2)
    result = train.train(WorseningTask(), config, tmp_path)
    assert result.stopped_early
    assert (result.best_step, result.best_mae, result.step) == (10, 1.0, 30)
    assert run_files.Checkpoints(tmp_path, read_only=True).latest_step("latest") == 30


def test_logs_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.train(ToyTask(), dataclasses.replace(TOY, steps=20), tmp_path)
    records = [json.loads(line) for line in (tmp_path / runs.LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in records if "valid/mae" in r] == [10, 20]
    events = EventAccumulator(str(tmp_path / runs.TENSORBOARD_DIR)).Reload()
    # per-layer gradient norms, one tag per layer of the toy model, each positive: the gradient reaches every layer
    assert {
        "train/loss",
        "train/lr",
        "train/examples_per_s",
        "valid/mae",
        "grad_norm/l1",
        "grad_norm/bn",
        "grad_norm/l2",
    } <= set(events.Tags()["scalars"])
    assert all(e.value > 0 for layer in ("l1", "bn", "l2") for e in events.Scalars(f"grad_norm/{layer}"))
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([TOY.learning_rate] * 4)
    assert events.Tags()["images"] == ["valid/toy"]


def _strict_json(line: str) -> dict:
    return json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in log.jsonl is not JSON"))


def test_log_writes_undefined_numbers_as_null(tmp_path):
    log = run_files.RunLog(tmp_path)
    log.scalars(3, {"valid/kappa_GG": float("nan"), "valid/mae": np.float32(2.5), "train/loss": float("inf")})
    log.close()
    record = _strict_json((tmp_path / runs.LOG_FILE).read_text())
    assert (record["valid/kappa_GG"], record["valid/mae"], record["train/loss"]) == (None, 2.5, None)


@dataclasses.dataclass
class DivergingTask(ToyTask):
    """A loss that turns NaN at step 7 (as a too high learning rate makes it)."""

    def train_batch(self, step, process_index, process_count):
        batch = super().train_batch(step, process_index, process_count)
        return {**batch, "targets": batch["targets"] * (np.nan if step >= 6 else 1.0)}


def test_a_nan_loss_stops_training_naming_the_run_and_step(tmp_path):
    with pytest.raises(ModelError, match=f"{tmp_path}: the training loss is nan at step 7"):
        train.train(DivergingTask(), TOY, tmp_path)
    assert run_files.Checkpoints(tmp_path, read_only=True).latest_step("latest") == 5
    for line in (tmp_path / runs.LOG_FILE).read_text().splitlines():
        _strict_json(line)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left running
@pytest.mark.parametrize("damage", ["overwrite shards", "truncate metadata", "remove shards"])
def test_a_damaged_checkpoint_is_one_model_error_naming_the_run(tmp_path, damage):
    train.train(ToyTask(), dataclasses.replace(TOY, steps=10), tmp_path)
    step = tmp_path / runs.CHECKPOINT_DIR / "best" / "10"
    if damage == "truncate metadata":
        (step / "model" / "_METADATA").write_text('{"tree_metadata": {')
    for shard in (step / "model" / "d").iterdir():
        if damage == "overwrite shards":
            shard.write_bytes(b"garbage" * 40)
        elif damage == "remove shards":
            shard.unlink()
    with pytest.raises(ModelError, match=f"{tmp_path}: its best checkpoint \\(step 10\\) is unreadable or corrupt"):
        run_files.restore_model(tmp_path, ToyModel(nnx.Rngs(0)), "best")


def test_adam_with_l2_matches_pytorch_adam_and_adamw_is_decoupled():
    params = {"w": jnp.asarray([1.0, -3.0])}
    grads = {"w": jnp.asarray([0.5, 0.25])}
    config = TrainConfig(learning_rate=0.1, weight_decay=0.5)
    # torch.optim.Adam(weight_decay=wd): g <- g + wd * p, then Adam; the first step moves each weight by -lr*sign(g)
    tx = train.make_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.sign([0.5 + 0.5, 0.25 - 1.5]), atol=1e-6)
    # AdamW: Adam on g alone, then -lr * wd * p
    tx = train.make_optimizer(dataclasses.replace(config, decoupled_weight_decay=True))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(
        updates["w"], -0.1 * np.sign([0.5, 0.25]) - 0.1 * 0.5 * np.asarray([1.0, -3.0]), atol=1e-6
    )


def test_epoch_rows_visit_every_example_once_per_epoch():
    rows = np.concatenate([train.epoch_rows(3, step, 20, 4) for step in range(5)])
    assert sorted(rows) == list(range(20))
    assert not np.array_equal(rows, np.concatenate([train.epoch_rows(3, step, 20, 4) for step in range(5, 10)]))
    np.testing.assert_array_equal(train.epoch_rows(3, 7, 20, 4), train.epoch_rows(3, 7, 20, 4))
    assert len(train.epoch_rows(0, 0, 3, 8)) == 8  # fewer examples than a batch: repeated


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    config = dataclasses.replace(TOY, steps=10, compute_dtype="bfloat16")
    result = train.train(ToyTask(), config, tmp_path)
    full = train.train(ToyTask(), dataclasses.replace(config, compute_dtype="float32"), tmp_path / "f32")
    assert all(np.asarray(x).dtype == np.float32 for x in final_state(tmp_path))
    assert result.losses[1] == pytest.approx(full.losses[1], rel=0.05)
    assert result.losses[1] != full.losses[1]
    with pytest.raises(ConfigError, match="compute_dtype"):
        train.train(ToyTask(), dataclasses.replace(config, compute_dtype="float16"), tmp_path / "bad")


def test_batch_size_must_match_the_task_and_devices(tmp_path):
    with pytest.raises(ConfigError, match="rows"):
        train.train(ToyTask(batch_size=4), TOY, tmp_path / "a")
    with pytest.raises(ConfigError, match="processes"):
        train.host_rows(6, 0, 4)


def test_optax_state_is_restored_not_reinitialised(tmp_path):
    """Resuming must restore Adam's moments: restarting them would change the next update."""
    train.train(ToyTask(), dataclasses.replace(TOY, steps=5), tmp_path)
    checkpoints = run_files.Checkpoints(tmp_path, read_only=True)
    try:
        tx = train.make_optimizer(TOY)
        _, params, state = train.split_model(ToyModel(nnx.Rngs(0)))
        items, meta = checkpoints.restore(
            "latest", {"model": {"params": params, "state": state}, "optimizer": tx.init(params)}
        )
    finally:
        checkpoints.close()
    adam = items["optimizer"][1][0]
    assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == 5 and meta["step"] == 5
    assert float(jnp.abs(adam.mu["l1"]["kernel"]).sum()) > 0


def test_predictions_do_not_depend_on_how_inputs_are_chunked():
    model = ToyModel(nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(13, 8)).astype(np.float32)
    whole = train.model_predictor(model, 16)(x)
    chunked = train.model_predictor(model, 5)(x)  # 5 + 5 + a last chunk of 3 padded to 5
    assert chunked.shape == (13, 2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(whole, model(jnp.asarray(x)), rtol=1e-6, atol=1e-6)  # eval mode: BatchNorm averages


def test_cpu_inference_takes_large_inputs_one_at_a_time():
    expected = 1 if jax.default_backend() == "cpu" else 4
    assert train.inference_batch(4, 256 * 256) == expected
    assert train.inference_batch(4, 64 * 64) == 4


def test_cosine_decay_warms_up_then_falls_to_zero_at_the_last_step():
    rate = train.learning_rate(TrainConfig(learning_rate=1e-3, warmup_steps=10, decay="cosine"), total=110)
    values = np.array([float(rate(s)) for s in range(111)])
    assert values[0] == 0 and values[10] == pytest.approx(1e-3) and values[110] == pytest.approx(0, abs=1e-12)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)
    assert values[60] == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="decay"):
        train.learning_rate(TrainConfig(decay="step"))


def test_weight_average_is_validated_kept_as_best_and_resumed_exactly(tmp_path):
    config = dataclasses.replace(TOY, average_decay=0.9, decay="cosine")
    whole = train.train(ToyTask(), config, tmp_path / "whole")
    kill_at_27(config, tmp_path / "split")
    resumed = train.train(ToyTask(), config, tmp_path / "split", resume=True)
    for kind in ("latest", "best"):
        for a, b in zip(final_state(tmp_path / "whole", kind), final_state(tmp_path / "split", kind), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (resumed.best_step, resumed.best_mae) == (whole.best_step, whole.best_mae)
    task = ToyTask()
    best = run_files.restore_model(tmp_path / "whole", ToyModel(nnx.Rngs(5)), "best")
    found = np.abs(np.asarray(best(task.x[task.n :])) - task.y[task.n :]).mean()
    assert found == pytest.approx(whole.best_mae, rel=1e-5)  # the best checkpoint holds the validated average
    raw = final_state(tmp_path / "whole", "latest")
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(raw, final_state(tmp_path / "whole", "best"), strict=True)
    )
