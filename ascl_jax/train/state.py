"""The train state (params, optimizer state, BN statistics of both branches of a dual BN, a key)
and the one model initialisation of the package."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state


class TrainState(train_state.TrainState):
    """`flax.training.train_state.TrainState` plus every mutable collection.

    batch_stats: the 'batch_stats' collection (for dual BN it holds `.../clean` and `.../adv`).
    rng: raw uint32 key data (checkpoint-friendly); the step key is fold_in(rng, step).
    """

    batch_stats: Any
    rng: jax.Array

    def step_key(self):
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def init_variables(model, key, image_shape) -> dict:
    """`model.init` on a zero f32 batch [2, *image_shape] in eval mode: {'params', 'batch_stats'?}.
    Under `jax.eval_shape` it gives the variables' shapes without computing them."""
    return model.init(key, jnp.zeros((2, *image_shape), jnp.float32), train=False)


def create_train_state(model, tx, key, image_shape, variables=None) -> TrainState:
    """Initialises the model (or takes `variables`, e.g. from a pre-trained run) and the optimizer."""
    init_key, state_key = jax.random.split(key)
    if variables is None:
        variables = init_variables(model, init_key, image_shape)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(state_key),
    )
