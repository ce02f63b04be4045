"""Optimisers and learning-rate schedules of the papers, built with optax from `config.optim`.

- SGD with momentum and (PyTorch-style, coupled) weight decay, step decays (ASCL ResNet-18/WRN, TRADES).
- Adam with step decays (ASCL ResNet-20: 1e-3/1e-4/1e-5/1e-6 at epochs 0/80/120/160; CNN: Adam 1e-3).
- LARS with linear warm-up and cosine decay (ACL pre-training, SPEC 3.5), applied to all parameters:
  local_lr = eta*||w|| / (||g|| + wd*||w||) (1 when either norm < 1e-15),
  buf = momentum*buf + lr*local_lr*(g + wd*w), w -= buf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ascl_jax.config import ConfigError


def learning_rate_schedule(optim_cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Step-indexed schedule. Step decays are given in epochs (`decay_epochs`, `decay_factors`:
    the lr is multiplied by factor k from 0-indexed epoch decay_epochs[k] on, i.e. from step
    decay_epochs[k] * steps_per_epoch; factors are absolute, e.g. (0.1, 0.01, 0.001)). ASCL's
    `adjust_learning_rate(epoch)` (0-indexed, SPEC 1.8) is this directly; a PyTorch MultiStepLR
    stepped at the start of 1-indexed epochs (ACL, SPEC 3.6) with milestone m is decay epoch m - 1
    (`config.multistep_epochs`)."""
    lr = float(optim_cfg.learning_rate)
    if optim_cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim_cfg.schedule == "piecewise":
        bounds = jnp.asarray([int(e * steps_per_epoch) for e in optim_cfg.decay_epochs], jnp.int32)
        values = jnp.asarray([lr] + [lr * f for f in optim_cfg.decay_factors], jnp.float32)

        def piecewise(count):
            return values[jnp.sum(count >= bounds)] if len(optim_cfg.decay_epochs) else values[0]

        return piecewise
    if optim_cfg.schedule == "warmup_cosine":
        warm = max(int(optim_cfg.warmup_epochs * steps_per_epoch), 1)
        final = float(optim_cfg.final_lr)
        span = max(total_steps - warm, 1)

        def warmup_cosine(count):
            # The reference steps its LambdaLR before each update: update k uses lambda(k + 1).
            s = count + 1
            cos = final + (lr - final) * 0.5 * (1 + jnp.cos(jnp.pi * (s - warm) / span))
            return jnp.where(s < warm, lr * s / warm, cos)

        return warmup_cosine
    raise ConfigError(f"config.optim.schedule={optim_cfg.schedule!r} is not allowed")


def scale_by_lars_trust_ratio(weight_decay: float, eta: float) -> optax.GradientTransformation:
    """g -> local_lr * (g + wd*w), with the LARS trust ratio of ACL's optimizer/lars.py."""

    def update(updates, state, params):
        def one(g, w):
            wn, gn = jnp.linalg.norm(w), jnp.linalg.norm(g)
            local = eta * wn / (gn + weight_decay * wn)
            local = jnp.where((wn < 1e-15) | (gn < 1e-15), 1.0, local)
            return local * (g + weight_decay * w)

        return jax.tree.map(one, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim_cfg, steps_per_epoch: int, total_steps: int):
    """Returns (optax transformation, schedule)."""
    schedule = learning_rate_schedule(optim_cfg, steps_per_epoch, total_steps)
    wd = float(optim_cfg.weight_decay)
    if optim_cfg.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(),
            optax.sgd(schedule, momentum=optim_cfg.momentum or None, nesterov=bool(optim_cfg.nesterov)),
        )
    elif optim_cfg.name == "adam":
        tx = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(), optax.adam(schedule))
    elif optim_cfg.name == "lars":
        tx = optax.chain(
            scale_by_lars_trust_ratio(wd, optim_cfg.lars_eta),
            optax.scale_by_learning_rate(schedule),
            optax.trace(decay=optim_cfg.momentum),
        )
    else:
        raise ConfigError(
            f"config.optim.name={optim_cfg.name!r} is not allowed; choose one of ['sgd', 'adam', 'lars']"
        )
    return tx, schedule
