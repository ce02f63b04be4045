"""Pure train steps, one per method: `train_step(state, batch) -> (state, metrics)` under `jax.jit`.

Batch: {'image': f32 [b, H, W, C] (or [b, 2, H, W, C] with two views), 'label': i32 [b], ...},
images in [0, 1]. Every step draws its key as fold_in(state.rng, state.step), runs its attack
inside the same compiled computation, and returns scalar metrics (no host sync inside a step).

Methods (`config.method`):
- nat:    CE on clean images.
- adv:    Madry PGD-AT, nat_ce_weight*CE(x) + adv_ce_weight*CE(x_adv) (adversarial only: nat 0).
- trades: CE(x) + beta * KL_sum(p(x) || p(x_adv)) / b, attack maximises the summed KL from
          x + 0.001 N(0, 1) (SPEC 3.6). Also used by `trades_finetune`.
- ascl:   L = nat_ce*CE(x) + adv_ce*CE(x_adv) + scl*L_SCL + vat*L_VAT (ASCL Eq. 6, SPEC 1.1);
          two_views=True is the authors' ascl_pgd_2trans variant (4b contrastive rows).
- ascl_trades: ASCL with the TRADES objective (authors' `ascl.py::ascl_trades`, SPEC 1.1 item 9):
          L = scl*L_SCL + vat*L_VAT + nat_ce*CE(x) + trades_beta * sum_i KL(p(x_i) || p(x_adv,i)) / b,
          the attack maximising sum_i KL(p(x_i) || p(x_i + delta_i)) (`config.attack`: the
          authors' uniform start, train-mode BN); loss.trades_reduction='mean' divides the KL by
          b*C (the authors' ascl_trades_2trans, with two_views=True).
- acl_pretrain: NT-Xent pre-training with S2S / A2A / A2S / DS (ACL §2.2, Algorithm 1, SPEC 3.4).
- supcon: SupCon on two standard augmentations + CE, no adversary (ASCL Table 6 "orgSCL").
- linear_eval: a frozen encoder (BN in eval mode), the classifier trained on clean (standard) or
          PGD (adversarial) examples (ACL Table 5).
Terms whose weight is 0 are not computed (as the authors' `add_loss`).

Padded batches: the last batch of an epoch (`data.drop_remainder=False`) may carry 'mask', bool
[b], True on its real rows (`train.setup.train_batches` pads it to a multiple of the device
count). Padded rows are then kept out of the attack objective, every loss and metric (masked
means) and every train-mode BN statistic (`model.apply(..., mask=...)`, also inside a train-mode
attack). A batch without 'mask' takes exactly the unmasked code below (same arithmetic, same
bits); the padded shape is traced separately anyway.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ascl_jax import attacks, losses


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats}


def forward(model, params, batch_stats, x, *, bn="clean", train=True, mask=None):
    """One forward pass. Train mode: batch statistics (over the rows of `mask` [B] when given),
    returns the updated running statistics."""
    kw = {} if mask is None else {"mask": mask}
    if train:
        out, upd = model.apply(
            _variables(params, batch_stats), x, train=True, bn=bn, mutable=["batch_stats"], **kw
        )
        return out, upd.get("batch_stats", batch_stats)
    return model.apply(_variables(params, batch_stats), x, train=False, bn=bn), batch_stats


def _accuracy(logits, labels, valid=None):
    correct = jnp.argmax(logits, -1) == labels
    if valid is None:
        return jnp.mean(correct)
    return jnp.sum(correct & valid) / jnp.maximum(jnp.sum(valid), 1)


def _tile(mask, k):
    """The row mask of k stacked copies of a batch ([b] -> [k*b]); None stays None."""
    return None if mask is None else jnp.tile(mask, k)


def _masked_objective(objective, valid):
    """The attack objective with padded rows' values set to 0 (so they add nothing to the sum
    whose gradient the attack ascends); None: the objective itself."""
    if valid is None:
        return objective
    return lambda x: jnp.where(valid, objective(x), 0.0)


def _pgd(cfg_attack, objective, x, key, **overrides):
    kw = dict(
        eps=cfg_attack.eps,
        step_size=cfg_attack.step_size,
        num_steps=cfg_attack.num_steps,
        random_start=cfg_attack.random_start,
        init=cfg_attack.init,
        clip_start=cfg_attack.clip_start,
    )
    kw.update(overrides)
    return attacks.pgd_linf(objective, x, key, **kw)


def _attack_logits_fn(model, state, cfg_attack, bn="clean", mask=None):
    return attacks.model_forward(
        model,
        _variables(state.params, state.batch_stats),
        bn=bn,
        bn_mode=cfg_attack.bn_mode,
        output="logits",
        mask=mask,
    )


def ce_attack(model, state, cfg_attack, x, y, key, mask=None):
    """The CE training attack of adv, ascl and semi_student: PGD (`config.attack`: eps, step size,
    steps, start, BN mode) maximising CE(logits(x_adv), y) at the current parameters. mask:
    optional bool [B] valid rows (padded rows out of the objective and the BN statistics)."""
    objective = attacks.ce_objective(_attack_logits_fn(model, state, cfg_attack, mask=mask), y)
    return _pgd(cfg_attack, _masked_objective(objective, mask), x, key)


def kl_attack(model, state, cfg_attack, x, key, mask=None):
    """The TRADES training attack of trades and ascl_trades: PGD (`config.attack`) maximising
    sum_i KL(p(x_i) || p(x_adv,i)), p = softmax of the logits at the current parameters (the
    clean logits held constant, BN in `cfg_attack.bn_mode`). mask: as in `ce_attack`."""
    logits_fn = _attack_logits_fn(model, state, cfg_attack, mask=mask)
    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    objective = _masked_objective(attacks.kl_objective(logits_fn, clean_logits), mask)
    return _pgd(cfg_attack, objective, x, key)


def _split_views(image):
    """[b, 2, H, W, C] -> two [b, H, W, C] views."""
    return image[:, 0], image[:, 1]


def _apply_update(state, grads, batch_stats, loss, metrics):
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = dict(metrics, loss=loss, grad_norm=_tree_norm(grads), param_norm=_tree_norm(state.params))
    return new_state, metrics


def _tree_norm(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves)) if leaves else jnp.zeros(())


# --------------------------------------------------------------------------------------------
# Supervised methods


def nat_step(state, batch, *, model, config):
    x, y, v = batch["image"], batch["label"], batch.get("mask")

    def loss_fn(params):
        out, bs = forward(model, params, state.batch_stats, x, mask=v)
        loss = losses.cross_entropy(out["logits"], y, valid=v)
        return loss, (bs, {"ce_nat": loss, "acc_nat": _accuracy(out["logits"], y, v)})

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


def adv_step(state, batch, *, model, config):
    x, y, v = batch["image"], batch["label"], batch.get("mask")
    lw = config.loss
    x_adv = ce_attack(model, state, config.attack, x, y, state.step_key(), mask=v)

    def loss_fn(params):
        bs, loss, m = state.batch_stats, 0.0, {}
        if lw.nat_ce_weight:
            out, bs = forward(model, params, bs, x, mask=v)
            m["ce_nat"] = losses.cross_entropy(out["logits"], y, valid=v)
            m["acc_nat"] = _accuracy(out["logits"], y, v)
            loss += lw.nat_ce_weight * m["ce_nat"]
        out_a, bs = forward(model, params, bs, x_adv, mask=v)
        m["ce_adv"] = losses.cross_entropy(out_a["logits"], y, valid=v)
        m["acc_adv"] = _accuracy(out_a["logits"], y, v)
        loss += lw.adv_ce_weight * m["ce_adv"]
        return loss, (bs, m)

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


def trades_step(state, batch, *, model, config):
    x, y, v = batch["image"], batch["label"], batch.get("mask")
    x_adv = kl_attack(model, state, config.attack, x, state.step_key(), mask=v)

    def loss_fn(params):
        out, bs = forward(model, params, state.batch_stats, x, mask=v)
        out_a, bs = forward(model, params, bs, x_adv, mask=v)
        ce = losses.cross_entropy(out["logits"], y, valid=v)
        kl = losses.trades_kl(out["logits"], out_a["logits"], valid=v)
        loss = ce + config.loss.trades_beta * kl
        return loss, (
            bs,
            {
                "ce_nat": ce,
                "trades_kl": kl,
                "acc_nat": _accuracy(out["logits"], y, v),
                "acc_adv": _accuracy(out_a["logits"], y, v),
            },
        )

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


def ascl_step(state, batch, *, model, config):
    """ASCL (Eq. 6): PGD-CE attack, two train-mode forwards, masked SCL on [z_nat; z_adv] + VAT.
    Method 'ascl_trades': the KL attack (`kl_attack`) and, in place of adv_ce*CE(x_adv), the
    TRADES term trades_beta * KL(p_nat || p_adv) reduced by loss.trades_reduction (module doc);
    metric 'trades_kl'.

    Then `config.loss.bn_extra_updates` = k train-mode forwards at the updated parameters whose
    only effect is the BN running-statistics update, as the accuracy logging after each optimizer
    step of the authors' loop (`mytrain.py`: two forwards; SPEC does not list their inputs).
    Reading used here: forward 1 sees the natural batch the loss saw (the 2b images of both views
    with two_views), forward 2 the adversarial batch of this step's attack (made at the pre-update
    parameters), in that order, through the 'clean' BN; padded rows are masked as everywhere.
    k = 0 leaves the running statistics as the loss forwards set them.
    """
    lw = config.loss
    y, v = batch["label"], batch.get("mask")
    if lw.two_views:  # ascl_pgd_2trans: 2b natural images [view 0; view 1], labels [y; y]
        v0, v1 = _split_views(batch["image"])
        x, y = jnp.concatenate([v0, v1]), jnp.concatenate([y, y])
        b = batch["label"].shape[0]
        instance_ids = jnp.tile(jnp.arange(b), 4)
        v = _tile(v, 2)
    else:
        x, instance_ids = batch["image"], None
    trades = config.method == "ascl_trades"
    if trades:
        x_adv = kl_attack(model, state, config.attack, x, state.step_key(), mask=v)
    else:
        x_adv = ce_attack(model, state, config.attack, x, y, state.step_key(), mask=v)

    def loss_fn(params):
        out, bs = forward(model, params, state.batch_stats, x, mask=v)
        out_a, bs = forward(model, params, bs, x_adv, mask=v)
        ln, la = out["logits"], out_a["logits"]
        m = {"acc_nat": _accuracy(ln, y, v), "acc_adv": _accuracy(la, y, v)}
        loss = 0.0
        if trades:
            red = lw.get("trades_reduction", "batchmean")
            m["trades_kl"] = losses.kl_divergence(ln, la, reduction=red, valid=v)
            loss += lw.trades_beta * m["trades_kl"]
        else:
            m["ce_adv"] = losses.cross_entropy(la, y, valid=v)
            loss += lw.adv_ce_weight * m["ce_adv"]
        if lw.nat_ce_weight:
            m["ce_nat"] = losses.cross_entropy(ln, y, valid=v)
            loss += lw.nat_ce_weight * m["ce_nat"]
        if lw.vat_weight:
            m["vat"] = losses.kl_divergence(ln, la, reduction=lw.vat_reduction, valid=v)
            loss += lw.vat_weight * m["vat"]
        # The selection counts are computed (cheaply) even when the SCL weight is 0 (Fig. 4).
        scl, aux = losses.ascl_loss(
            out[lw.feature],
            out_a[lw.feature],
            y,
            ln,
            la,
            strategy=lw.strategy,
            similarity=lw.similarity,
            temperature=lw.temperature,
            normalize=lw.normalize,
            always_pull_own_view=lw.always_pull_own_view,
            instance_ids=instance_ids,
            valid=v,
        )
        for k in ("num_positives_nat", "num_positives_adv", "num_negatives_nat", "num_negatives_adv"):
            m[k] = aux[k]
        if lw.scl_weight:
            m["scl"] = scl
            loss += lw.scl_weight * scl
        return loss, (bs, m)

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state, m = _apply_update(state, grads, bs, loss, m)
    return extra_bn_updates(model, new_state, (x, x_adv)[: lw.get("bn_extra_updates", 0)], mask=v), m


def extra_bn_updates(model, state, inputs, *, mask=None):
    """`state` with its BN running statistics updated by one train-mode forward per batch of
    `inputs` (in order, 'clean' BN, no gradient; `mask` [B] as in the steps). No inputs: `state`."""
    if not inputs:
        return state
    bs = state.batch_stats
    for x in inputs:
        _, bs = forward(model, state.params, bs, jax.lax.stop_gradient(x), mask=mask)
    return state.replace(batch_stats=bs)


def supcon_step(state, batch, *, model, config):
    """ASCL Table 6 "orgSCL": the original SupCon (SPEC §2) on two standard augmentations, no
    adversary: nat_ce_weight * CE over both views + scl_weight * SupCon(f), f = the L2-normalised
    `loss.feature` (`loss.supcon_normalize`, default) or the raw one (the authors' scl_nat_2trans)."""
    lw = config.loss
    v0, v1 = _split_views(batch["image"])
    x, y = jnp.concatenate([v0, v1]), jnp.concatenate([batch["label"], batch["label"]])
    valid = batch.get("mask")
    v = _tile(valid, 2)

    def loss_fn(params):
        out, bs = forward(model, params, state.batch_stats, x, mask=v)
        f = losses.l2_normalize(out[lw.feature]) if lw.get("supcon_normalize", True) else out[lw.feature]
        b = v0.shape[0]
        scl = losses.supcon_loss(
            jnp.stack([f[:b], f[b:]], axis=1),
            batch["label"],
            temperature=lw.temperature,
            base_temperature=lw.temperature,
            valid=valid,
        )
        ce = losses.cross_entropy(out["logits"], y, valid=v)
        loss = lw.nat_ce_weight * ce + lw.scl_weight * scl
        return loss, (bs, {"ce_nat": ce, "scl": scl, "acc_nat": _accuracy(out["logits"], y, v)})

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


# --------------------------------------------------------------------------------------------
# ACL pre-training (SPEC 3.3, 3.4)


def acl_pretrain_step(state, batch, *, model, config):
    lw, ca = config.loss, config.attack
    t = lw.acl_temperature
    v1, v2 = _split_views(batch["image"])
    both = jnp.concatenate([v1, v2])
    variant = lw.acl_variant
    adv_bn = "adv" if config.model.bn == "dual" else "clean"
    valid = batch.get("mask")  # [N] per image (both views)
    v = _tile(valid, 2)  # rows of `both`
    variables = _variables(state.params, state.batch_stats)
    key = state.step_key()
    if variant in ("a2a", "ds"):
        proj_adv = attacks.model_forward(
            model, variables, bn=adv_bn, bn_mode=ca.bn_mode, output="proj", mask=v
        )
        x_adv = _pgd(ca, attacks.nt_xent_objective(proj_adv, temperature=t, valid=valid), both, key)
    elif variant == "a2s":
        proj_adv = attacks.model_forward(
            model, variables, bn=adv_bn, bn_mode=ca.bn_mode, output="proj", mask=valid
        )
        clean_fn = attacks.model_forward(
            model, variables, bn="clean", bn_mode=ca.bn_mode, output="proj", mask=valid
        )
        objective = attacks.nt_xent_objective(proj_adv, other_proj=clean_fn(v2), temperature=t, valid=valid)
        x_adv = _pgd(ca, objective, v1, key)

    def loss_fn(params):
        bs, m = state.batch_stats, {}
        if variant == "s2s":
            out, bs = forward(model, params, bs, both, bn="clean", mask=v)
            n = v1.shape[0]
            loss = losses.nt_xent_loss(out["proj"][:n], out["proj"][n:], temperature=t, valid=valid)
            m["nt_xent_std"] = loss
        elif variant == "a2a":
            out, bs = forward(model, params, bs, x_adv, bn=adv_bn, mask=v)
            n = v1.shape[0]
            loss = losses.nt_xent_loss(out["proj"][:n], out["proj"][n:], temperature=t, valid=valid)
            m["nt_xent_adv"] = loss
        elif variant == "a2s":
            out_a, bs = forward(model, params, bs, x_adv, bn=adv_bn, mask=valid)
            out_c, bs = forward(model, params, bs, v2, bn="clean", mask=valid)
            loss = losses.nt_xent_loss(out_a["proj"], out_c["proj"], temperature=t, valid=valid)
            m["nt_xent_a2s"] = loss
        else:  # ds
            n = v1.shape[0]
            out, bs = forward(model, params, bs, both, bn="clean", mask=v)
            out_a, bs = forward(model, params, bs, x_adv, bn=adv_bn, mask=v)
            l_std = losses.nt_xent_loss(out["proj"][:n], out["proj"][n:], temperature=t, valid=valid)
            l_adv = losses.nt_xent_loss(out_a["proj"][:n], out_a["proj"][n:], temperature=t, valid=valid)
            loss = l_std + lw.acl_alpha * l_adv
            if lw.acl_average:
                loss = loss / (1.0 + lw.acl_alpha)
            m.update(nt_xent_std=l_std, nt_xent_adv=l_adv)
        return loss, (bs, m)

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


# --------------------------------------------------------------------------------------------
# Linear evaluation of a frozen encoder (ACL Table 5)

CLASSIFIER = "classifier"


def linear_eval_step(state, batch, *, model, config):
    """Only the classifier's parameters train (the optimizer masks the rest, see
    `trainable_mask`); the encoder runs with BN in eval mode, so its statistics stay frozen."""
    x, y, v = batch["image"], batch["label"], batch.get("mask")
    if config.init.linear_mode == "adversarial":
        x = _pgd(
            config.attack,
            _masked_objective(
                attacks.ce_objective(
                    attacks.model_forward(
                        model,
                        _variables(state.params, state.batch_stats),
                        bn="clean",
                        bn_mode="eval",
                        output="logits",
                    ),
                    y,
                ),
                v,
            ),
            x,
            state.step_key(),
        )

    def loss_fn(params):
        out, _ = forward(model, params, state.batch_stats, x, train=False)
        loss = losses.cross_entropy(out["logits"], y, valid=v)
        return loss, (state.batch_stats, {"ce": loss, "acc": _accuracy(out["logits"], y, v)})

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


def trainable_mask(params):
    """True on the classifier's parameters, False elsewhere (linear evaluation)."""
    return {k: jax.tree.map(lambda _, keep=(k == CLASSIFIER): keep, v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Semi-supervised ACL, step iii (ACL §2.2.1, Eq. 3; SPEC 3.7)


def semi_student_step(state, batch, *, model, config):
    """Adversarial training over labelled + pseudo-labelled rows (ACL Eq. 3).

    batch: 'image' [b, ...], 'label' [b] (true labels for labelled rows, argmax pseudo-labels for
    the others), 'teacher_logits' [b, C] (soft pseudo-labels of step ii), 'labelled' bool [b].
    The attack is CE-PGD against 'label' (SPEC 3.7)."""
    x, y, v = batch["image"], batch["label"], batch.get("mask")
    s = config.semi
    x_adv = ce_attack(model, state, config.attack, x, y, state.step_key(), mask=v)

    def loss_fn(params):
        out, bs = forward(model, params, state.batch_stats, x, mask=v)
        out_a, bs = forward(model, params, bs, x_adv, mask=v)
        loss, aux = losses.acl_semi_supervised_loss(
            out["logits"],
            out_a["logits"],
            y,
            batch["teacher_logits"],
            batch["labelled"],
            alpha=s.alpha,
            temperature=s.temperature,
            beta=s.beta,
            valid=v,
        )
        aux = dict(aux, acc_nat=_accuracy(out["logits"], y, v), acc_adv=_accuracy(out_a["logits"], y, v))
        return loss, (bs, aux)

    (loss, (bs, m)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, bs, loss, m)


STEPS = {
    "nat": nat_step,
    "adv": adv_step,
    "trades": trades_step,
    "trades_finetune": trades_step,
    "ascl": ascl_step,
    "ascl_trades": ascl_step,
    "acl_pretrain": acl_pretrain_step,
    "linear_eval": linear_eval_step,
    "semi_student": semi_student_step,
    "supcon": supcon_step,
}


def make_train_step(config, model, *, jit=True, state_sharding=None, data_sharding=None):
    """The pure step for `config.method`, bound to the model and config (static), jitted with the
    state replicated and the batch sharded over 'data', the state donated."""
    step = functools.partial(STEPS[config.method], model=model, config=config)
    if not jit:
        return step
    kw = {}
    if state_sharding is not None:
        kw = dict(
            in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, state_sharding)
        )
    return jax.jit(step, donate_argnums=(0,), **kw)
