"""Set-ups that several test files share (imported by name: pytest puts tests/ on sys.path)."""

import jax
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Cheaper XLA compilations for tiny models (restored afterwards); a module imports it to use it."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def hyperplane_problems(seed: int, d: int, n_zero: int, noise: float):
    """8 projections onto {z : w.z = b} within the box [0, 1]^d: t ~ U[0, 1] [8, d], w ~ N(0, 1)
    [8, d] with row 0's first ``n_zero`` weights 0, b = w.t + noise * N(0, 1) [8], and row 1's
    hyperplane out of the box's reach (b = w.t + 100). Returns float64 (t, w, b)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (8, d))
    w = rng.normal(size=(8, d))
    w[0, :n_zero] = 0.0
    b = (w * t).sum(1) + rng.normal(size=8) * noise
    b[1] = (w[1] * t[1]).sum() + 100.0  # unreachable inside the box
    return t, w, b


def table6_first_step(row: str, **data):
    """The first training step of ``configs/ascl_table6.py:row=<row>,smoke`` on digits (all
    examples, crop padding 1, no flip; ``data`` sets further ``c.data`` fields). Returns (the step's
    metrics, the model's train-mode outputs on both views stacked [2B, ...] (view 0 first), the
    batch)."""
    import jax.numpy as jnp

    from ascl_jax import config, train
    from ascl_jax import data as data_lib
    from ascl_jax.train import steps as train_steps
    from ascl_jax.train.optim import make_optimizer
    from ascl_jax.train.state import create_train_state

    c = config.load("ascl_table6", f"row={row},smoke")
    c.data.name, c.model.normalization = "digits", "digits"
    c.data.num_train = c.data.num_test = -1
    c.data.crop_padding, c.data.flip = 1, False
    c.data.update(data)
    model, info = train.build_model(c)
    tx, _ = make_optimizer(c.optim, 10, 100)
    state = create_train_state(model, tx, jax.random.key(0), info["image_shape"])
    batch = next(data_lib.make_train_iterator(c.data, seed=0))
    _, m = jax.jit(train_steps.make_train_step(c, model, jit=False))(state, batch)
    x = jnp.concatenate([batch["image"][:, 0], batch["image"][:, 1]])
    out, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return m, out, batch
