"""AutoAttack for every threat model and version, and ``autoattack_callable`` on a model that is not
ascl_jax's.

Projections against float64 numpy references (L1 ball ∩ box by bisection, L2 / L1 hyperplane-box
steps by bisection and by scipy's linprog); L1-APGD's sparse step and step-size rule against a numpy
step; the versions' attack lists written out from the reference's ``AutoAttack.set_version``; the
entry point on a hand-written linear classifier of sklearn digits, whose minimal L2 / L1 distances to
each decision boundary inside the box are known exactly; bad input. 8 simulated CPU devices.
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_cases import fast_compiles, hyperplane_problems  # noqa: F401 (fast_compiles: an autouse fixture)

from ascl_jax.evaluation import autoattack as aa
from ascl_jax.evaluation import autoattack_api as aa_api
from ascl_jax.evaluation import autoattack_callable
from ascl_jax.evaluation import projections as proj


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int32)


@pytest.fixture(scope="module")
def linear(digits):
    """Softmax regression on digits: numpy weights w [64, 10], b [10]."""
    x, y = digits
    xf = jnp.asarray(x.reshape(len(x), -1))

    def loss(p):
        logp = jax.nn.log_softmax(xf @ p[0] + p[1])
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], -1))

    @jax.jit
    def train(p):
        return jax.lax.fori_loop(
            0, 200, lambda _, p: jax.tree.map(lambda a, g: a - g, p, jax.grad(loss)(p)), p
        )

    w, b = jax.device_get(train((jnp.zeros((64, 10)), jnp.zeros(10))))
    return np.asarray(w), np.asarray(b)


def _predict(linear):
    w, b = (jnp.asarray(a) for a in linear)
    return lambda x: x.reshape(x.shape[0], -1) @ w + b


# ------------------------------------------------------------------------------------------------
# numpy references (float64)


def _l1_box_ref(x, y, eps):
    """argmin ||z - y||_2 s.t. ||z||_1 <= eps, 0 <= x + z <= 1, by bisection on the threshold."""
    a, cap = np.abs(y), np.where(y >= 0, 1 - x, x)
    mag = lambda lam: np.clip(a - lam, 0, cap)  # noqa: E731
    if mag(0).sum() <= eps:
        return np.sign(y) * mag(0)
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mag(mid).sum() > eps else (lo, mid)
    return np.sign(y) * mag(hi)


def _hyperplane_ref(t, w, b, norm):
    """Minimum-norm d with <w, t + d> = b and t + d in [0, 1] (None if unreachable)."""
    c = w @ t - b
    s = 1.0 if c >= 0 else -1.0
    w2, c = w * s, abs(c)
    room = np.where(w2 > 0, t, 1 - t) * (w2 != 0)
    if (np.abs(w2) * room).sum() < c:
        return None
    if norm == "L1":  # greedy by |w|, exact
        m = np.zeros_like(t)
        for i in np.argsort(-np.abs(w2)):
            use = min(room[i], (c - (np.abs(w2) * m).sum()) / abs(w2[i])) if w2[i] != 0 else 0.0
            m[i] = max(use, 0.0)
        return -np.sign(w2) * m
    lo, hi = 0.0, 1e6  # L2: d = -sign(w) min(lambda |w|, room)
    for _ in range(300):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (np.abs(w2) * np.minimum(mid * np.abs(w2), room)).sum() < c else (lo, mid)
    return -np.sign(w2) * np.minimum(hi * np.abs(w2), room)


def test_l1_box_projection_against_bisection():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (7, 30))
    y = rng.normal(size=(7, 30)) * 0.6  # many coordinates outside the box
    eps = np.array([0.01, 0.5, 1.0, 3.0, 7.0, 1e3, 2.0])
    r = np.asarray(proj.project_l1_box(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), eps))
    for i in range(7):
        z_ref = _l1_box_ref(x[i], y[i], eps[i])
        np.testing.assert_allclose(y[i] + r[i], z_ref, atol=2e-6)
        assert np.abs(y[i] + r[i]).sum() <= eps[i] * (1 + 1e-5) + 1e-6
    # project_ball L1 / L2 land in the ball and the box and keep feasible points
    x4 = jnp.asarray(x.reshape(7, 5, 6, 1), jnp.float32)
    far = jnp.asarray(rng.uniform(-1, 2, (7, 5, 6, 1)), jnp.float32)
    for norm, e in (("L1", 2.0), ("L2", 0.7)):
        p = proj.project_ball(far, x4, e, norm)
        assert np.all(np.asarray(proj.lp_norms(p - x4, norm)) <= e * (1 + 1e-5))
        assert float(p.min()) >= 0 and float(p.max()) <= 1
        np.testing.assert_allclose(proj.project_ball(p, x4, e, norm), p, atol=2e-6)
    d = np.asarray(far - x4).reshape(7, -1)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    l2_ref = np.clip(x.reshape(7, -1) + d / (n + 1e-12) * np.minimum(0.7, n), 0, 1)  # APGD's L2 step
    np.testing.assert_allclose(
        np.asarray(proj.project_ball(far, x4, 0.7, "L2")).reshape(7, -1), l2_ref, atol=1e-6
    )


@pytest.mark.parametrize("norm", ["L2", "L1"])
def test_hyperplane_box_projections(norm):
    from scipy.optimize import linprog

    d = 16
    t, w, b = hyperplane_problems(seed=2, d=d, n_zero=5, noise=0.8)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    out = np.asarray(proj.project_hyperplane_box(f32(t), f32(w), f32(b), norm))
    for i in range(8):
        ref = _hyperplane_ref(t[i], w[i], b[i], norm)
        assert np.all(t[i] + out[i] >= -1e-5) and np.all(t[i] + out[i] <= 1 + 1e-5)
        if ref is None:
            face = np.where(w[i] * np.sign(w[i] @ t[i] - b[i]) > 0, -t[i], 1 - t[i]) * (w[i] != 0)
            np.testing.assert_allclose(out[i], face, atol=1e-6)
            continue
        assert abs(w[i] @ (t[i] + out[i]) - b[i]) < 1e-3
        np.testing.assert_allclose(out[i], ref, atol=1e-4)
        if norm == "L1":  # the LP optimum: min sum(u + v), d = u - v
            lp = linprog(
                np.ones(2 * d),
                A_eq=np.r_[w[i], -w[i]][None],
                b_eq=[b[i] - w[i] @ t[i]],
                bounds=[(0, 1 - t[i, j]) for j in range(d)] + [(0, t[i, j]) for j in range(d)],
            )
            assert np.abs(out[i]).sum() == pytest.approx(lp.fun, abs=1e-4)


# ------------------------------------------------------------------------------------------------
# L1-APGD


def test_l1_apgd_schedule_and_sparse_step(linear, digits):
    t = aa.apgd_schedule(100, "L1")
    assert np.flatnonzero(t["is_ck"])[:3].tolist() == [3, 7, 11] and set(t["k"]) == {4.0}
    t = aa.apgd_schedule(100, "L1", use_largereps=True)
    assert [float(m) for m in t["eps_mult"][[0, 29, 30, 59, 60, 99]]] == [3, 3, 2, 2, 1, 1]
    assert np.flatnonzero(t["restart"]).tolist() == [30, 60] and t["is_ck"].all()

    x, y = digits
    x, y = jnp.asarray(x[:12]), jnp.asarray(y[:12])
    f = _predict(linear)
    eps = 2.0
    prog = aa.apgd_program(n_iter=100, loss="ce", norm="L1", use_largereps=True)

    @jax.jit
    def init_and_step(x, y):
        s0 = prog.init(f, x, y, jnp.arange(12), jax.random.key(0), 2, eps)
        return s0, prog.step(f, x, y, eps, jnp.int32(0), s0)

    s0, s1 = init_and_step(x, y)
    # numpy: the sparse step from s0, then the projection onto the 3 eps ball ∩ box
    xa, g = np.asarray(s0["x_adv"]).reshape(12, -1), np.asarray(s0["g"]).reshape(12, -1)
    x0 = np.asarray(x).reshape(12, -1)
    l0 = (xa != x0).sum(1)
    np.testing.assert_allclose(np.asarray(s0["topk"]), l0 / 64 / 1.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s0["step"]), 3 * eps)
    for i in range(12):
        thr = np.sort(np.abs(g[i]))[min(max(int((1 - l0[i] / 64 / 1.5) * 64), 0), 63)]
        sg = np.sign(g[i]) * (np.abs(g[i]) >= thr)
        z = xa[i] + 3 * eps * sg / (np.abs(sg).sum() + 1e-10)
        ref = x0[i] + _l1_box_ref(x0[i], z - x0[i], 3 * eps)
        np.testing.assert_allclose(np.asarray(s1["x_adv"]).reshape(12, -1)[i], ref, atol=1e-5)
    # the step-size rule after the check (every iteration in this schedule)
    sp = (np.asarray(s1["x_best"]).reshape(12, -1) != x0).sum(1)
    red = sp / np.asarray(s0["sp_old"]) < 0.95
    np.testing.assert_allclose(np.asarray(s1["topk"]), sp / 64 / 1.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s1["step"]), np.where(red, 3 * eps, 3 * eps / 1.5), rtol=1e-6)


def test_version_attack_lists_are_the_reference():
    """Written out from fra31/auto-attack's AutoAttack.set_version (per norm) and its constructor."""
    # (component, restarts, target classes, EoT passes, 3/2/1 eps schedule)
    written = {
        ("standard", "Linf"): [
            ("apgd-ce", 1, 0, 1, False),
            ("apgd-t", 1, 9, 1, False),
            ("fab-t", 1, 9, 1, False),
            ("square", 1, 0, 1, False),
        ],
        ("standard", "L1"): [
            ("apgd-ce", 5, 0, 1, True),
            ("apgd-t", 1, 5, 1, True),
            ("fab-t", 1, 9, 1, False),
            ("square", 1, 0, 1, False),
        ],
        ("plus", "Linf"): [
            ("apgd-ce", 5, 0, 1, False),
            ("apgd-dlr", 5, 0, 1, False),
            ("fab", 5, 0, 1, False),
            ("square", 1, 0, 1, False),
            ("apgd-t", 1, 9, 1, False),
            ("fab-t", 1, 9, 1, False),
        ],
        ("rand", "Linf"): [("apgd-ce", 1, 0, 20, False), ("apgd-dlr", 1, 0, 20, False)],
    }
    written[("standard", "L2")] = written[("standard", "Linf")]
    written[("plus", "L2")] = written[("plus", "L1")] = written[("plus", "Linf")]
    written[("rand", "L2")] = written[("rand", "L1")] = written[("rand", "Linf")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'plus' with L1 warns, as the reference does
        for (v, n), want in written.items():
            got = [
                (s.name, s.restarts, s.n_targets, s.eot_iter, s.use_largereps) for s in aa.version_specs(v, n)
            ]
            assert got == want, (v, n)
            assert all(s.n_iter == 100 and s.n_queries == 5000 for s in aa.version_specs(v, n))
    custom = aa.version_specs("custom", "L2", attacks=("fab", "apgd-t", "apgd-ce"))
    assert [(s.name, s.restarts, s.n_targets) for s in custom] == [
        ("fab", 5, 0),
        ("apgd-t", 1, 9),
        ("apgd-ce", 5, 0),
    ]
    st = aa.plan(aa.version_specs("plus", "Linf"), num_classes=4)
    assert [(c, r, k) for c, r, k in st if c == 2] == [(2, k, k) for k in range(5)]  # FAB: restart index
    assert [r for c, r, _ in st if c == 5] == [2, 3, 4]  # FAB-T: K - 1 targets, one restart each


# ------------------------------------------------------------------------------------------------
# The entry point on a hand-written model


def _distances(linear, x, y, norm):
    """Exact minimal `norm` distance inside [0, 1] from each example to the region of any other class."""
    w, b = (np.asarray(a, np.float64) for a in linear)
    xf = x.reshape(len(x), -1).astype(np.float64)
    out = np.full(len(x), np.inf)
    for i in range(len(x)):
        for k in range(10):
            if k == y[i]:
                continue
            d = _hyperplane_ref(xf[i], w[:, k] - w[:, y[i]], b[y[i]] - b[k], norm)
            if d is not None:
                out[i] = min(out[i], np.abs(d).sum() if norm == "L1" else np.linalg.norm(d))
    return out


@pytest.mark.parametrize("norm, eps, version", [("L2", 0.5, "plus"), ("L1", 2.0, "standard")])
def test_l2_l1_autoattack_on_a_linear_model(linear, digits, norm, eps, version):
    x, y = digits[0][:48], digits[1][:48]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer targets than asked
        res = autoattack_callable(
            _predict(linear), x, y, eps=eps, norm=norm, version=version, n_iter=10, n_queries=30, n_targets=9,
            batch_size=48, keep_adv=True,
        )  # fmt: skip
    dist = _distances(linear, x, y, norm)
    clean = res.clean
    assert res.robust_accuracy <= res.clean_accuracy and not np.any(res.robust & ~clean)
    assert not np.any(~res.robust & clean & (dist > eps * (1 + 1e-4)))  # never beats the optimum
    assert np.all(~res.robust[clean & (dist < 0.9 * eps)])  # FAB-T reaches every nearby boundary
    assert 0 < res.robust.sum() < clean.sum() - 3
    delta = (res.x_adv - x).reshape(len(x), -1)
    assert np.all(np.asarray(proj.lp_norms(jnp.asarray(delta), norm)) <= eps * (1 + 1e-5))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.attacks == aa.ATTACKS[(version, norm)]


def test_callable_result_and_robustbench_json(linear, digits, tmp_path):
    x, y = digits[0][:40], digits[1][:40]
    res = autoattack_callable(
        _predict(linear), x, y, eps=0.1, n_iter=10, n_queries=30, n_targets=3, batch_size=16
    )
    names = res.broken_by_names()
    assert res.attacks == ("apgd-ce", "apgd-t", "fab-t", "square") and res.version == "standard"
    assert names.count("robust") == res.robust.sum() and names.count("misclassified") == (~res.clean).sum()
    after = [res.accuracy_after[k] for k in ("clean",) + res.attacks]
    assert after == sorted(after, reverse=True) and after[-1] == res.robust_accuracy < res.clean_accuracy
    rec = res.robustbench_json(name="linear digits", dataset="digits")
    assert rec["eps"] == "0.1" and rec["threat_model"] == "Linf" and rec["footnote"] is None
    assert res.robustbench_json()["eps"] == "0.1" and aa_api.eps_string(8 / 255, "Linf") == "8/255"
    assert rec["clean_acc"] == str(round(100 * res.clean_accuracy, 2))
    assert rec["autoattack_acc"] == str(round(100 * res.robust_accuracy, 2))
    for key in (
        "link",
        "name",
        "authors",
        "additional_data",
        "number_forward_passes",
        "venue",
        "architecture",
    ):
        assert key in rec
    path = str(tmp_path / "model.json")
    res.to_json(path, name="linear digits")
    assert json.load(open(path))["autoattack_acc"] == rec["autoattack_acc"]
    with pytest.raises(FileExistsError):
        res.to_json(path)
    custom = autoattack_callable(
        _predict(linear), x, y, eps=0.1, version="custom", attacks=("apgd-ce",), n_iter=10, batch_size=16
    )
    assert "not 'standard'" in custom.robustbench_json()["footnote"]


def test_rand_version_and_deterministic_warnings(linear, digits):
    x, y = digits[0][:16], digits[1][:16]
    f = _predict(linear)

    def noisy(z, key):  # a randomised defence: Gaussian input noise
        return f(jnp.clip(z + 0.05 * jax.random.normal(key, z.shape), 0, 1))

    kw = dict(eps=0.1, n_iter=5, batch_size=16)
    with pytest.warns(UserWarning, match="deterministic"):
        autoattack_callable(f, x, y, version="rand", **kw)
    with pytest.warns(UserWarning, match="version='rand'"):
        autoattack_callable(noisy, x, y, randomized=True, version="custom", attacks=("apgd-ce",), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = autoattack_callable(noisy, x, y, randomized=True, version="rand", **kw)
    assert res.attacks == ("apgd-ce", "apgd-dlr") and all(s.eot_iter == 20 for s in res.specs)
    assert res.robust_accuracy < res.clean_accuracy


def test_bad_input(linear, digits):
    x, y = digits[0][:8], digits[1][:8]
    f = _predict(linear)
    bad = [
        (dict(norm="linf"), "norm='linf'"),
        (dict(version="fast"), "version='fast'"),
        (dict(version="custom"), "attacks"),
        (dict(version="custom", attacks=("apgd-ce", "cw")), "'cw'"),
        (dict(attacks=("apgd-ce",)), "only used with version='custom'"),
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=1.5), "eps=1.5"),
        (dict(eps=9.0, norm="L2"), "L2"),  # the L2 diameter of [0, 1]^64 is 8
        (dict(eps=65.0, norm="L1"), "L1"),
    ]
    for kw, msg in bad:
        args = dict(eps=0.1)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            autoattack_callable(f, x, y, **args)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        autoattack_callable(f, x * 255, y, eps=0.1)
    with pytest.raises(ValueError, match="NHWC"):
        autoattack_callable(f, x[..., 0], y, eps=0.1)
    with pytest.raises(ValueError, match="predict"):
        autoattack_callable("model", x, y, eps=0.1)
    with pytest.warns(UserWarning, match="probabilities"):
        autoattack_callable(
            lambda z: jax.nn.softmax(f(z)), x, y, eps=0.05, version="custom", attacks=("apgd-ce",), n_iter=2
        )


def test_pgd_l2_in_evaluate_and_config_fields(linear, digits):
    from ascl_jax import config, evaluation

    x, y = digits[0][:48], digits[1][:48]
    w, b = (jnp.asarray(a) for a in linear)
    res = evaluation.evaluate(
        lambda p, z: z.reshape(z.shape[0], -1) @ p[0] + p[1], x, y, params=(w, b), norm="L2", eps=0.5,
        step_size=0.125, attacks=("pgd10",), batch_size=48, sanity=False, progress=False, keep_adv=True,
    )  # fmt: skip
    dist = _distances(linear, x, y, "L2")
    rob = res["per_example"]["robust_pgd10"] == 1
    clean = res["per_example"]["clean_correct"]
    assert res["norm"] == "L2" and res["robust_accuracy"]["pgd10"] < res["clean_accuracy"]
    assert not np.any(~rob & clean & (dist > 0.5 * (1 + 1e-4)))
    delta = (res["adversarial_images"]["pgd10"] - x).reshape(len(x), -1)
    assert np.linalg.norm(delta, axis=1).max() <= 0.5 * (1 + 1e-5)
    with pytest.raises(ValueError, match="L1"):
        evaluation.evaluate(_predict(linear), x, y, norm="L1", eps=1.0, attacks=("pgd",), sanity=False)

    c = config.load("default")
    assert c.eval.autoattack == "custom" and tuple(c.eval.autoattack_attacks) == ("apgd-ce", "apgd-t")
    for field, value, msg in (
        ("autoattack", "fast", "eval.autoattack"),
        ("autoattack_attacks", ("apgd-ce", "cw"), "eval.autoattack_attacks"),
        ("autoattack_attacks", (), "autoattack_attacks"),
    ):
        bad = config.load("default")
        bad.eval[field] = value
        with pytest.raises(config.ConfigError, match=msg):
            config.validate(bad)
    ok = config.load("default")
    ok.eval.update(
        dict(
            norm="L1", eps=12.0, attacks=("clean", "autoattack"), autoattack="standard", autoattack_attacks=()
        )
    )
    ok.analysis.enabled = False  # the analysis' PGD latents exist for Linf / L2 only
    config.validate(ok)  # L2 / L1 radii above 1 are valid up to the box's diameter (64 for 8x8x1 in L1)
