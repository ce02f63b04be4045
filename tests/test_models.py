"""Tests for ascl_jax.models: shapes, parameter counts, dual BN, branch selection, input checks.

Big architectures (ResNet-18, PreAct ResNet-18, WRN-34-10) are only traced with ``jax.eval_shape``;
real forwards use the tiny encoder, the CNN and ResNet-20 on small batches.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ascl_jax import models

CIFAR = (32, 32, 3)
DIGITS = (8, 8, 1)


@pytest.fixture(autouse=True)
def _fast_compile():
    """Compile with most XLA optimisations off (as flax's example tests do); restored afterwards so
    other test modules in the same worker are unaffected."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _cfg(**kw):
    base = dict(
        arch="tiny", head="identity", proj_dim=128, bn="single", bn_momentum=0.9, normalization="cifar10"
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _images(shape=CIFAR, b=4, seed=0):
    return jax.random.uniform(jax.random.key(seed), (b, *shape), jnp.float32)


def _build(image_shape=CIFAR, num_classes=10, **kw):
    if image_shape[-1] == 1 and "normalization" not in kw:
        kw["normalization"] = "digits"
    return models.build_model(_cfg(**kw), num_classes=num_classes, image_shape=image_shape)


def _init(model, x, seed=0):
    """Jitted ``model.init(key, x, train=False)`` (eager op-by-op dispatch is slow on CPU)."""
    return jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(seed), x)


def _apply(model, variables, x, *, train=False, bn="clean"):
    """Jitted apply; in train mode returns (out, updated batch_stats)."""
    if train:
        f = lambda v, x: model.apply(v, x, train=True, bn=bn, mutable=["batch_stats"])  # noqa: E731
    else:
        f = lambda v, x: model.apply(v, x, train=False, bn=bn)  # noqa: E731
    return jax.jit(f)(variables, x)


def _abstract_variables(model, image_shape=CIFAR):
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _perturb(variables, seed=1):
    """Randomises every leaf a little so that the two BN branches (and the params) differ."""

    @jax.jit
    def perturb(variables):
        leaves, treedef = jax.tree.flatten(variables)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        new = [leaf + 0.1 * jax.random.uniform(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
        return jax.tree.unflatten(treedef, new)

    return perturb(variables)


def _paths(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("arch", models.ARCHS)
def test_output_shapes_every_arch_abstract(arch):
    model = _build(arch=arch, head="acl_mlp", bn="dual", num_classes=7)
    variables = _abstract_variables(model)
    x = jax.ShapeDtypeStruct((3, *CIFAR), jnp.float32)
    out, upd = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, bn="adv", mutable=["batch_stats"]), variables, x
    )
    h = models.FEATURE_DIMS[arch]
    assert out["z"].shape == (3, h)
    assert out["proj"].shape == (3, h)  # acl_mlp width defaults to h
    assert out["logits"].shape == (3, 7)
    assert jax.tree.structure(upd["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.parametrize("head,proj_width", [("identity", 16), ("p1", 24), ("p2", 24), ("acl_mlp", 16)])
def test_output_shapes_every_head(head, proj_width):
    model = _build(arch="tiny", head=head, proj_dim=24)
    x = _images(b=5)
    variables = _init(model, x)
    out = _apply(model, variables, x)
    assert set(out) == {"z", "proj", "logits"}
    assert out["z"].shape == (5, 16)
    assert out["proj"].shape == (5, proj_width)
    assert out["logits"].shape == (5, 10)
    assert ("head" in variables["params"]) == (head != "identity")
    if head == "identity":
        np.testing.assert_array_equal(out["proj"], out["z"])
    for v in out.values():
        assert v.dtype == jnp.float32
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("arch", ["tiny", "cnn", "resnet20"])
def test_small_archs_run_on_digits(arch):
    model = _build(image_shape=DIGITS, arch=arch, head="p1", bn="dual")
    x = _images(DIGITS, b=3)
    variables = _init(model, x)
    out, _ = _apply(model, variables, x, train=True, bn="clean")
    assert out["z"].shape == (3, models.FEATURE_DIMS[arch])
    assert out["proj"].shape == (3, 128)
    assert out["logits"].shape == (3, 10)
    assert np.all(np.isfinite(out["logits"]))


def test_acl_mlp_options():
    model = _build(arch="tiny", head="acl_mlp", mlp_dim=12, mlp_layers=2)
    variables = _abstract_variables(model)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *CIFAR)), train=False), variables)
    assert out["proj"].shape == (2, 12)
    head = variables["params"]["head"]
    assert set(head) == {"fc1", "bn1", "fc2", "bn2"}
    assert "bias" in head["fc1"] and "bias" not in head["fc2"]


def test_jit_and_grad():
    model = _build(arch="tiny", head="p2", bn="dual")
    x = _images(b=4)
    variables = _init(model, x)

    @jax.jit
    def loss(params, x):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            bn="adv",
            mutable=["batch_stats"],
        )
        return jnp.sum(out["logits"] ** 2) + jnp.sum(out["proj"] ** 2)

    grads = jax.grad(loss)(variables["params"], x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # Only the adv branch receives gradients.
    bn1 = grads["encoder"]["bn1"]
    assert np.any(bn1["adv"]["scale"] != 0)
    assert np.all(bn1["clean"]["scale"] == 0)


# ------------------------------------------------------------------------------------- param counts

EXPECTED_COUNTS = {  # (single BN, dual BN), 10 classes, 32x32x3, head 'identity'
    "cnn": (427_978, 427_978),
    "resnet20": (272_474, 274_042),
    "resnet18": (11_173_962, 11_183_562),
    "preact_resnet18": (11_172_170, 11_179_978),
    "wrn34_10": (46_160_474, 46_182_906),
    "tiny": (1_586, 1_634),
}


@pytest.mark.parametrize("arch", models.ARCHS)
def test_param_counts(arch):
    single, dual = EXPECTED_COUNTS[arch]
    for bn, expected in (("single", single), ("dual", dual)):
        variables = _abstract_variables(_build(arch=arch, bn=bn))
        assert models.count_params(variables["params"]) == expected, (arch, bn)


def test_param_counts_by_hand():
    # ResNet-20 with projection shortcuts (peer benchmark layout), by hand:
    stem = 3 * 16 * 9 + 2 * 16
    stage1 = 3 * (2 * 16 * 16 * 9 + 2 * 2 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32 + 16 * 32 + 2 * 32) + 2 * (2 * 32 * 32 * 9 + 2 * 2 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64 + 32 * 64 + 2 * 64) + 2 * (2 * 64 * 64 * 9 + 2 * 2 * 64)
    assert stem + stage1 + stage2 + stage3 + 64 * 10 + 10 == EXPECTED_COUNTS["resnet20"][0]
    # The CNN on 8x8x1 digits (README, models docstring): 'SAME' convs there, so the flatten sees
    # 2x2x64 instead of 32x32's 5x5x64 (the first dense layer), and conv1 has 1 input channel, not 3.
    digits = _abstract_variables(_build((8, 8, 1), arch="cnn"), (8, 8, 1))
    assert models.count_params(digits["params"]) == 158_602
    assert EXPECTED_COUNTS["cnn"][0] - 158_602 == (5 * 5 - 2 * 2) * 64 * 200 + 3 * 3 * (3 - 1) * 32
    # PreAct ResNet-18 = Kuang-Liu's 11,171,146 + ASCL's final BN(512).
    assert EXPECTED_COUNTS["preact_resnet18"][0] == 11_171_146 + 2 * 512
    # Dual BN doubles exactly the BN affine parameters (= number of running-stat entries).
    for arch in ("resnet20", "resnet18", "wrn34_10"):
        v = _abstract_variables(_build(arch=arch))
        single, dual = EXPECTED_COUNTS[arch]
        assert dual - single == models.count_params(v["batch_stats"])


def test_head_param_counts_resnet18():
    base = EXPECTED_COUNTS["resnet18"][0]
    extra = {
        "p1": 512 * 128 + 128,
        "p2": 512 * 200 + 200 * 128,
        "acl_mlp": 512 * 512 + 512 + 2 * 512 * 512 + 3 * 2 * 512,
    }
    for head, n in extra.items():
        v = _abstract_variables(_build(arch="resnet18", head=head))
        assert models.count_params(v["params"]) == base + n, head
    v = _abstract_variables(_build(arch="resnet18", head="acl_mlp", bn="dual"))
    assert models.count_params(v["params"]) == EXPECTED_COUNTS["resnet18"][1] + extra["acl_mlp"] + 3 * 2 * 512


# ------------------------------------------------------------------------------------- dual BN


def test_dual_bn_branch_params_and_stats_exist():
    model = _build(arch="tiny", head="acl_mlp", bn="dual")
    variables = _init(model, _images())
    paths = _paths(variables)
    for col, names in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var"))):
        for layer in ("encoder/bn1", "encoder/bn2", "head/bn1", "head/bn2", "head/bn3"):
            for branch in ("clean", "adv"):
                for n in names:
                    assert f"{col}/{layer}/{branch}/{n}" in paths
    assert models.has_dual_bn(variables)
    single = _init(_build(arch="tiny", head="acl_mlp"), _images())
    assert "params/encoder/bn1/scale" in _paths(single)
    assert not models.has_dual_bn(single)


@pytest.mark.parametrize("branch,other", [("adv", "clean"), ("clean", "adv")])
def test_dual_bn_updates_only_selected_branch(branch, other):
    model = _build(arch="tiny", head="acl_mlp", bn="dual")
    x = _images(b=8)
    variables = _init(model, x)
    _, upd = _apply(model, variables, x, train=True, bn=branch)
    old, new = variables["batch_stats"], upd["batch_stats"]
    for scope in ("encoder", "head"):
        for layer in old[scope]:
            for stat in ("mean", "var"):
                np.testing.assert_array_equal(new[scope][layer][other][stat], old[scope][layer][other][stat])
                assert not np.allclose(new[scope][layer][branch][stat], old[scope][layer][branch][stat])


def test_dual_bn_branches_give_different_outputs():
    model = _build(arch="tiny", bn="dual")
    x = _images()
    variables = _perturb(_init(model, x))
    clean = _apply(model, variables, x, bn="clean")["logits"]
    adv = _apply(model, variables, x, bn="adv")["logits"]
    assert not np.allclose(clean, adv)


def test_single_bn_ignores_bn_argument():
    model = _build(arch="tiny", bn="single")
    x = _images()
    variables = _init(model, x)
    a, ua = _apply(model, variables, x, train=True, bn="clean")
    b, ub = _apply(model, variables, x, train=True, bn="adv")
    np.testing.assert_array_equal(a["logits"], b["logits"])
    jax.tree.map(np.testing.assert_array_equal, ua, ub)


@pytest.mark.parametrize("branch", ["clean", "adv"])
def test_select_bn_branch_matches_dual_model(branch):
    kw = dict(arch="tiny", head="acl_mlp")
    dual_model, single_model = _build(bn="dual", **kw), _build(bn="single", **kw)
    x = _images(b=4)
    variables = _perturb(_init(dual_model, x))
    # Give the branches different running statistics too.
    _, upd = _apply(dual_model, variables, x, train=True, bn=branch)
    variables = {"params": variables["params"], "batch_stats": upd["batch_stats"]}

    selected = models.select_bn_branch(variables, branch)
    reference = _init(single_model, x)
    assert jax.tree.structure(selected) == jax.tree.structure(jax.tree.map(np.asarray, reference))
    assert jax.tree.map(np.shape, selected) == jax.tree.map(np.shape, reference)
    assert not models.has_dual_bn(selected)

    want = _apply(dual_model, variables, x, bn=branch)
    got = _apply(single_model, selected, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    other = _apply(dual_model, variables, x, bn="adv" if branch == "clean" else "clean")
    assert not np.allclose(got["logits"], other["logits"])


def test_select_bn_branch_rejects_bad_branch():
    with pytest.raises(ValueError, match="'clean', 'adv'"):
        models.select_bn_branch({"params": {}}, "normal")


def test_eval_and_train_mode_differ():
    model = _build(arch="tiny", bn="dual")
    x = _images(b=6)
    variables = _init(model, x)
    ev = _apply(model, variables, x)["z"]
    tr, _ = _apply(model, variables, x, train=True)
    assert not np.allclose(ev, tr["z"])
    # Eval mode is per-example: a sub-batch gives the same outputs.
    np.testing.assert_allclose(_apply(model, variables, x[:2])["z"], ev[:2], rtol=1e-5, atol=1e-6)


def test_bn_momentum_follows_flax_convention():
    model = _build(arch="tiny", bn_momentum=0.9)
    x = _images(b=8)
    variables = _init(model, x)
    _, upd = _apply(model, variables, x, train=True)
    y = (x - jnp.asarray(models.NORMALIZATION["cifar10"][0])) / jnp.asarray(
        models.NORMALIZATION["cifar10"][1]
    )
    conv = variables["params"]["encoder"]["conv1"]["kernel"]
    h = jax.lax.conv_general_dilated(
        y, conv, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        upd["batch_stats"]["encoder"]["bn1"]["mean"], 0.1 * jnp.mean(h, axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )


# ------------------------------------------------------------------------------------- utilities


def test_strip_head_and_reset_classifier():
    model = _build(arch="tiny", head="acl_mlp", bn="dual")
    x = _images()
    variables = _init(model, x)
    stripped = models.strip_head(variables)
    assert "head" not in stripped["params"] and "head" not in stripped["batch_stats"]
    finetune = models.reset_classifier(models.select_bn_branch(stripped, "adv"), num_classes=100)
    assert finetune["params"]["classifier"]["kernel"].shape == (16, 100)
    assert not np.any(finetune["params"]["classifier"]["kernel"])
    target = _build(arch="tiny", head="identity", num_classes=100)
    out = _apply(target, finetune, x)
    assert out["logits"].shape == (4, 100)
    np.testing.assert_array_equal(out["logits"], 0.0)
    assert jax.tree.structure(finetune) == jax.tree.structure(jax.tree.map(np.asarray, _init(target, x)))


def test_normalization_constants():
    assert set(models.NORMALIZATION) == {"cifar10", "cifar100", "imagenet", "digits", "fashion_mnist", "none"}
    from sklearn.datasets import load_digits

    d = load_digits().images / 16.0
    mean, std = models.NORMALIZATION["digits"]
    np.testing.assert_allclose([d.mean(), d.std()], [mean[0], std[0]], atol=1e-4)
    # Normalisation is the first op: a 'none' model on (x - m) / s ... equals a 'cifar10' model on x
    # when x is fed in [0, 1]; check via z of a BN-free CNN with identical params.
    x = _images()
    a, b = _build(arch="cnn", normalization="cifar10"), _build(arch="cnn", normalization="none")
    v = _init(a, x)
    m, s = (jnp.asarray(t) for t in models.NORMALIZATION["cifar10"])
    xn = (x - m) / s
    forward_none = lambda inp: b.apply(v, inp, train=False)["z"]  # noqa: E731
    with pytest.raises(ValueError):
        forward_none(xn)  # normalised images are outside [0, 1]: rejected
    np.testing.assert_allclose(_apply(a, v, x)["z"], jax.jit(forward_none)(xn), rtol=1e-5, atol=1e-5)


def test_count_params_on_arrays_and_shapes():
    tree = {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros((5,))}}
    assert models.count_params(tree) == 17
    assert models.count_params(jax.eval_shape(lambda: tree)) == 17


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field,value", [("arch", "resnet50"), ("head", "mlp"), ("bn", "triple"), ("normalization", "mnist")]
)
def test_unknown_config_values_name_allowed(field, value):
    allowed = {
        "arch": models.ARCHS,
        "head": models.HEADS,
        "bn": models.BN_TYPES,
        "normalization": tuple(models.NORMALIZATION),
    }[field]
    with pytest.raises(ValueError) as err:
        _build(**{field: value})
    msg = str(err.value)
    assert f"model.{field}" in msg and repr(value) in msg
    for name in allowed:
        assert repr(name) in msg


def test_bad_config_numbers_and_shapes():
    with pytest.raises(ValueError, match="proj_dim"):
        _build(proj_dim=0)
    with pytest.raises(ValueError, match="num_classes"):
        _build(num_classes=0)
    with pytest.raises(ValueError, match="image_shape"):
        models.build_model(_cfg(), num_classes=10, image_shape=(32, 32))
    with pytest.raises(ValueError, match="channels"):
        models.build_model(_cfg(normalization="cifar10"), num_classes=10, image_shape=DIGITS)
    with pytest.raises(ValueError, match="conv_init"):
        _build(conv_init="xavier")
    # Plain dicts and attribute objects work as configs too.
    assert isinstance(
        models.build_model({"arch": "tiny"}, num_classes=3, image_shape=CIFAR), models.ASCLModel
    )


def test_bad_bn_call_argument():
    model = _build(arch="tiny", bn="dual")
    x = _images()
    variables = _init(model, x)
    with pytest.raises(ValueError, match="'clean', 'adv'"):
        model.apply(variables, x, train=False, bn="pgd")
    single = _build(arch="tiny")
    with pytest.raises(ValueError, match="'clean', 'adv'"):
        single.apply(_init(single, x), x, train=False, bn="normal")


def test_bad_images():
    model = _build(arch="tiny")
    x = _images()
    variables = _init(model, x)
    with pytest.raises(ValueError, match="rank 4"):
        model.apply(variables, x[0], train=False)
    with pytest.raises(ValueError, match="rank 4"):
        model.apply(variables, x[None], train=False)
    with pytest.raises(ValueError, match="3 channels"):
        model.apply(variables, jnp.zeros((2, 32, 32, 1)), train=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.apply(variables, x * 255.0, train=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.apply(variables, x - 0.5, train=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.init(jax.random.key(0), x + 1.0, train=False)
    with pytest.raises(ValueError, match="floating"):
        model.apply(variables, (x * 255).astype(jnp.uint8), train=False)
    # Traced inputs cannot be range-checked; shapes still are.
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert out["logits"].shape == (4, 10)
    with pytest.raises(ValueError, match="rank 4"):
        jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x[0])
    # Boundary values are fine; numpy inputs too.
    model.apply(
        variables,
        np.concatenate([np.zeros((1, *CIFAR)), np.ones((1, *CIFAR))]).astype(np.float32),
        train=False,
    )


# ------------------------------------------------------------------ BN running variance and masks


def _torch_style_bn_update(x, running_mean, running_var, momentum, valid=None):
    """PyTorch's train-mode running-statistics update, in float64 numpy (written out here):
    torch momentum t = 1 - flax momentum; n = rows x H x W over the valid rows;
    running_mean <- (1 - t) running_mean + t mean, running_var <- (1 - t) running_var + t var_unbiased."""
    x = np.asarray(x, np.float64)
    if valid is not None:
        x = x[np.asarray(valid)]
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    mean = flat.mean(0)
    var_unbiased = ((flat - mean) ** 2).sum(0) / (n - 1)
    t = 1.0 - momentum
    return (1 - t) * running_mean + t * mean, (1 - t) * running_var + t * var_unbiased


@pytest.mark.parametrize("shape", [(6, 4, 4, 5), (12, 7)])
@pytest.mark.parametrize("masked", [False, True])
def test_bn_running_var_unbiased_matches_pytorch_style_float64(shape, masked):
    """'unbiased' (the default) is PyTorch's update; 'biased' keeps Flax's (factor n/(n-1) apart)."""
    from ascl_jax.models.norm import BatchNorm

    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 2.0 + 0.3
    c = shape[-1]
    rm, rv = rng.standard_normal(c) * 0.1, rng.uniform(0.5, 1.5, c)
    valid = np.arange(shape[0]) < shape[0] - 2 if masked else None
    v = {
        "params": {"scale": jnp.ones(c), "bias": jnp.zeros(c)},
        "batch_stats": {"mean": jnp.asarray(rm, jnp.float32), "var": jnp.asarray(rv, jnp.float32)},
    }
    mask = None if valid is None else jnp.asarray(valid)
    want_mean, want_var = _torch_style_bn_update(x, rm, rv, 0.9, valid)
    for mode in ("unbiased", "biased"):
        bn = BatchNorm(momentum=0.9, running_var=mode)
        _, upd = jax.jit(lambda v, x, bn=bn: bn.apply(v, x, mask, mutable=["batch_stats"]))(
            v, jnp.asarray(x, jnp.float32)
        )
        np.testing.assert_allclose(upd["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
        n = (valid.sum() if masked else shape[0]) * int(np.prod(shape[1:-1]))
        expect = want_var if mode == "unbiased" else 0.9 * rv + (want_var - 0.9 * rv) * (n - 1) / n
        np.testing.assert_allclose(upd["batch_stats"]["var"], expect, rtol=1e-5, atol=1e-6)


def test_bn_running_var_reaches_every_layer_heads_included():
    """model.bn_running_var reaches the trunk's and the acl_mlp head's BN (dual BN, 'adv' branch)."""
    x = _images(b=6)
    got = {}
    for mode in ("unbiased", "biased"):
        model = _build(arch="tiny", head="acl_mlp", bn="dual", bn_running_var=mode)
        variables = _init(model, x)
        _, upd = _apply(model, variables, x, train=True, bn="adv")
        got[mode] = upd["batch_stats"]
    # running = 0.9 * 1 + 0.1 * var  ->  (unbiased - 0.9) = (biased - 0.9) * n / (n - 1)
    for scope, layer, n in (("encoder", "bn1", 6 * 32 * 32), ("head", "bn1", 6), ("head", "bn3", 6)):
        u = np.asarray(got["unbiased"][scope][layer]["adv"]["var"], np.float64)
        b = np.asarray(got["biased"][scope][layer]["adv"]["var"], np.float64)
        np.testing.assert_allclose(u - 0.9, (b - 0.9) * n / (n - 1), rtol=1e-5, atol=1e-7)
        if n < 100:  # the head's BatchNorm1d over 6 rows: factor 1.2, far from Flax's update
            assert np.all(u - 0.9 > 1.1 * (b - 0.9))


def test_masked_bn_equals_bn_on_the_valid_rows():
    """With a mask, train-mode outputs of the valid rows and the running statistics equal those of
    the batch without its padded rows (trunk and head, unbiased n = valid rows)."""
    model = _build(arch="tiny", head="acl_mlp", bn="dual")
    x = _images(b=8, seed=3)
    variables = _perturb(_init(model, x))
    valid = jnp.arange(8) < 5
    padded = x.at[5:].set(x[0])  # padding = copies of a real row, as the data pipeline does

    def f(v, x, mask):
        return model.apply(v, x, train=True, bn="adv", mask=mask, mutable=["batch_stats"])

    out_m, upd_m = jax.jit(f)(variables, padded, valid)
    out_r, upd_r = jax.jit(lambda v, x: f(v, x, None))(variables, x[:5])
    # Float32 rounding only: the head's BN over 5 rows of small-variance features (E[x^2] - E[x]^2)
    # amplifies it to ~1e-4 on outputs of order 1; a padded row counted in would move them by O(1).
    for k in out_r:
        np.testing.assert_allclose(out_m[k][:5], out_r[k], rtol=2e-3, atol=2e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), upd_m, upd_r)
    # Eval mode ignores the mask.
    ev = model.apply(variables, padded, train=False, bn="adv", mask=valid)
    np.testing.assert_array_equal(ev["z"], model.apply(variables, padded, train=False, bn="adv")["z"])


def test_bn_running_var_is_a_config_choice():
    with pytest.raises(ValueError, match="bn_running_var"):
        _build(bn_running_var="sample")
