"""Fitting one fixed batch with the training engine's own step: the check that a network can learn at all
(a network that cannot fit a few examples has a bug: wrong gradients, a frozen layer, statistics that differ
between training and evaluation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class FixedBatchTask:
    """One fixed batch, MSE: what the engine's train step needs to fit a batch again and again."""

    def __init__(self, model_config, batch):
        self.model_config, self.batch, self.examples_per_epoch = model_config, batch, len(batch["inputs"])

    def make_model(self, rngs):
        from sscjax.models import build_model

        return build_model(self.model_config, rngs)

    def loss(self, model, batch):
        return jnp.mean((model(batch["inputs"]) - batch["targets"]) ** 2)

    def predict(self, model, inputs):
        return model(inputs)


def fit_fixed_batch(model_config, batch, steps: int, learning_rate: float):
    """Train on one batch for `steps` with the engine's step (Adam + L2 1e-4): (first loss, last loss in training
    mode, MSE in evaluation mode at the end, the last step's per-layer gradient norms)."""
    from sscjax import train
    from sscjax.configs import TrainConfig

    task = FixedBatchTask(model_config, batch)
    config = TrainConfig(steps=steps, batch_size=len(batch["inputs"]), learning_rate=learning_rate)
    mesh = train.data_mesh()
    model_def, params, state, tx, opt_state = train.init_training(task, config, mesh)
    step = train.make_train_step(task, model_def, tx)
    sharded = train.shard_batch(batch, mesh)
    losses = []
    for i in range(steps):
        params, opt_state, state, out = step(params, opt_state, state, sharded, jax.random.key(i))
        losses.append(float(out["loss"]))
    predict = train.make_predict_step(task.predict, model_def, mesh)
    eval_mse = float(jnp.mean((predict(params, state, sharded["inputs"]) - sharded["targets"]) ** 2))
    return losses[0], losses[-1], eval_mse, jax.tree.map(float, out["layer_grad_norms"])
