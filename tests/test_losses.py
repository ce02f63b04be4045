"""Tests of ascl_jax.losses against plain-numpy references written from the equations.

The references below loop over rows in numpy on purpose: they follow ASCL Table 1 / Eq. 1-2 and
SPEC §1.2-1.3 (masks, softmax over positives and selected negatives, 1/max(#pos, 1), mean over all
rows), SupContrast's SupConLoss (SPEC §2), ACL's nt_xent formula (SPEC §3.1, including its
"subtract e^{1/t}" self term), KL / CE / TRADES / distillation (SPEC §1.1, §3.6, §3.7).
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ascl_jax import losses

SIMS = ("cosine", "dot", "neg_l1", "neg_l2", "neg_linf")
STRATS = ("global", "hard", "soft", "leaked")
HYP = dict(max_examples=25, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])


# Jitted entry points (one compilation per shape/config instead of one per primitive in eager mode).
sel = jax.jit(losses.selection_masks, static_argnames=("strategy", "always_pull_own_view"))
mcl = jax.jit(losses.masked_contrastive_loss, static_argnames=("similarity", "normalize"))
ascl = jax.jit(
    losses.ascl_loss, static_argnames=("strategy", "similarity", "normalize", "always_pull_own_view")
)
supcon = jax.jit(losses.supcon_loss, static_argnames=("contrast_mode",))
ntx = jax.jit(losses.nt_xent_loss)
kl = jax.jit(losses.kl_divergence, static_argnames=("reduction",))
ce = jax.jit(losses.cross_entropy, static_argnames=("reduction",))
distill = jax.jit(losses.soft_distillation)


# ------------------------------------------------------------------------------------------------
# numpy references
# ------------------------------------------------------------------------------------------------
def np_masks(labels, preds, strategy, ids=None, pull=False):
    """ASCL Table 1 with the code's rules (SPEC §1.2), one entry at a time."""
    n = len(labels)
    if ids is None:
        ids = np.arange(n) % (n // 2)
    pos = np.zeros((n, n), bool)
    neg = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            same = labels[j] == labels[i]
            if strategy == "global":
                pos[i, j], neg[i, j] = same, not same
            elif strategy == "hard":
                pos[i, j], neg[i, j] = same, (not same) and preds[j] == labels[i]
            elif strategy == "soft":
                pos[i, j], neg[i, j] = same, (not same) and preds[j] == preds[i]
            elif strategy == "merge":
                pos[i, j] = same
                neg[i, j] = (not same) and (preds[j] == labels[i] or preds[j] == preds[i])
            else:  # leaked
                pos[i, j] = same and preds[j] == preds[i]
                neg[i, j] = (not same) and preds[j] == preds[i]
            if pull and ids[i] == ids[j]:
                pos[i, j], neg[i, j] = True, False
    return pos, neg


def np_sim(a, b, similarity):
    """sim = -distance (SPEC §1.3); cosine and dot are similarities already."""
    if similarity == "cosine":
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    if similarity == "dot":
        return a @ b
    if similarity == "neg_l1":
        return -np.sum(np.abs(a - b))
    if similarity == "neg_l2":
        return -np.sqrt(np.sum((a - b) ** 2))
    return -np.max(np.abs(a - b))


def np_contrastive(z, pos, neg, similarity="cosine", tau=0.07, normalize=False):
    """ASCL Eq. 1-2 per anchor, code normalisation 1/max(#pos, 1), mean over all rows."""
    z = np.asarray(z, np.float64)
    if normalize:
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    n = len(z)
    per = np.zeros(n)
    for i in range(n):
        legal = [j for j in range(n) if pos[i, j] or neg[i, j]]
        positives = [j for j in range(n) if pos[i, j]]
        if not positives:
            continue
        s = {j: np_sim(z[i], z[j], similarity) / tau for j in legal}
        m = max(s.values())
        lse = m + np.log(sum(np.exp(v - m) for v in s.values()))
        per[i] = -np.mean([s[j] - lse for j in positives])
    return per.mean(), per, pos.sum(1), neg.sum(1)


def np_supcon(features, labels=None, temperature=0.07, base_temperature=0.07, mode="all"):
    """SupContrast SupConLoss with the max(#pos, 1) fix (SPEC §2), anchor by anchor."""
    f = np.asarray(features, np.float64)
    bsz, views, _ = f.shape
    contrast = [(v, i) for v in range(views) for i in range(bsz)]
    anchors = contrast if mode == "all" else [(0, i) for i in range(bsz)]
    lab = np.arange(bsz) if labels is None else np.asarray(labels)
    out = []
    for a_idx, (va, ia) in enumerate(anchors):
        logits = {}
        for c_idx, (vc, ic) in enumerate(contrast):
            if c_idx != a_idx:
                logits[c_idx] = f[ia, va] @ f[ic, vc] / temperature
        lse = np.log(sum(np.exp(v) for v in logits.values()))
        positives = [c for c in logits if lab[contrast[c][1]] == lab[ia]]
        mlpp = sum(logits[c] - lse for c in positives) / max(len(positives), 1)
        out.append(-(temperature / base_temperature) * mlpp)
    return np.mean(out)


def np_nt_xent_acl(z1, z2, t=0.5):
    """ACL utils.py::nt_xent literally: interleaved rows, column sums minus the constant e^{1/t}."""
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    x = np.stack([z1, z2], 1).reshape(2 * len(z1), -1)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    e = np.exp(x @ x.T / np.maximum(nrm * nrm.T, 1e-8) / t)
    vals = []
    for j in range(len(x)):
        partner = j + 1 if j % 2 == 0 else j - 1
        vals.append(-np.log(e[partner, j] / (e[:, j].sum() - np.exp(1 / t))))
    return np.mean(vals)


def np_softmax(a):
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape)


def ascl_batch(seed, b=6, d=5, num_classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, b)
    return (
        rng.normal(size=(b, d)),
        rng.normal(size=(b, d)),
        y,
        rng.normal(size=(b, num_classes)),
        rng.normal(size=(b, num_classes)),
    )


# ------------------------------------------------------------------------------------------------
# selection masks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATS + ("merge",))
@pytest.mark.parametrize("pull", [False, True])
def test_masks_match_reference(strategy, pull):
    rng = np.random.default_rng(1)
    labels = np.tile(rng.integers(0, 3, 10), 2)
    preds = rng.integers(0, 3, 20)
    pos, neg = sel(labels, preds, strategy, always_pull_own_view=pull)
    rpos, rneg = np_masks(labels, preds, strategy, pull=pull)
    assert pos.dtype == jnp.bool_ and pos.shape == (20, 20)
    np.testing.assert_array_equal(pos, rpos)
    np.testing.assert_array_equal(neg, rneg)
    assert not np.any(np.diag(pos)) and not np.any(np.diag(neg))
    assert not np.any(np.asarray(pos) & np.asarray(neg))


def test_masks_crafted_table1():
    # b = 3: labels y = [0, 0, 1]; natural preds p = [0, 1, 0]; adversarial preds p^a = [1, 1, 0].
    labels = np.array([0, 0, 1, 0, 0, 1])
    preds = np.array([0, 1, 0, 1, 1, 0])
    pos, neg = sel(labels, preds, "leaked")
    # Anchor 0 (y=0, p=0): same-label rows 1, 3, 4 predict 1 -> no leaked positive, own view (3)
    # excluded; different-label rows 2 (p=0) and 5 (p^a=0) are leaked negatives.
    np.testing.assert_array_equal(pos[0], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(neg[0], [0, 0, 1, 0, 0, 1])
    # Anchor 1 (y=0, p=1): rows 3, 4 share label and prediction, own view 4 included.
    np.testing.assert_array_equal(pos[1], [0, 0, 0, 1, 1, 0])
    pos_p, _ = sel(labels, preds, "leaked", always_pull_own_view=True)
    np.testing.assert_array_equal(pos_p[0], [0, 0, 0, 1, 0, 0])  # paper wording: own view pulled
    _, hard = sel(labels, preds, "hard")
    # Hard: other-label rows predicted as the anchor's TRUE label. Anchor 2 (y=1): rows predicted 1
    # with label 0 are rows 1, 3, 4. Anchor 5 (adversarial, y=1, p^a=0) uses its label too.
    np.testing.assert_array_equal(hard[2], [0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(hard[5], [0, 1, 0, 1, 1, 0])
    _, soft = sel(labels, preds, "soft")
    # Soft: anchor 5 uses its own (adversarial) prediction 0: rows 0 (p=0) only.
    np.testing.assert_array_equal(soft[5], [1, 0, 0, 0, 0, 0])


def test_masks_instance_ids_two_augmentations():
    # 4b rows [nat aug1; nat aug2; adv aug1; adv aug2] of b = 3 images.
    b = 3
    labels = np.tile([0, 1, 2], 4)
    preds = np.array([0, 1, 2, 1, 1, 2, 2, 0, 2, 0, 0, 1])
    ids = np.tile(np.arange(b), 4)
    pos, neg = sel(labels, preds, "leaked", instance_ids=ids, always_pull_own_view=True)
    rpos, rneg = np_masks(labels, preds, "leaked", ids=ids, pull=True)
    np.testing.assert_array_equal(pos, rpos)
    np.testing.assert_array_equal(neg, rneg)
    np.testing.assert_array_equal(pos[0], [0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0])
    # odd n is fine with explicit instance ids
    sel(labels[:5], preds[:5], "global", instance_ids=np.arange(5))


@hypothesis.settings(**HYP)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    b=st.sampled_from([2, 3, 5]),
    strategy=st.sampled_from(STRATS),
    pull=st.booleans(),
)
def test_masks_property_reference(seed, b, strategy, pull):
    rng = np.random.default_rng(seed)
    labels = np.tile(rng.integers(0, 3, b), 2)
    preds = rng.integers(0, 3, 2 * b)
    pos, neg = sel(labels, preds, strategy, always_pull_own_view=pull)
    rpos, rneg = np_masks(labels, preds, strategy, pull=pull)
    np.testing.assert_array_equal(pos, rpos)
    np.testing.assert_array_equal(neg, rneg)


# ------------------------------------------------------------------------------------------------
# masked contrastive loss: values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", SIMS)
@pytest.mark.parametrize("strategy", STRATS)
def test_contrastive_matches_reference_float32(similarity, strategy):
    rng = np.random.default_rng(7)
    b, d = 8, 6
    labels = np.tile(rng.integers(0, 3, b), 2)
    preds = rng.integers(0, 3, 2 * b)
    z = rng.normal(size=(2 * b, d)).astype(np.float32)
    pos, neg = np_masks(labels, preds, strategy)
    normalize = similarity != "cosine"
    loss, aux = mcl(jnp.asarray(z), pos, neg, similarity=similarity, temperature=0.2, normalize=normalize)
    ref, per, npos, nneg = np_contrastive(z, pos, neg, similarity, 0.2, normalize)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, ref, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(aux["per_anchor"], per, rtol=2e-5, atol=1e-5)
    np.testing.assert_array_equal(aux["num_positives"], npos)
    np.testing.assert_array_equal(aux["num_negatives"], nneg)


@pytest.mark.parametrize("similarity", SIMS)
def test_contrastive_matches_reference_float64(similarity):
    rng = np.random.default_rng(3)
    labels = np.tile(rng.integers(0, 3, 7), 2)
    preds = rng.integers(0, 3, 14)
    z = rng.normal(size=(14, 4))
    pos, neg = np_masks(labels, preds, "leaked", pull=True)
    with jax.enable_x64(True):
        loss, aux = mcl(jnp.asarray(z), pos, neg, similarity=similarity, temperature=0.07)
        assert loss.dtype == jnp.float64 and aux["per_anchor"].dtype == jnp.float64
        ref, per, _, _ = np_contrastive(z, pos, neg, similarity, 0.07)
        np.testing.assert_allclose(loss, ref, rtol=1e-12)
        np.testing.assert_allclose(aux["per_anchor"], per, rtol=1e-12, atol=1e-13)


def test_edge_only_positive_is_own_view():
    # All labels distinct: under Global each anchor's only positive is its own view, so
    # loss_i = -log softmax over {own view} U {all other rows}.
    z = rand(0, 8, 3)
    labels = np.tile(np.arange(4), 2)
    preds = np.tile(np.arange(4), 2)
    pos, neg = sel(labels, preds, "global")
    np.testing.assert_array_equal(pos, np.roll(np.eye(8, dtype=bool), 4, axis=1))
    with jax.enable_x64(True):
        loss, aux = mcl(jnp.asarray(z), pos, neg, temperature=0.5)
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        s = zn @ zn.T / 0.5
        np.fill_diagonal(s, -np.inf)
        per = -(s[np.arange(8), (np.arange(8) + 4) % 8] - np.log(np.exp(s).sum(1)))
        np.testing.assert_allclose(aux["per_anchor"], per, rtol=1e-12)
        np.testing.assert_array_equal(aux["num_positives"], np.ones(8))


def test_edge_no_legal_entry_leaked_zero_loss_and_grad():
    # Row 0 predicts class 2, nobody else does: under Leaked it has no legal entry at all
    # (no positive, no negative) and appears in no other anchor's softmax.
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    preds = np.array([2, 1, 0, 1, 0, 0, 0, 1])
    pos, neg = sel(labels, preds, "leaked")
    assert not pos[0].any() and not neg[0].any() and not pos[:, 0].any() and not neg[:, 0].any()
    z = jnp.asarray(rand(1, 8, 4), jnp.float32)
    for similarity in SIMS:
        f = lambda zz: mcl(zz, pos, neg, similarity=similarity)
        (loss, aux), g = jax.jit(jax.value_and_grad(f, has_aux=True))(z)
        assert aux["per_anchor"][0] == 0.0
        assert aux["num_positives"][0] == 0 and aux["num_negatives"][0] == 0
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g[0]) == 0.0)
        ref, *_ = np_contrastive(np.asarray(z), pos, neg, similarity, 0.07)
        np.testing.assert_allclose(loss, ref, rtol=2e-5)


def test_edge_all_rows_without_legal_entries():
    z = jnp.asarray(rand(2, 4, 3), jnp.float32)
    empty = jnp.zeros((4, 4), bool)
    (loss, aux), g = jax.value_and_grad(lambda zz: mcl(zz, empty, empty, similarity="neg_l2"), has_aux=True)(
        z
    )
    assert loss == 0.0 and np.all(np.asarray(g) == 0.0)
    assert np.all(np.asarray(aux["per_anchor"]) == 0.0)


@pytest.mark.parametrize("strategy", ["hard", "soft"])
def test_edge_rows_without_negatives(strategy):
    # Predictions are all 2 (no label is 2) -> no hard negatives; soft: each anchor's prediction 2
    # matches every row, so soft keeps negatives; craft soft separately with unique predictions.
    labels = np.array([0, 1, 0, 0, 1, 0])
    preds = np.full(6, 2) if strategy == "hard" else np.array([0, 1, 2, 3, 4, 5])
    pos, neg = sel(labels, preds, strategy)
    assert not np.asarray(neg).any()
    z = rand(4, 6, 5)
    with jax.enable_x64(True):
        loss, aux = mcl(jnp.asarray(z), pos, neg, similarity="neg_linf", normalize=True)
        ref, per, _, _ = np_contrastive(z, pos, neg, "neg_linf", 0.07, True)
        np.testing.assert_allclose(aux["per_anchor"], per, rtol=1e-12)
        np.testing.assert_allclose(loss, ref, rtol=1e-12)
    # Anchor 1 (label 1) has a single positive (row 4) and no negative: log-prob 0 -> loss 0.
    assert float(aux["per_anchor"][1]) == 0.0


def test_identical_views_neg_l2_finite_gradient():
    # z_adv == z_nat: distance 0 between an anchor and its own view (and on the diagonal). The
    # authors' code gives NaN gradients here; ours must be finite and match finite differences.
    zn = rand(5, 4, 3)
    y = np.array([0, 1, 0, 1])
    logits = np.eye(2)[y] * 3.0
    with jax.enable_x64(True):
        f = lambda a, b: ascl(
            a, b, y, logits, logits, strategy="global", similarity="neg_l2", normalize=True, temperature=0.2
        )[0]
        f = jax.jit(f)
        ga, gb = jax.jit(jax.grad(f, (0, 1)))(jnp.asarray(zn), jnp.asarray(zn))
        assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
        ref, *_ = np_contrastive(
            np.concatenate([zn, zn]), *np_masks(np.tile(y, 2), np.tile(y, 2), "global"), "neg_l2", 0.2, True
        )
        np.testing.assert_allclose(f(jnp.asarray(zn), jnp.asarray(zn)), ref, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("similarity", SIMS)
def test_gradient_vs_numpy_finite_differences(similarity):
    rng = np.random.default_rng(11)
    labels = np.tile(rng.integers(0, 2, 5), 2)
    preds = rng.integers(0, 2, 10)
    preds[0] = 5  # one row with no legal entry
    pos, neg = np_masks(labels, preds, "leaked")
    z = rng.normal(size=(10, 4))
    normalize = similarity != "cosine"
    with jax.enable_x64(True):
        g = jax.jit(
            jax.grad(
                lambda zz: mcl(zz, pos, neg, similarity=similarity, temperature=0.3, normalize=normalize)[0]
            )
        )(jnp.asarray(z))
        g = np.asarray(g)
    assert np.all(g[0] == 0.0)
    h = 1e-6
    for _ in range(3):
        v = rng.normal(size=z.shape)
        fp = np_contrastive(z + h * v, pos, neg, similarity, 0.3, normalize)[0]
        fm = np_contrastive(z - h * v, pos, neg, similarity, 0.3, normalize)[0]
        np.testing.assert_allclose(np.sum(g * v), (fp - fm) / (2 * h), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("similarity", ["cosine", "neg_l2", "neg_linf"])
def test_check_grads_ascl(similarity):
    zn, za, y, ln, la = ascl_batch(2, b=4, d=3)
    with jax.enable_x64(True):
        f = lambda a, b: ascl(
            a,
            b,
            y,
            ln,
            la,
            strategy="leaked",
            similarity=similarity,
            temperature=0.5,
            normalize=similarity != "cosine",
            always_pull_own_view=True,
        )[0]
        check_grads(jax.jit(f), (jnp.asarray(zn), jnp.asarray(za)), order=1, modes=("rev",), eps=1e-6)


def test_other_losses_gradients():
    with jax.enable_x64(True):
        a, b = jnp.asarray(rand(1, 5, 4)), jnp.asarray(rand(2, 5, 4))
        feats = jnp.asarray(rand(3, 5, 2, 4))
        labels = jnp.array([0, 1, 0, 1, 2])

        def total(p, q, f):
            return kl(p, q) + ntx(p, q) + supcon(f, labels) + distill(p, q, 2.0)

        check_grads(jax.jit(total), (a, b, feats), 1, modes=("rev",), eps=1e-6)


def test_ascl_no_gradient_through_predictions():
    zn, za, y, ln, la = ascl_batch(4)
    f = lambda l1, l2: ascl(zn.astype(np.float32), za.astype(np.float32), y, l1, l2)[0]
    g1, g2 = jax.grad(f, (0, 1))(jnp.asarray(ln, jnp.float32), jnp.asarray(la, jnp.float32))
    assert np.all(np.asarray(g1) == 0) and np.all(np.asarray(g2) == 0)


def test_distances_and_custom_gradients_vs_eager_autodiff():
    # Our L1 / L2 / Linf distances have a custom VJP and run in row blocks; compare them, jitted and
    # after an L2 normalisation (the case where plain autodiff under jit went wrong on CPU), with
    # plain broadcasting + autodiff in eager mode. 11 rows of 5 features with blocks of 60
    # elements = 1 row exercises lax.map with a remainder. The weights include the diagonal.
    x = jnp.asarray(rand(6, 11, 5))
    w = jnp.asarray(rand(7, 11, 11))
    plain = {
        "neg_l1": lambda v: -jnp.sum(jnp.abs(v[:, None] - v[None]), -1),
        "neg_l2": lambda v: (
            -jnp.sqrt(jnp.sum(jnp.square(v[:, None] - v[None]), -1) + jnp.eye(11)) * (1 - jnp.eye(11))
        ),
        "neg_linf": lambda v: -jnp.max(jnp.abs(v[:, None] - v[None]), -1),
    }
    with jax.enable_x64(True):
        x, w = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)

        @jax.jit
        def ours(xx):
            out = {}
            for similarity in plain:
                for block in (None, 60):
                    f = lambda v: jnp.sum(
                        w
                        * jnp.sin(
                            losses.pairwise_similarity(
                                losses.l2_normalize(v), similarity, max_block_elements=block
                            )
                        )
                    )
                    out[f"{similarity}/{block}"] = jax.value_and_grad(f)(xx)
            return out

        out = ours(x)
        for key, (val, grad) in out.items():
            similarity = key.split("/")[0]
            f = lambda v: jnp.sum(w * jnp.sin(plain[similarity](losses.l2_normalize(v))))
            ref_val, ref_grad = jax.value_and_grad(f)(x)
            np.testing.assert_allclose(val, ref_val, rtol=1e-12, err_msg=similarity)
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12, err_msg=similarity)


# ------------------------------------------------------------------------------------------------
# ascl_loss, supcon, nt-xent
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATS)
def test_ascl_loss_reference_and_counts(strategy):
    zn, za, y, ln, la = ascl_batch(9, b=8)
    loss, aux = jax.jit(
        functools.partial(
            losses.ascl_loss, strategy=strategy, similarity="neg_linf", temperature=0.2, normalize=True
        )
    )(zn.astype(np.float32), za.astype(np.float32), y, ln.astype(np.float32), la.astype(np.float32))
    labels = np.tile(y, 2)
    preds = np.concatenate([ln.argmax(1), la.argmax(1)])
    pos, neg = np_masks(labels, preds, strategy)
    ref, per, npos, nneg = np_contrastive(np.concatenate([zn, za]), pos, neg, "neg_linf", 0.2, True)
    np.testing.assert_allclose(loss, ref, rtol=2e-5)
    np.testing.assert_array_equal(aux["preds"], preds)
    np.testing.assert_allclose(aux["num_positives_nat"], npos[:8].mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["num_positives_adv"], npos[8:].mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["num_negatives_nat"], nneg[:8].mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["num_negatives_adv"], nneg[8:].mean(), rtol=1e-6)


@hypothesis.settings(**HYP)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    strategy=st.sampled_from(STRATS),
    similarity=st.sampled_from(SIMS),
    pull=st.booleans(),
)
def test_property_permutation_equivariance(seed, strategy, similarity, pull):
    rng = np.random.default_rng(seed)
    n = 8
    labels = np.tile(rng.integers(0, 3, n // 2), 2)
    preds = rng.integers(0, 3, n)
    ids = np.arange(n) % (n // 2)
    z = rng.normal(size=(n, 3)).astype(np.float32)
    perm = rng.permutation(n)
    pos, neg = sel(labels, preds, strategy, instance_ids=ids, always_pull_own_view=pull)
    ppos, pneg = sel(labels[perm], preds[perm], strategy, instance_ids=ids[perm], always_pull_own_view=pull)
    np.testing.assert_array_equal(ppos, np.asarray(pos)[perm][:, perm])
    np.testing.assert_array_equal(pneg, np.asarray(neg)[perm][:, perm])
    loss, aux = mcl(z, pos, neg, similarity=similarity, temperature=0.5, normalize=True)
    ploss, paux = mcl(z[perm], ppos, pneg, similarity=similarity, temperature=0.5, normalize=True)
    np.testing.assert_allclose(paux["per_anchor"], np.asarray(aux["per_anchor"])[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ploss, loss, rtol=1e-5, atol=1e-6)
    # counts equal the mask sums
    np.testing.assert_array_equal(aux["num_positives"], np.asarray(pos).sum(1))
    np.testing.assert_array_equal(aux["num_negatives"], np.asarray(neg).sum(1))


@hypothesis.settings(**HYP)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.07, 0.2, 0.5]))
def test_property_global_cosine_equals_supcon(seed, temperature):
    zn, za, y, ln, la = ascl_batch(seed, b=5, d=4)
    loss, _ = ascl(
        zn.astype(np.float32),
        za.astype(np.float32),
        y,
        ln.astype(np.float32),
        la.astype(np.float32),
        strategy="global",
        similarity="cosine",
        temperature=temperature,
    )
    feats = np.stack(
        [zn / np.linalg.norm(zn, axis=1, keepdims=True), za / np.linalg.norm(za, axis=1, keepdims=True)], 1
    )
    sc = supcon(feats.astype(np.float32), y, temperature=temperature, base_temperature=temperature)
    np.testing.assert_allclose(loss, sc, rtol=3e-5)
    np.testing.assert_allclose(sc, np_supcon(feats, y, temperature, temperature), rtol=3e-5)


@hypothesis.settings(**HYP)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([2, 5]))
def test_property_nt_xent_equals_supcon_simclr(seed, n):
    z1, z2 = rand(seed, n, 4).astype(np.float32), rand(seed + 1, n, 4).astype(np.float32)
    nt = ntx(z1, z2, temperature=0.5)
    feats = np.stack(
        [z1 / np.linalg.norm(z1, axis=1, keepdims=True), z2 / np.linalg.norm(z2, axis=1, keepdims=True)], 1
    )
    sc = supcon(feats, None, temperature=0.5, base_temperature=0.5)
    np.testing.assert_allclose(nt, sc, rtol=2e-5)
    np.testing.assert_allclose(nt, np_nt_xent_acl(z1, z2, 0.5), rtol=2e-5)


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_supcon_reference(mode, with_labels):
    feats = rand(8, 6, 3, 4)  # un-normalised on purpose: not normalised inside
    labels = np.array([0, 1, 0, 2, 1, 3]) if with_labels else None
    with jax.enable_x64(True):
        out = supcon(
            jnp.asarray(feats),
            None if labels is None else jnp.asarray(labels),
            temperature=0.1,
            base_temperature=0.07,
            contrast_mode=mode,
        )
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, np_supcon(feats, labels, 0.1, 0.07, mode), rtol=1e-12)
    # label 3 occurs once: with a single view its anchor has no positive -> finite (max(.,1) fix)
    single = supcon(jnp.asarray(feats[:, :1], jnp.float32), labels)
    assert np.isfinite(single)


def test_supcon_mask_argument_equals_labels():
    feats = jnp.asarray(rand(3, 4, 2, 3), jnp.float32)
    labels = jnp.array([0, 1, 1, 0])
    mask = labels[:, None] == labels[None, :]
    np.testing.assert_allclose(supcon(feats, mask=mask), supcon(feats, labels), rtol=1e-6)


def test_nt_xent_reference_float64_and_optax():
    z1, z2 = rand(20, 6, 5), rand(21, 6, 5)
    with jax.enable_x64(True):
        nt = ntx(jnp.asarray(z1), jnp.asarray(z2), temperature=0.5)
        assert nt.dtype == jnp.float64
        np.testing.assert_allclose(nt, np_nt_xent_acl(z1, z2, 0.5), rtol=1e-12)
    optax = pytest.importorskip("optax")
    ids = np.concatenate([np.arange(6), np.arange(6)])
    ref = jax.jit(optax.losses.ntxent)(
        jnp.asarray(np.concatenate([z1, z2]), jnp.float32), jnp.asarray(ids), temperature=0.5
    )
    got = ntx(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_nt_xent_rows_per_anchor_reference():
    """Row i of nt_xent_rows is anchor i of [z1; z2] (ACL's formula, self term as e^{1/t}); its mean
    is nt_xent_loss; the terms are float32 whatever the input dtype."""
    z1, z2 = rand(22, 6, 5), rand(23, 6, 5)
    x = np.concatenate([z1, z2]).astype(np.float64)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    e = np.exp(x @ x.T / np.maximum(nrm * nrm.T, 1e-8) / 0.5)
    ref = [-np.log(e[i, (i + 6) % 12] / (e[i].sum() - np.exp(1 / 0.5))) for i in range(12)]
    rows = jax.jit(losses.nt_xent_rows)(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
    assert rows.shape == (12,) and rows.dtype == jnp.float32
    np.testing.assert_allclose(rows, ref, rtol=2e-5)
    f1, f2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    np.testing.assert_allclose(jnp.mean(rows), ntx(f1, f2), rtol=1e-5)
    with jax.enable_x64(True):
        assert losses.nt_xent_rows(jnp.asarray(z1), jnp.asarray(z2)).dtype == jnp.float32


# ------------------------------------------------------------------------------------------------
# KL, CE, TRADES, distillation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_kl_divergence_reference(reduction):
    p, q = rand(30, 7, 10), rand(31, 7, 10)
    pp, qq = np_softmax(p), np_softmax(q)
    rows = np.sum(pp * (np.log(pp) - np.log(qq)), 1)
    ref = {"batchmean": rows.sum() / 7, "mean": rows.sum() / 70, "sum": rows.sum(), "none": rows}[reduction]
    got = kl(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32), reduction=reduction)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    trades = jax.jit(losses.trades_kl)(p.astype(np.float32), q.astype(np.float32))
    np.testing.assert_allclose(trades, rows.sum() / 7, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_reference(reduction):
    logits = rand(40, 9, 4)
    labels = np.random.default_rng(41).integers(0, 4, 9)
    rows = -np.log(np_softmax(logits)[np.arange(9), labels])
    ref = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    with jax.enable_x64(True):
        got = ce(jnp.asarray(logits), jnp.asarray(labels), reduction=reduction)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_soft_distillation_reference():
    a, p = rand(50, 6, 5), rand(51, 6, 5)
    for t in (1.0, 4.0):
        ref = np.mean(np.sum(-np.log(np_softmax(a / t)) * np_softmax(p / t), 1))
        np.testing.assert_allclose(distill(a.astype(np.float32), p.astype(np.float32), t), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# jit and errors
# ------------------------------------------------------------------------------------------------
def test_jit_matches_eager_and_traced_temperature():
    zn, za, y, ln, la = ascl_batch(60)
    args = [np.asarray(a, np.float32) if a.dtype.kind == "f" else a for a in (zn, za, y, ln, la)]
    eager, _ = losses.ascl_loss(*args, similarity="dot", normalize=True, temperature=0.2)
    jitted = jax.jit(lambda t, *a: losses.ascl_loss(*a, similarity="dot", normalize=True, temperature=t)[0])(
        0.2, *args
    )
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


ERRORS = [
    (
        lambda: losses.selection_masks(np.zeros(4, int), np.zeros(4, int), "local"),
        r"strategy 'local'.*global, hard, soft, leaked",
    ),
    (lambda: losses.selection_masks(np.zeros(5, int), np.zeros(5, int), "global"), r"odd.*instance_ids"),
    (
        lambda: losses.selection_masks(np.zeros(4, int), np.zeros(6, int), "global"),
        r"labels and preds must have the same shape",
    ),
    (
        lambda: losses.masked_contrastive_loss(
            np.zeros((4, 2), np.float32), np.zeros((4, 4), bool), np.zeros((4, 4), bool), similarity="l2"
        ),
        r"similarity 'l2'.*cosine, dot, neg_l1, neg_l2, neg_linf",
    ),
    (
        lambda: losses.masked_contrastive_loss(
            np.zeros((4, 2), np.float32), np.zeros((4, 4), bool), np.zeros((4, 4), bool), temperature=0.0
        ),
        r"temperature must be positive",
    ),
    (
        lambda: losses.masked_contrastive_loss(
            np.zeros((4, 2), np.float32), np.zeros((3, 3), bool), np.zeros((4, 4), bool)
        ),
        r"positive must have shape",
    ),
    (
        lambda: losses.ascl_loss(
            np.zeros((4, 2), np.float32),
            np.zeros((3, 2), np.float32),
            np.zeros(4, int),
            np.zeros((4, 3)),
            np.zeros((4, 3)),
        ),
        r"z_nat and z_adv must have the same shape",
    ),
    (
        lambda: losses.ascl_loss(
            np.zeros((4, 2), np.float32),
            np.zeros((4, 2), np.float32),
            np.zeros(3, int),
            np.zeros((4, 3)),
            np.zeros((4, 3)),
        ),
        r"labels must have shape",
    ),
    (
        lambda: losses.supcon_loss(np.zeros((4, 2, 3), np.float32), contrast_mode="two"),
        r"contrast_mode 'two'.*all, one",
    ),
    (lambda: losses.supcon_loss(np.zeros((4, 3), np.float32)), r"features must have shape"),
    (
        lambda: losses.supcon_loss(np.zeros((4, 2, 3), np.float32), temperature=-1.0),
        r"temperature must be positive",
    ),
    (
        lambda: losses.nt_xent_loss(np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)),
        r"z1 and z2 must have the same shape",
    ),
    (
        lambda: losses.nt_xent_loss(np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), temperature=0),
        r"temperature must be positive",
    ),
    (
        lambda: losses.nt_xent_rows(np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)),
        r"z1 and z2 must have the same shape",
    ),
    (
        lambda: losses.kl_divergence(np.zeros((4, 3)), np.zeros((4, 3)), reduction="avg"),
        r"reduction 'avg'.*batchmean, mean, sum, none",
    ),
    (
        lambda: losses.cross_entropy(np.zeros((4, 3)), np.zeros(4, int), reduction="batchmean"),
        r"reduction 'batchmean'.*mean, sum, none",
    ),
    (lambda: losses.cross_entropy(np.zeros((4, 3)), np.zeros(5, int)), r"labels must have shape"),
    (
        lambda: losses.soft_distillation(np.zeros((4, 3)), np.zeros((4, 3)), 0.0),
        r"temperature must be positive",
    ),
]


@pytest.mark.parametrize("fn,match", ERRORS)
def test_errors(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_errors_are_raised_under_jit():
    z = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="similarity"):
        jax.jit(
            lambda zz: losses.masked_contrastive_loss(
                zz, jnp.zeros((4, 4), bool), jnp.zeros((4, 4), bool), similarity="euclid"
            )
        )(z)
    with pytest.raises(ValueError, match="odd"):
        jax.jit(lambda lab: losses.selection_masks(lab, lab, "leaked"))(jnp.zeros(3, jnp.int32))


# ------------------------------------------------------------------ padded rows (valid argument)


def _padded(rng, shape, b, pad):
    """(padded array [b + pad, ...] whose padding rows copy row 0, the real rows [b, ...])."""
    real = rng.standard_normal((b, *shape)).astype(np.float32)
    return jnp.asarray(np.concatenate([real, np.repeat(real[:1], pad, 0)])), jnp.asarray(real)


def _jit(fn, **static):
    """`fn` with its static keyword arguments bound, compiled as one program (op-by-op dispatch of
    every loss compiles each small op separately, which costs more than the losses themselves)."""
    return jax.jit(functools.partial(fn, **static))


def test_valid_argument_equals_the_loss_on_the_real_rows():
    """Every loss with `valid` equals the same loss on the batch without its padded rows; rows
    marked invalid are neither anchors nor positives nor negatives of the contrastive losses."""
    rng = np.random.default_rng(0)
    b, pad, c, d = 7, 3, 4, 5
    valid = jnp.arange(b + pad) < b
    lp, lr = _padded(rng, (c,), b, pad)
    lq, lqr = _padded(rng, (c,), b, pad)
    y = jnp.asarray(rng.integers(0, c, b + pad), jnp.int32).at[b:].set(0)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    for red in ("mean", "sum"):
        ce = _jit(losses.cross_entropy, reduction=red)
        close(ce(lp, y, valid=valid), ce(lr, y[:b]))
    for red in ("batchmean", "mean", "sum"):
        kl = _jit(losses.kl_divergence, reduction=red)
        close(kl(lp, lq, valid=valid), kl(lr, lqr))
    trades_kl = _jit(losses.trades_kl)
    close(trades_kl(lp, lq, valid=valid), trades_kl(lr, lqr))
    labelled = jnp.arange(b + pad) < 2
    semi = _jit(losses.acl_semi_supervised_loss)
    semi_m, aux_m = semi(lp, lq, y, lp * 2, labelled, valid=valid)
    semi_r, aux_r = semi(lr, lqr, y[:b], lr * 2, labelled[:b])
    close(semi_m, semi_r)
    jax.tree.map(close, aux_m, aux_r)

    zn, znr = _padded(rng, (d,), b, pad)
    za, zar = _padded(rng, (d,), b, pad)
    for strategy in ("global", "hard", "soft", "leaked"):
        ascl = _jit(losses.ascl_loss, strategy=strategy)
        got, aux_g = ascl(zn, za, y, lp, lq, valid=valid)
        want, aux_w = ascl(znr, zar, y[:b], lr, lqr)
        close(got, want)
        for k in ("num_positives_nat", "num_positives_adv", "num_negatives_nat", "num_negatives_adv"):
            close(aux_g[k], aux_w[k])
        rows = np.r_[0:b, b + pad : 2 * b + pad]
        np.testing.assert_array_equal(aux_g["num_positives"][rows], aux_w["num_positives"])
        assert not np.any(aux_g["num_positives"][b : b + pad]) and not np.any(
            aux_g["num_negatives"][b : b + pad]
        )
    feats = jnp.stack([zn, za], 1)
    for mode in ("all", "one"):
        supcon = _jit(losses.supcon_loss, contrast_mode=mode)
        close(supcon(feats, y, valid=valid), supcon(jnp.stack([znr, zar], 1), y[:b]))
    nt_xent, nt_xent_rows = _jit(losses.nt_xent_loss), _jit(losses.nt_xent_rows)
    close(nt_xent(zn, za, valid=valid), nt_xent(znr, zar))
    rows_m = nt_xent_rows(zn, za, valid=valid)
    rows_r = nt_xent_rows(znr, zar)
    close(rows_m[np.r_[0:b, b + pad : 2 * b + pad]], rows_r)
    np.testing.assert_array_equal(rows_m[b : b + pad], 0.0)
    # gradients of a padded row are zero, and finite everywhere
    g = jax.jit(jax.grad(lambda z: losses.nt_xent_rows(z, za, valid=valid).sum()))(zn)
    assert np.all(np.isfinite(g)) and not np.any(g[b:])
    pos, neg = _jit(losses.selection_masks, strategy="global")(
        jnp.tile(y, 2), jnp.tile(y, 2), valid=jnp.tile(valid, 2)
    )
    assert not np.any(pos[:, b : b + pad]) and not np.any(neg[b : b + pad])


def test_valid_none_is_the_unmasked_arithmetic():
    """valid=None (the default) gives bit-identical results to a call without the argument."""
    rng = np.random.default_rng(1)
    z1, z2 = (jnp.asarray(rng.standard_normal((6, 4)), jnp.float32) for _ in range(2))
    y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
    np.testing.assert_array_equal(losses.nt_xent_loss(z1, z2, valid=None), losses.nt_xent_loss(z1, z2))
    np.testing.assert_array_equal(
        losses.ascl_loss(z1, z2, y, z1[:, :3], z2[:, :3], valid=None)[0],
        losses.ascl_loss(z1, z2, y, z1[:, :3], z2[:, :3])[0],
    )
    np.testing.assert_array_equal(
        losses.cross_entropy(z1, y % 4, valid=None), losses.cross_entropy(z1, y % 4)
    )
