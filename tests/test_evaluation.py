"""Tests of ascl_jax.evaluation: AutoAttack components, PGD/mPGD stages, sanity checks, eval.json.

Small budgets (APGD 10 iterations, Square 50-200 queries) on a linear model trained on sklearn digits
(8x8x1 in [0, 1]) and a tiny random conv net; the defaults stay at AutoAttack's standard values.
8 simulated CPU devices come from tests/conftest.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_cases import fast_compiles, hyperplane_problems  # noqa: F401 (fast_compiles: an autouse fixture)

from ascl_jax import evaluation
from ascl_jax.evaluation import autoattack as aa

EPS = 0.1
SMALL_AA = dict(n_iter=10, n_queries=100, apgd_ce_restarts=1)


def linear_logits(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def conv_logits(params, x):
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, params["k1"], (1, 1), "SAME", dimension_numbers=dn)
    h = jax.nn.relu(h)
    h = jax.lax.conv_general_dilated(h, params["k2"], (2, 2), "SAME", dimension_numbers=dn)
    h = jax.nn.relu(h).mean(axis=(1, 2))
    return h @ params["w"]


def masked_logits(params, x):
    """A gradient-masking model: a rounding layer whose gradient is zero everywhere."""
    return linear_logits(params, jax.lax.stop_gradient(jnp.round(x * 4.0) / 4.0))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def linear(digits):
    """Softmax regression on digits (full-batch gradient descent, ~95% train accuracy)."""
    x, y = digits
    xf = jnp.asarray(x.reshape(len(x), -1))
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}

    def loss(p):
        logp = jax.nn.log_softmax(xf @ p["w"] + p["b"])
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], -1))

    @jax.jit
    def train(p):
        def body(_, p):
            g = jax.grad(loss)(p)
            return jax.tree.map(lambda a, b: a - 1.0 * b, p, g)

        return jax.lax.fori_loop(0, 200, body, p)

    return jax.device_get(train(params))


@pytest.fixture(scope="module")
def conv(digits):
    """A random tiny conv net; labels = its own predictions (clean accuracy 100%)."""
    ks = jax.random.split(jax.random.key(3), 3)
    params = {
        "k1": jax.random.normal(ks[0], (3, 3, 1, 6)) * 0.5,
        "k2": jax.random.normal(ks[1], (3, 3, 6, 8)) * 0.3,
        "w": jax.random.normal(ks[2], (8, 10)),
    }
    x = digits[0][:48]
    y = np.asarray(jnp.argmax(conv_logits(params, jnp.asarray(x)), -1)).astype(np.int32)
    return params, x, y


@pytest.fixture(scope="module")
def conv_eval(conv):
    """Every attack on the conv net, with adversarial images kept."""
    params, x, y = conv
    return evaluation.evaluate(
        conv_logits,
        x,
        y,
        params=params,
        eps=EPS,
        step_size=EPS / 4,
        attacks=("clean", "pgd5", "mpgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"),
        mpgd_steps=5,
        mpgd_targets=3,
        aa_options=dict(n_iter=10, n_queries=50, n_targets=3),
        batch_size=16,
        seed=0,
        sanity=False,
        progress=False,
        keep_adv=True,
    )


# ------------------------------------------------------------------------------------------------
# Pieces


def test_apgd_checkpoints_match_reference_schedule():
    its = [i for i, _ in aa.apgd_checkpoints(100)]
    assert its == [21, 40, 56, 69, 79, 86, 92, 98]
    # p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) with p_0 = 0, p_1 = 0.22
    p = [0.0, 0.22]
    while p[-1] <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert [int(round(q * 100)) - 1 for q in p[1:] if q <= 1.0] == its


def test_dlr_losses_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 10)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    t = (y + 3) % 10
    zs = np.sort(z, axis=1)
    other = np.where(np.eye(10, dtype=bool)[y], -np.inf, z).max(1)
    dlr = -(z[np.arange(6), y] - other) / (zs[:, -1] - zs[:, -3] + 1e-12)
    tdlr = -(z[np.arange(6), y] - z[np.arange(6), t]) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
    np.testing.assert_allclose(aa.dlr_loss(jnp.asarray(z), jnp.asarray(y)), dlr, rtol=1e-5)
    np.testing.assert_allclose(
        aa.targeted_dlr_loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(t)), tdlr, rtol=1e-5
    )
    # shift and positive scale invariance
    np.testing.assert_allclose(aa.dlr_loss(jnp.asarray(3 * z + 7), jnp.asarray(y)), dlr, rtol=1e-4)


def test_shared_row_helpers():
    """The evaluation's margin, CE and projection are the attacks' / losses' (one of each)."""
    from ascl_jax import attacks, losses, parallel

    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(5, 4)).astype(np.float32))
    y = jnp.asarray([0, 1, 2, 3, 0])
    other = np.where(np.eye(4, dtype=bool)[np.asarray(y)], -np.inf, np.asarray(z)).max(1)
    np.testing.assert_array_equal(aa.robust_margin(z, y), np.asarray(z)[np.arange(5), y] - other)
    np.testing.assert_array_equal(aa.robust_margin(z, y), -attacks.logit_margin(z, y))
    np.testing.assert_array_equal(aa.cross_entropy(z, y), losses.cross_entropy(z, y, reduction="none"))
    xa = jnp.asarray(rng.uniform(-0.5, 1.5, (5, 2, 2, 1)).astype(np.float32))
    x = jnp.asarray(rng.uniform(0, 1, (5, 2, 2, 1)).astype(np.float32))
    proj = np.asarray(attacks.project_linf(xa, x, 0.1))
    assert np.all(np.abs(proj - np.asarray(x)) <= 0.1 + 1e-7) and proj.min() >= 0 and proj.max() <= 1
    batches = list(parallel.padded_index_batches(np.arange(10, 15), 4))
    assert [n for _, _, n in batches] == [4, 1]
    np.testing.assert_array_equal(batches[1][0], [14, 14, 14, 14])
    np.testing.assert_array_equal(batches[1][1], [True, False, False, False])


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 5000), per_device=st.integers(1, 300), devices=st.sampled_from([1, 2, 8]))
def test_balanced_batch_size_pads_less_in_as_many_batches(n, per_device, devices):
    """The stage batch size: the same number of batches as the global batch needs, a multiple of
    the device count, at most the global batch, fewer than k bucket widths of padding over its k
    batches, and one of at most 16 sizes for any row count."""
    from ascl_jax import parallel

    big = per_device * devices  # the Engine's global batch: a multiple of the device count
    b = parallel.balanced_batch_size(n, big, devices)
    k = -(-n // big)
    width = -(-max(-(-big // 16), 64) // devices) * devices
    assert b <= big and b % devices == 0
    assert -(-n // b) == k  # as many batches as before
    assert k * b - n < k * width  # fewer than k bucket widths of padding in all
    sizes = {parallel.balanced_batch_size(m, big, devices) for m in range(1, 3 * big + 1)}
    assert len(sizes) <= 16 and max(sizes) == big


def test_balanced_batch_size_examples_and_bad_input():
    from ascl_jax import parallel

    assert [parallel.balanced_batch_size(n, 500) for n in (1, 500, 513, 660, 790, 10000)] == [
        64,
        500,
        320,
        384,
        448,
        500,
    ]
    assert parallel.balanced_batch_size(3, 64, 8) == 64 and parallel.balanced_batch_size(130, 256, 8) == 192
    with pytest.raises(ValueError, match="multiple of multiple"):
        parallel.balanced_batch_size(10, 100, 8)


def test_linf_hyperplane_projection_matches_linprog():
    from scipy.optimize import linprog

    d = 12
    t, w, b = hyperplane_problems(seed=1, d=d, n_zero=4, noise=0.5)
    dj = np.asarray(aa.project_linf_hyperplane_box(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    for i in range(8):
        # min s  s.t. -s <= d_j <= s,  w.d = b - w.t,  0 <= t + d <= 1   (variables d, s)
        c = np.r_[np.zeros(d), 1.0]
        a_ub = np.r_[np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]]
        bounds = [(-t[i, j], 1 - t[i, j]) for j in range(d)] + [(0, None)]
        res = linprog(
            c,
            A_ub=a_ub,
            b_ub=np.zeros(2 * d),
            A_eq=np.r_[w[i], 0.0][None],
            b_eq=[b[i] - w[i] @ t[i]],
            bounds=bounds,
        )
        assert np.all(t[i] + dj[i] >= -1e-5) and np.all(t[i] + dj[i] <= 1 + 1e-5)
        if res.status == 0:
            assert abs(w[i] @ (t[i] + dj[i]) - b[i]) < 1e-3
            assert np.abs(dj[i]).max() == pytest.approx(res.fun, abs=1e-4)
        else:  # infeasible: every coordinate moved to its face towards the hyperplane
            assert i == 1
            face = np.where(w[i] > 0, 1 - t[i], -t[i]) * (w[i] != 0)
            np.testing.assert_allclose(dj[i], face, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Analytic worst case of a linear model


def _worst_margin(w_diff, bias_diff, x, eps=EPS):
    """min over the eps-ball and [0, 1] of w_diff . x' + bias_diff (coordinate-wise optimum)."""
    xf = x.reshape(len(x), -1)
    lo = np.maximum(xf - eps, 0.0)
    hi = np.minimum(xf + eps, 1.0)
    best = np.where(w_diff > 0, lo, hi)
    return (best * w_diff).sum(-1) + bias_diff


def test_apgd_and_fab_reach_analytic_worst_case_binary(linear, digits):
    """Binary linear model (digits 3 vs 8): the L-inf worst case inside the ball and the box is a
    corner, reached coordinate-wise; APGD-CE must find it, FAB-T must find every example whose
    distance to the boundary is clearly below eps and no other."""
    eps = 0.15
    x, y = digits
    keep = (y == 3) | (y == 8)
    x, y = x[keep][:64], (y[keep][:64] == 8).astype(np.int32)
    p = {"w": linear["w"][:, [3, 8]], "b": linear["b"][np.array([3, 8])]}
    f = lambda z: linear_logits(p, z)
    run = jax.jit(
        lambda x, y: (
            aa.apgd_linf(f, x, y, jax.random.key(0), eps=eps, n_iter=10, return_state=True),
            aa.fab_targeted_linf(f, x, y, 1 - y, eps=eps, n_iter=10),
        )
    )
    (x_adv, fooled, state), (x_fab, fooled_fab) = run(jnp.asarray(x), jnp.asarray(y))
    w, b = np.asarray(p["w"]), np.asarray(p["b"])
    sgn = np.where(y == 0, 1.0, -1.0)[:, None]
    wd = sgn * (w[:, 0] - w[:, 1])[None, :]
    bd = sgn[:, 0] * (b[0] - b[1])
    m_star = _worst_margin(wd, bd, x, eps)
    xb = np.asarray(state["x_best"]).reshape(len(x), -1)
    np.testing.assert_allclose((xb * wd).sum(-1) + bd, m_star, atol=1e-4, rtol=1e-5)
    assert np.abs(xb - x.reshape(len(x), -1)).max() <= eps + 1e-6
    clear = np.abs(m_star) > 1e-3
    assert 5 < (m_star < 0).sum() < len(x) - 5
    np.testing.assert_array_equal(np.asarray(fooled)[clear], (m_star < 0)[clear])
    below = _worst_margin(wd, bd, x, 0.9 * eps) < 0
    above = _worst_margin(wd, bd, x, 1.1 * eps) > 0
    fooled_fab = np.asarray(fooled_fab)
    assert below.sum() > 5
    assert np.all(fooled_fab[below]) and not np.any(fooled_fab[above])
    assert np.abs(np.asarray(x_fab) - x).max() <= eps + 1e-6


def test_autoattack_matches_analytic_robustness_multiclass(linear, digits):
    x, y = digits
    x, y = x[:128], y[:128]
    res = evaluation.run_autoattack(
        linear_logits,
        x,
        y,
        jax.random.key(0),
        params=linear,
        eps=EPS,
        components=("apgd-ce", "apgd-t"),
        apgd_ce_restarts=1,
        n_iter=10,
        batch_size=64,
        progress=False,
    )
    w, b = np.asarray(linear["w"]), np.asarray(linear["b"])
    m_star = np.stack([_worst_margin((w[:, y] - w[:, [k]]).T, b[y] - b[k], x) for k in range(10)], 1)
    m_star[np.arange(len(y)), y] = np.inf
    analytic = m_star.min(1) > 0
    clean = res["clean"]
    clear = np.abs(m_star.min(1)) > 1e-2
    np.testing.assert_array_equal(res["robust"][clear & clean], analytic[clear & clean])
    assert not np.any(res["robust"] & ~analytic)  # a verified attack never beats the optimum
    assert 0.05 < res["robust"].mean() < clean.mean()


# ------------------------------------------------------------------------------------------------
# Every attack on the conv net


def test_every_attack_stays_in_ball_and_box(conv, conv_eval):
    _, x, _ = conv
    advs = conv_eval["adversarial_images"]
    assert set(advs) == {"pgd5", "mpgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"}
    for name, xa in advs.items():
        assert xa.shape == x.shape, name
        assert np.abs(xa - x).max() <= EPS + 1e-6, name
        assert xa.min() >= 0.0 and xa.max() <= 1.0, name
        broken = conv_eval["per_example"][f"robust_{name}"] == 0
        assert np.all(np.abs(xa[~broken] - x[~broken]) == 0), name


def test_autoattack_never_above_a_component(conv_eval):
    acc = conv_eval["robust_accuracy"]
    pe = conv_eval["per_example"]
    assert conv_eval["clean_accuracy"] == 1.0
    for comp in ("apgd-ce", "apgd-t", "fab-t", "square"):
        assert acc["autoattack"] <= acc[comp], comp
        # row by row: robust under AutoAttack implies robust under each component
        assert np.all(pe[f"robust_{comp}"] >= pe["robust_autoattack"]), comp
    after = conv_eval["autoattack"]["autoattack"]["accuracy_after"]
    vals = [after[k] for k in ("clean", "apgd-ce", "apgd-t", "fab-t", "square")]
    assert vals == sorted(vals, reverse=True) and vals[-1] == acc["autoattack"]
    assert acc["autoattack"] < 1.0
    overall = min(acc.values())
    assert conv_eval["overall"]["robust_accuracy"] <= overall
    assert np.array_equal(pe["robust_overall"] == 1, np.all([pe[f"robust_{k}"] == 1 for k in acc], axis=0))


def test_attack_components_directly(conv):
    """The per-batch functions on their own: fooled flags are verified misclassifications."""
    params, x, y = conv
    f = lambda z: conv_logits(params, z)
    xj, yj = jnp.asarray(x[:16]), jnp.asarray(y[:16])
    t = aa.ranked_target(f(xj), 2)

    @jax.jit
    def run(xj, yj):
        return (
            aa.apgd_linf(f, xj, yj, jax.random.key(1), eps=EPS, n_iter=10, loss="dlr"),
            aa.fab_targeted_linf(f, xj, yj, t, eps=EPS, n_iter=10),
            aa.square_linf(f, xj, yj, jax.random.key(1), eps=EPS, n_queries=100),
        )

    for xa, fooled in run(xj, yj):
        assert np.abs(np.asarray(xa) - x[:16]).max() <= EPS + 1e-6
        pred = np.asarray(jnp.argmax(f(xa), -1))
        np.testing.assert_array_equal(np.asarray(fooled), pred != y[:16])


# ------------------------------------------------------------------------------------------------
# Sanity checks


def _evaluate_with_sanity(logits_fn, params, digits):
    """PGD-5 on 96 digits with the gradient-masking sanity checks on (small budgets)."""
    x, y = digits
    return evaluation.evaluate(
        logits_fn,
        x[:96],
        y[:96],
        params=params,
        eps=EPS,
        step_size=EPS / 4,
        attacks=("pgd5",),
        batch_size=32,
        seed=0,
        progress=False,
        sanity=True,
        sanity_examples=96,
        sanity_steps=3,
        sanity_square_queries=200,
    )


def test_masked_gradients_are_caught(linear, digits):
    res = _evaluate_with_sanity(masked_logits, linear, digits)
    san = res["sanity"]
    assert not san["passed"]
    assert not san["checks"]["nonzero_gradients"]["passed"]
    assert san["checks"]["nonzero_gradients"]["zero_gradient_fraction"] == 1.0
    assert not san["checks"]["square_not_stronger"]["passed"]  # Square beats the blind PGD
    assert any("nonzero_gradients" in m for m in san["messages"])


def test_sanity_passes_on_a_plain_model(linear, digits):
    res = _evaluate_with_sanity(linear_logits, linear, digits)
    san = res["sanity"]
    assert san["passed"], san["messages"]
    sweep = san["checks"]["accuracy_falls_with_eps"]
    assert sweep["accuracy"][0] == res["clean_accuracy"] and sweep["eps"][0] == 0.0
    assert sweep["accuracy"][-1] < sweep["accuracy"][0]
    assert san["checks"]["eps_zero_is_clean"]["passed"]


# ------------------------------------------------------------------------------------------------
# Determinism, devices, loop forms


def _small_eval(linear, x, y, **kw):
    args = dict(
        params=linear,
        eps=EPS,
        step_size=EPS / 4,
        attacks=("pgd5", "autoattack"),
        version="custom",
        autoattack_attacks=("apgd-ce", "apgd-t"),
        aa_options=SMALL_AA,
        batch_size=32,
        seed=0,
        sanity=False,
        progress=False,
    )
    args.update(kw)
    return evaluation.evaluate(linear_logits, x, y, **args)


def test_deterministic_and_sharding_invariant(linear, digits):
    x, y = digits[0][:80], digits[1][:80]
    a = _small_eval(linear, x, y)
    b = _small_eval(linear, x, y)
    mesh1 = jax.make_mesh(
        (1,), ("data",), devices=jax.devices()[:1], axis_types=(jax.sharding.AxisType.Auto,)
    )
    c = _small_eval(linear, x, y, mesh=mesh1)
    assert a["settings"]["devices"] == len(jax.devices()) == 8
    assert c["settings"]["devices"] == 1
    for other in (b, c):
        assert other["robust_accuracy"] == a["robust_accuracy"]
        for k, v in a["per_example"].items():
            np.testing.assert_array_equal(other["per_example"][k], v, err_msg=k)


def test_unroll_and_batch_size_give_the_same_flags(linear, digits):
    x, y = digits[0][:80], digits[1][:80]
    a = _small_eval(linear, x, y, attacks=("pgd5", "apgd-ce"))
    b = _small_eval(linear, x, y, attacks=("pgd5", "apgd-ce"), unroll=2, batch_size=24)
    assert b["settings"]["unroll"] == 2 and b["settings"]["batch_size"] == 24
    for k in ("robust_pgd5", "robust_apgd-ce"):
        np.testing.assert_array_equal(a["per_example"][k], b["per_example"][k], err_msg=k)


def test_first_n_examples_and_autoattack_subset(linear, digits):
    x, y = digits
    r = _small_eval(linear, x, y, num_examples=40, autoattack_examples=24)
    assert r["num_evaluated"] == 40
    assert r["num_examples"] == {"pgd5": 40, "autoattack-custom": 24}
    assert r["overall"]["num_examples"] == 24
    pe = r["per_example"]
    assert np.all(pe["robust_autoattack-custom"][24:] == -1) and np.all(pe["robust_pgd5"] >= 0)
    assert np.all(pe["robust_overall"][24:] == -1)


def test_aa_options_budgets_reach_the_components(linear, digits, monkeypatch):
    """evaluate's aa_options arrive in the component specs it runs (custom APGD-CE: 5 restarts by
    default, 1 asked); override_specs refuses a key it does not know."""
    from ascl_jax.evaluation import autoattack_driver

    seen = []
    run = autoattack_driver.run_on_engine
    monkeypatch.setattr(
        autoattack_driver, "run_on_engine", lambda *a, **kw: seen.append(kw["specs"]) or run(*a, **kw)
    )
    x, y = digits[0][:16], digits[1][:16]
    _small_eval(linear, x, y, attacks=("autoattack",), aa_options=dict(SMALL_AA, target_restarts=2))
    (specs,) = seen
    assert aa.version_specs("custom", attacks=("apgd-ce",))[0].restarts == 5
    assert {s.name: (s.restarts, s.n_iter) for s in specs} == {"apgd-ce": (1, 10), "apgd-t": (2, 10)}
    with pytest.raises(ValueError, match=r"apgd_restarts.*allowed.*'apgd_ce_restarts'"):
        aa.override_specs(specs, apgd_restarts=1)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_errors(linear, digits):
    x, y = digits[0][:8], digits[1][:8]
    with pytest.raises(ValueError, match="unknown attack 'cw'.*allowed"):
        evaluation.evaluate(linear_logits, x, y, params=linear, attacks=("clean", "cw"))
    for bad in (0.0, -0.1, 1.5, float("nan"), "big"):
        with pytest.raises(ValueError, match="eps"):
            evaluation.evaluate(linear_logits, x, y, params=linear, eps=bad)
    with pytest.raises(ValueError, match="version"):
        evaluation.evaluate(linear_logits, x, y, params=linear, attacks=("autoattack",), version="fast")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluation.evaluate(linear_logits, x * 255, y, params=linear)
    with pytest.raises(ValueError, match="NHWC"):
        evaluation.evaluate(linear_logits, x[..., 0], y, params=linear)
    with pytest.raises(ValueError, match="labels"):
        evaluation.evaluate(linear_logits, x, y[:5], params=linear)
    with pytest.raises(ValueError, match="component"):
        aa.version_specs("custom", attacks=("apgd-ce", "cw"))
    with pytest.raises(ValueError, match="4 classes"):
        aa.check_num_classes(("apgd-t",), 3)
    assert evaluation.parse_attack("pgd250r5")[2] == {"steps": 250, "restarts": 5}
    assert evaluation.parse_attack("pgd", pgd_steps=20)[1] == "pgd20"


# ------------------------------------------------------------------------------------------------
# eval.json / report.json


def test_write_eval_json_archives_and_merges(tmp_path, conv_eval):
    wd = str(tmp_path)
    with open(os.path.join(wd, "report.json"), "w") as f:
        json.dump({"train": {"steps": 3}, "eval": {"old": True}}, f)
    out = evaluation.write_eval_json(wd, conv_eval)
    assert out["archived"] == []
    summary = json.load(open(os.path.join(wd, "eval.json")))
    assert summary["robust_accuracy"] == conv_eval["robust_accuracy"]
    assert "per_example" not in summary and "adversarial_images" not in summary
    report = json.load(open(os.path.join(wd, "report.json")))
    assert report["train"] == {"steps": 3} and report["eval"] == summary
    pe = evaluation.load_per_example(os.path.join(wd, "per_example.npz"))
    np.testing.assert_array_equal(pe["robust_autoattack"], conv_eval["per_example"]["robust_autoattack"])
    cmp = evaluation.compare_per_example(pe, conv_eval["per_example"], "robust_autoattack")
    assert cmp["only_a"] == cmp["only_b"] == 0 and cmp["num_examples"] == len(pe["index"])

    with pytest.raises(FileExistsError):
        evaluation.write_eval_json(wd, conv_eval, on_exists="error")
    out = evaluation.write_eval_json(wd, conv_eval)  # default: archive the old one
    assert len(out["archived"]) == 2
    assert all(os.path.exists(p) for p in out["archived"])
    assert sorted(os.listdir(wd)).count("eval.json") == 1
    evaluation.write_eval_json(wd, conv_eval, on_exists="overwrite")
    assert len([n for n in os.listdir(wd) if n.startswith("eval.")]) == 2
    with pytest.raises(ValueError, match="on_exists"):
        evaluation.write_eval_json(wd, conv_eval, on_exists="replace")


def test_engine_cache_keys_on_code_closure_and_namespace():
    """Closures of the same code over the same objects share an engine; the same source run in
    another global namespace (a second notebook, a doctest) gets its own."""
    from ascl_jax.evaluation import engine as engine_lib

    w = jnp.ones((4, 3), jnp.float32)
    make = lambda: lambda x: x.reshape(x.shape[0], -1) @ w
    assert engine_lib.get_engine(make(), progress=False) is engine_lib.get_engine(make(), progress=False)
    src = "f = lambda x: jnp.zeros((x.shape[0], 3)) + x.reshape(x.shape[0], -1).sum(-1, keepdims=True)"
    ns_a, ns_b = {"jnp": jnp}, {"jnp": jnp}
    exec(src, ns_a)
    exec(src, ns_b)
    assert ns_a["f"].__code__.co_code == ns_b["f"].__code__.co_code
    assert engine_lib.get_engine(ns_a["f"], progress=False) is not engine_lib.get_engine(
        ns_b["f"], progress=False
    )
