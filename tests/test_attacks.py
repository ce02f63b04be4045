"""Tests of ascl_jax.attacks: constraints, monotonicity, loop forms, strength on a trained model,
per-example independence, sharding, mPGD worst case, objectives, model adapter, bad input.

Tiny models only (the suite stays well under a minute on 2 CPU cores)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ascl_jax import attacks, losses

EPS, STEP = 8 / 255, 2 / 255


def rkey(n: int):
    """RBG key: compiles ~5x faster than threefry on XLA:CPU; the attacks accept any key type.
    (The sharding test keeps threefry, whose streams do not depend on the sharding.)"""
    return jax.random.key(n, impl="rbg")


class TinyNet(nn.Module):
    """Conv + BN + conv (strided) -> z; proj and logits heads. Follows the model call contract."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False, bn: str = "clean"):
        del bn  # single BN
        h = nn.Conv(6, (3, 3))(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
        h = nn.relu(nn.Conv(8, (3, 3), strides=2)(h))
        z = h.mean(axis=(1, 2))
        return {"z": z, "proj": nn.Dense(6)(z), "logits": nn.Dense(self.num_classes)(z)}


def _images(seed, shape=(16, 8, 8, 1)):
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))
    # include exact box corners so the [0, 1] projection is exercised
    return x.at[0].set(0.0).at[1].set(1.0)


@pytest.fixture(scope="module")
def tiny():
    model = TinyNet()
    x = _images(0)

    @jax.jit
    def init(key, x):
        variables = model.init(key, x, train=False)
        # non-trivial running statistics
        _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return {"params": variables["params"], "batch_stats": upd["batch_stats"]}

    variables = init(rkey(1), x)
    y = jnp.asarray(np.random.default_rng(2).integers(0, 10, x.shape[0]), jnp.int32)
    return model, variables, x, y


def _logits_fn(tiny, bn_mode="eval"):
    model, variables, _, _ = tiny
    return attacks.model_forward(model, variables, bn_mode=bn_mode)


def _in_ball(xa, x, eps):
    xa, x = np.asarray(xa), np.asarray(x)
    assert np.all(np.abs(xa - x) <= eps + 1e-6)
    assert xa.min() >= 0.0 and xa.max() <= 1.0


# ----------------------------------------------------------------------------------------------
# Constraints


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(init="normal", clip_start=False),
        dict(clip_start=False),
        dict(random_start=False),
        dict(num_steps=0),
    ],
)
def test_pgd_stays_in_eps_ball_and_box(tiny, kw):
    _, _, x, y = tiny
    obj = attacks.ce_objective(_logits_fn(tiny), y)
    kw = dict(dict(eps=EPS, step_size=STEP, num_steps=3), **kw)
    xa = jax.jit(lambda x, k: attacks.pgd_linf(obj, x, k, **kw))(x, rkey(3))
    _in_ball(xa, x, EPS)
    if kw["num_steps"]:
        assert np.abs(np.asarray(xa - x)).max() > 0.5 * EPS


def test_fgsm_and_mpgd_stay_in_eps_ball_and_box(tiny):
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny)
    x_fgsm, x_mpgd = jax.jit(
        lambda x, k: (
            attacks.fgsm(attacks.ce_objective(logits_fn, y), x, eps=EPS),
            attacks.multi_targeted_pgd(
                logits_fn, x, y, k, num_classes=10, eps=EPS, step_size=STEP, num_steps=2, num_targets=3
            ),
        )
    )(x, rkey(4))
    _in_ball(x_fgsm, x, EPS)
    _in_ball(x_mpgd, x, EPS)


def test_eps_zero_returns_input(tiny):
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny)
    obj = attacks.ce_objective(logits_fn, y)
    for xa in (
        attacks.pgd_linf(obj, x, rkey(0), eps=0.0, step_size=STEP, num_steps=3),
        attacks.pgd_linf(
            obj, x, rkey(0), eps=0, step_size=STEP, num_steps=3, init="normal", clip_start=False
        ),
        attacks.fgsm(obj, x, eps=0.0),
        attacks.multi_targeted_pgd(
            logits_fn, x, y, rkey(0), num_classes=10, eps=0.0, step_size=STEP, num_steps=2
        ),
    ):
        np.testing.assert_array_equal(np.asarray(xa), np.asarray(x))
    # traced eps = 0 also gives x (every step projects back onto the zero-radius ball)
    f = jax.jit(lambda x, e: attacks.pgd_linf(obj, x, rkey(0), eps=e, step_size=STEP, num_steps=2))
    np.testing.assert_array_equal(np.asarray(f(x, 0.0)), np.asarray(x))


# ----------------------------------------------------------------------------------------------
# More steps never lower the objective


def test_more_steps_never_lower_a_linear_objective():
    """Margin of a linear classifier is linear in x: sign steps move every pixel monotonically
    towards its box corner, so the objective is non-decreasing in the number of steps."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.uniform(size=(8, 6, 6, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(36, 10)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(10,)), jnp.float32)
    y = jnp.arange(8) % 10
    logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w + b
    obj = attacks.margin_objective(logits_fn, y)

    @jax.jit
    def values(x, key):
        return [obj(attacks.pgd_linf(obj, x, key, eps=0.1, step_size=0.03, num_steps=k)) for k in range(0, 7)]

    vals = [np.asarray(v) for v in values(x, rkey(6))]
    for lo, hi in zip(vals[:-1], vals[1:]):
        assert np.all(hi >= lo - 1e-5), (lo, hi)
    assert np.all(vals[-1] > vals[0] + 1e-3)


def test_more_steps_raise_the_objective_of_a_conv_net(tiny):
    """Weaker check on a non-concave objective: on average more steps do not lower it."""
    _, _, x, y = tiny
    obj = attacks.ce_objective(_logits_fn(tiny), y)
    means = jax.jit(
        lambda x, key: [
            jnp.mean(obj(attacks.pgd_linf(obj, x, key, eps=EPS, step_size=STEP / 2, num_steps=k)))
            for k in (0, 2, 6)
        ]
    )(x, rkey(7))
    means = [float(m) for m in means]
    assert means[0] < means[1] <= means[2] + 1e-4, means


# ----------------------------------------------------------------------------------------------
# Loop forms


def test_chunked_loop_equals_unrolled(tiny):
    _, _, x, y = tiny
    obj = attacks.ce_objective(_logits_fn(tiny), y)

    @jax.jit
    def run(x, key):
        kw = dict(eps=EPS, step_size=STEP, num_steps=7)
        ref = attacks.pgd_linf(obj, x, key, unroll=7, **kw)  # fully unrolled
        forms = [
            attacks.pgd_linf(obj, x, key, **kw),  # default (CPU: fori)
            attacks.pgd_linf(obj, x, key, unroll=1, **kw),  # fori over single steps
            attacks.pgd_linf(obj, x, key, unroll=3, **kw),  # 2 chunks of 3 + 1 step
            attacks.pgd_linf(obj, x, key, max_unroll=4, **kw),  # default chunk >= 7: unrolled
            attacks.pgd_linf(obj, x, key, unroll=1, canonicalize=False, **kw),
            attacks.pgd_linf(obj, x, key, canonicalize=False, **kw),
        ]
        return ref, forms

    assert attacks.resolve_unroll(7) == 7
    ref, forms = run(x, rkey(8))
    for i, xa in enumerate(forms):
        np.testing.assert_allclose(np.asarray(xa), np.asarray(ref), atol=1e-6, err_msg=str(i))


def test_canonicalize_convs_gives_hwio_kernels_and_same_values(tiny):
    """Every convolution of the canonicalised gradient takes an HWIO kernel (XLA:CPU's fast path
    inside loop bodies, see the attacks module docstring); values are unchanged."""
    import re

    model, variables, x, y = tiny
    grad = jax.grad(lambda z: jnp.sum(attacks.ce_objective(_logits_fn(tiny), y)(z)))
    canon = attacks.canonicalize_convs(grad)
    kernel_specs = lambda f: set(re.findall(r"x\[([0-9a-z, ]+)\]->", jax.jit(f).lower(x).as_text()))
    assert "0, 1, o, i" in kernel_specs(grad)  # JAX's input-gradient conv
    assert kernel_specs(canon) == {"0, 1, i, o"}
    ref = np.asarray(jax.jit(grad)(x))
    np.testing.assert_allclose(np.asarray(jax.jit(canon)(x)), ref, rtol=1e-5, atol=1e-7)
    # pytrees in and out, nested jit inlined
    f = jax.jit(lambda d: {"s": jnp.sum(d["a"]) * 2.0, "g": grad(d["a"])})
    out = jax.jit(attacks.canonicalize_convs(f))({"a": x})
    np.testing.assert_allclose(np.asarray(out["g"]), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(out["s"]), 2.0 * float(jnp.sum(x)), rtol=1e-6)


def test_default_loop_policy():
    """Unset unroll / max_unroll: single-step fori with the conv rewrite (CPU), else MAX_UNROLL."""
    assert attacks.pgd._policy_unroll(10, None, None, True) == 1
    assert attacks.pgd._policy_unroll(10, None, None, False) == 10
    assert attacks.pgd._policy_unroll(250, None, None, False) == attacks.DEFAULT_CHUNK
    assert attacks.pgd._policy_unroll(10, 4, None, True) == 4
    assert attacks.pgd._policy_unroll(10, None, 5, True) == attacks.DEFAULT_CHUNK
    assert attacks.pgd._policy_unroll(10, None, 20, True) == 10


def test_resolve_unroll_policy():
    assert attacks.resolve_unroll(10) == 10
    assert attacks.resolve_unroll(attacks.MAX_UNROLL) == attacks.MAX_UNROLL
    assert attacks.resolve_unroll(250) == attacks.DEFAULT_CHUNK
    assert attacks.resolve_unroll(250, unroll=25) == 25
    assert attacks.resolve_unroll(10, max_unroll=5) == attacks.DEFAULT_CHUNK
    with pytest.raises(ValueError, match="unroll"):
        attacks.resolve_unroll(10, unroll=0)


# ----------------------------------------------------------------------------------------------
# Strength on a trained model (sklearn digits)


class DigitsNet(nn.Module):
    """MLP on 8x8x1 digits (compiles in a fraction of a second; conv nets are covered above)."""

    @nn.compact
    def __call__(self, x, *, train=False, bn="clean"):
        z = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return {"z": z, "proj": z, "logits": nn.Dense(10)(z)}


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1] in [0, 1]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    xtr, ytr = jnp.asarray(x[:1500]), jnp.asarray(y[:1500])
    model = DigitsNet()
    params = jax.jit(model.init)(rkey(0), xtr[:2])["params"]
    tx = optax.adam(3e-3)

    def loss(p, xb, yb):
        logits = model.apply({"params": p}, xb)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def train(params):
        def body(i, carry):
            p, s = carry
            idx = jax.random.randint(jax.random.fold_in(rkey(1), i), (64,), 0, 1500)
            g = jax.grad(loss)(p, xtr[idx], ytr[idx])
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, 400, body, (params, tx.init(params)))[0]

    params = train(params)
    return model, {"params": params}, jnp.asarray(x[1500:]), jnp.asarray(y[1500:])


def test_pgd_and_mpgd_defeat_a_trained_model(digits_model):
    model, variables, x, y = digits_model
    logits_fn = attacks.model_forward(model, variables)
    eps = 0.15

    @jax.jit
    def accuracies(x, key):
        acc = lambda v: jnp.mean(jnp.argmax(logits_fn(v), -1) == y)
        x_fgsm = attacks.fgsm(attacks.ce_objective(logits_fn, y), x, eps=eps)
        x_pgd = attacks.pgd_linf(
            attacks.ce_objective(logits_fn, y), x, key, eps=eps, step_size=eps / 4, num_steps=10
        )
        x_mpgd = attacks.multi_targeted_pgd(
            logits_fn,
            x,
            y,
            key,
            num_classes=10,
            eps=eps,
            step_size=eps / 4,
            num_steps=10,
            num_targets=3,
            target_batch_size=3,
        )
        return acc(x), acc(x_fgsm), acc(x_pgd), acc(x_mpgd)

    clean, a_fgsm, a_pgd, a_mpgd = (float(a) for a in accuracies(x, rkey(0)))
    assert clean > 0.9, clean
    assert a_pgd < 0.2 and a_pgd < clean - 0.7, (clean, a_pgd)
    assert a_pgd <= a_fgsm + 0.02 and a_fgsm < clean - 0.3, (a_fgsm, a_pgd)
    assert a_mpgd < 0.2, a_mpgd


# ----------------------------------------------------------------------------------------------
# Independence per example (BN running statistics) and sharding


def test_attack_is_independent_per_example_in_eval_mode(tiny):
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny, "eval")
    noise = np.random.default_rng(9).uniform(-EPS, EPS, size=x.shape).astype(np.float32)
    start = jnp.clip(x + noise, 0, 1)

    @jax.jit
    def run(xs, ys, st):
        pgd = attacks.pgd_linf(
            attacks.ce_objective(logits_fn, ys), xs, None, eps=EPS, step_size=STEP, num_steps=4, x_init=st
        )
        # mPGD without random start: same property
        mpgd = attacks.multi_targeted_pgd(
            logits_fn,
            xs,
            ys,
            None,
            num_classes=10,
            eps=EPS,
            step_size=STEP,
            num_steps=2,
            num_targets=2,
            random_start=False,
        )
        return pgd, mpgd

    full = [np.asarray(a) for a in run(x, y, start)]
    sub = [np.asarray(a) for a in run(x[3:9], y[3:9], start[3:9])]
    for s_, f_ in zip(sub, full):
        np.testing.assert_allclose(s_, f_[3:9], atol=1e-6)


def test_train_mode_bn_couples_examples(tiny):
    """bn_mode='train' uses the batch's statistics, so a sub-batch is attacked differently
    (documented in model_forward); running statistics are not updated."""
    model, variables, x, y = tiny
    f_train = attacks.model_forward(model, variables, bn_mode="train")
    f_eval = attacks.model_forward(model, variables, bn_mode="eval", output=None)

    @jax.jit
    def outputs(x):
        ref, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return (
            f_train(x),
            ref["logits"],
            f_train(x[:4]),
            f_eval(x),
            model.apply(variables, x, train=False)["logits"],
        )

    train_all, train_ref, train_sub, out, eval_ref = outputs(x)
    np.testing.assert_allclose(np.asarray(train_all), np.asarray(train_ref), atol=1e-6)
    assert not np.allclose(np.asarray(train_sub), np.asarray(train_all)[:4], atol=1e-4)
    assert set(out) == {"z", "proj", "logits"}
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(eval_ref))


def test_sharded_batch_equals_single_device(tiny):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny, "eval")

    def attack(x, y, key):
        return attacks.pgd_linf(
            attacks.ce_objective(logits_fn, y), x, key, eps=EPS, step_size=STEP, num_steps=3
        )

    key = jax.random.key(10)
    single = np.asarray(
        jax.jit(attack)(jax.device_put(x, jax.devices()[0]), jax.device_put(y, jax.devices()[0]), key)
    )
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = NamedSharding(mesh, P("data"))
    out = jax.jit(attack, in_shardings=(sh, sh, NamedSharding(mesh, P())), out_shardings=sh)(
        jax.device_put(x, sh), jax.device_put(y, sh), key
    )
    assert out.sharding.is_equivalent_to(sh, 4)
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Multi-targeted PGD


def test_mpgd_is_at_least_as_strong_as_every_targeted_run(tiny):
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny)
    kw = dict(eps=EPS, step_size=STEP, num_steps=3)
    robust_margin = lambda v: -attacks.logit_margin(logits_fn(v), y)

    @jax.jit
    def run(x, key):
        xm = attacks.multi_targeted_pgd(logits_fn, x, y, key, num_classes=10, num_targets=4, **kw)
        # vectorised targets (batch T*B in one pass) give the same attack
        xv = [
            attacks.multi_targeted_pgd(
                logits_fn, x, y, key, num_classes=10, num_targets=4, target_batch_size=g, **kw
            )
            for g in (4, 3)
        ]
        targets = attacks.mpgd_targets(logits_fn(x), y, 4)
        singles = [
            robust_margin(
                attacks.pgd_linf(
                    attacks.margin_objective(logits_fn, y, targets[k]), x, jax.random.fold_in(key, k), **kw
                )
            )
            for k in range(4)
        ]
        return xm, xv, robust_margin(xm), targets, singles

    # threefry key: its draws do not change under vmap (RBG's do)
    xm, xv, m_mpgd, targets, singles = run(x, jax.random.key(11))
    m_mpgd = np.asarray(m_mpgd)
    assert targets.shape == (4, x.shape[0])
    assert not np.any(np.asarray(targets) == np.asarray(y)[None])
    for k, m_k in enumerate(singles):
        m_k = np.asarray(m_k)
        assert np.all(m_mpgd <= m_k + 1e-5), k
        assert np.all((m_mpgd < 0) | (m_k >= 0))  # any run that succeeds -> mPGD succeeds
    for xg in xv:  # one group of 4; a group of 3 and a remainder of 1
        np.testing.assert_allclose(np.asarray(xg), np.asarray(xm), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Objectives


def test_objectives_values(tiny):
    _, _, x, y = tiny
    logits_fn = _logits_fn(tiny)

    @jax.jit
    def run(x, key):
        logits = logits_fn(x)
        kl = attacks.kl_objective(logits_fn, logits)
        # TRADES attack (SPEC 3.6): start x + 0.001 N(0, 1), unclipped; the KL grows from ~0
        xa = attacks.pgd_linf(
            kl, x, key, eps=EPS, step_size=STEP, num_steps=3, init="normal", clip_start=False
        )
        return dict(
            logits=logits,
            ce=attacks.ce_objective(logits_fn, y)(x),
            tce=attacks.targeted_ce_objective(logits_fn, y)(x),
            kl0=kl(x),
            kl_adv=kl(xa),
            margin=attacks.margin_objective(logits_fn, y)(x),
            xa=xa,
        )

    r = {k: np.asarray(v) for k, v in run(x, rkey(12)).items()}
    np.testing.assert_allclose(
        r["ce"], np.asarray(optax.softmax_cross_entropy_with_integer_labels(r["logits"], y)), rtol=1e-5
    )
    np.testing.assert_allclose(r["tce"], -r["ce"])
    assert r["kl0"].shape == (x.shape[0],)
    np.testing.assert_allclose(r["kl0"], 0.0, atol=1e-6)
    assert r["kl_adv"].min() >= -1e-7 and r["kl_adv"].mean() > 1e-5
    _in_ball(r["xa"], x, EPS)
    assert np.all((r["margin"] > 0) == (np.argmax(r["logits"], -1) != np.asarray(y)))


def test_nt_xent_objective(tiny):
    model, variables, x, _ = tiny
    proj_fn = attacks.model_forward(model, variables, output="proj")
    v1, v2 = x[:8], jnp.flip(x[8:], axis=2)
    both = jnp.concatenate([v1, v2])
    obj = attacks.nt_xent_objective(proj_fn)

    @jax.jit
    def run(both, key):
        p = proj_fn(both)
        one = attacks.nt_xent_objective(proj_fn, both[8:])(both[:8])
        one_p = attacks.nt_xent_objective(proj_fn, other_proj=p[8:])(both[:8])
        # ACL's attack (SPEC 3.3: eval BN, unclipped uniform start) on both views jointly
        xa = attacks.pgd_linf(obj, both, key, eps=EPS, step_size=STEP, num_steps=3, clip_start=False)
        return p, obj(both), one, one_p, xa, obj(xa)

    p, rows, one, one_p, xa, rows_adv = run(both, rkey(13))
    assert rows.shape == (16,) and one.shape == (8,)
    try:
        from ascl_jax.losses import nt_xent_loss

        ref = float(nt_xent_loss(p[:8], p[8:], temperature=0.5))
    except ImportError:  # pragma: no cover - losses module absent
        ref = float(jnp.mean(losses.nt_xent_rows(p[:8], p[8:], temperature=0.5)))
    np.testing.assert_allclose(float(jnp.sum(rows)), ref, rtol=1e-5)
    # one-view form (A2S): the other view fixed, as images or as projections -> same total
    np.testing.assert_allclose(float(jnp.sum(one)), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(one), np.asarray(one_p), rtol=1e-5)
    _in_ball(xa, both, EPS)
    assert float(jnp.sum(rows_adv)) > float(jnp.sum(rows))
    with pytest.raises(ValueError, match="at most one"):
        attacks.nt_xent_objective(proj_fn, v2, other_proj=p[8:])


def test_model_forward_on_dual_bn_package_model():
    from ascl_jax import models

    cfg = dict(arch="tiny", head="p1", bn="dual", proj_dim=8)
    model = models.build_model(cfg, num_classes=10, image_shape=(8, 8, 1))
    x = _images(14, (4, 8, 8, 1))

    @jax.jit
    def run(x, key):
        v = model.init(key, x, train=False)
        out = {}
        for bn in ("clean", "adv"):
            ref = model.apply(v, x, train=False, bn=bn)
            for o in ("logits", "proj", "z"):
                out[bn, o] = (attacks.model_forward(model, v, bn=bn, output=o)(x), ref[o])
        xa = attacks.pgd_linf(
            attacks.ce_objective(attacks.model_forward(model, v, bn="adv", bn_mode="train"), jnp.arange(4)),
            x,
            key,
            eps=EPS,
            step_size=STEP,
            num_steps=2,
        )
        return out, xa

    out, xa = run(x, rkey(15))
    for k, (got, want) in out.items():
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, err_msg=str(k))
    _in_ball(xa, x, EPS)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_rejected(tiny):
    model, variables, x, y = tiny
    obj = attacks.ce_objective(_logits_fn(tiny), y)
    kw = dict(eps=EPS, step_size=STEP, num_steps=2)
    key = rkey(0)
    with pytest.raises(ValueError, match="rank 4"):
        attacks.pgd_linf(obj, x[..., 0], key, **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.pgd_linf(obj, x * 255.0, key, **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.fgsm(obj, x - 0.5, eps=EPS)
    with pytest.raises(ValueError, match="rank 4"):
        attacks.multi_targeted_pgd(_logits_fn(tiny), x[0], y, key, num_classes=10, **kw)
    with pytest.raises(ValueError, match="eps"):
        attacks.pgd_linf(obj, x, key, eps=-0.1, step_size=STEP, num_steps=2)
    with pytest.raises(ValueError, match="step_size"):
        attacks.pgd_linf(obj, x, key, eps=EPS, step_size=float("nan"), num_steps=2)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            attacks.pgd_linf(obj, x, key, eps=EPS, step_size=STEP, num_steps=bad)
    with pytest.raises(ValueError, match="uniform"):
        attacks.pgd_linf(obj, x, key, init="gaussian", **kw)
    with pytest.raises(ValueError, match="PRNG key"):
        attacks.pgd_linf(obj, x, None, **kw)
    with pytest.raises(ValueError, match="x_init"):
        attacks.pgd_linf(obj, x, None, x_init=x[:2], **kw)
    with pytest.raises(ValueError, match=r"bn_mode must be one of \('eval', 'train'\)"):
        attacks.model_forward(model, variables, bn_mode="train_update")
    with pytest.raises(ValueError, match="bn must be one of"):
        attacks.model_forward(model, variables, bn="pgd")
    with pytest.raises(ValueError, match="output must be one of"):
        attacks.model_forward(model, variables, output="features")
    with pytest.raises(ValueError, match="num_targets"):
        attacks.multi_targeted_pgd(_logits_fn(tiny), x, y, key, num_classes=10, num_targets=10, **kw)
    with pytest.raises(ValueError, match="target_batch_size"):
        attacks.multi_targeted_pgd(_logits_fn(tiny), x, y, key, num_classes=10, target_batch_size=0, **kw)
    with pytest.raises(ValueError, match="temperature"):
        attacks.nt_xent_objective(_logits_fn(tiny), temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        attacks.multi_targeted_pgd(_logits_fn(tiny), x, y, key, num_classes=5, **kw)
    # inside jit the range check is skipped (x is traced), the rank check is not
    jitted = jax.jit(lambda v: attacks.pgd_linf(obj, v, key, **kw))
    assert jitted(x).shape == x.shape
    with pytest.raises(ValueError, match="rank 4"):
        jax.jit(lambda v: attacks.pgd_linf(obj, v[..., 0], key, **kw))(x)
