"""The CPU speed layer (ascl_jax/xla_cpu) equals the plain ops it replaces, and its switch works.

- ``xla_cpu.conv.conv2d``: custom input gradients (stem / stride-2 / 1x1-shortcut shapes) against
  XLA's own gradient of ``lax.conv_general_dilated``, values and both gradients.
- ``models.norm.BatchNorm`` with the layer on (``xla_cpu.batch_norm``: two-stage per-channel sums,
  hand-written train-mode backward) and off (plain arithmetic), each against Flax's ``nn.BatchNorm``
  (outputs, running statistics, gradients, including gradients that flow through the returned batch
  statistics), and against a float64 numpy BN.
- ``ASCL_JAX_CPU_FAST``: with it off, the traced ResNet-20 train step and PGD attack hold no part of
  the layer (no custom_vjp, C++ custom call, loop barrier or canonicalised kernel); with it on they do.

Tests that depend on the switch set ``ASCL_JAX_CPU_FAST`` themselves (monkeypatch), so they check the
same things under either setting of the environment; the others call the fast paths explicitly.
"""

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from ascl_jax import xla_cpu
from ascl_jax.models.norm import BatchNorm
from ascl_jax.xla_cpu import conv as cpu_conv
from ascl_jax.xla_cpu.batch_norm import channel_broadcast, channel_sum


def _conv(x, w, stride, padding, fast):
    """The speed layer's conv2d (fast) or plain ``lax.conv_general_dilated``."""
    if fast:
        return cpu_conv.conv2d(x, w, stride, padding)
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv_grads(x, w, stride, padding, fast):
    f = lambda x, w: _conv(x, w, stride, padding, fast)  # noqa: E731
    y, vjp = jax.vjp(f, x, w)
    dy = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return (y,) + vjp(dy)


@pytest.mark.parametrize(
    "x_shape,w_shape,stride,padding,kind",
    [
        ((4, 8, 8, 3), (3, 3, 3, 5), 1, ((1, 1), (1, 1)), "stem"),
        ((2, 9, 7, 1), (3, 3, 1, 4), 1, "VALID", "stem"),
        ((2, 9, 7, 3), (5, 5, 3, 4), 1, "SAME", "stem"),
        ((2, 6, 6, 2), (3, 3, 2, 4), 1, ((0, 2), (1, 0)), "stem"),
        ((4, 8, 8, 6), (3, 3, 6, 5), 2, ((1, 1), (1, 1)), "stride2"),
        ((3, 10, 6, 4), (3, 3, 4, 7), 2, ((1, 1), (1, 1)), "stride2"),
        ((4, 8, 8, 6), (1, 1, 6, 5), 2, ((0, 0), (0, 0)), "pointwise"),
        ((2, 9, 9, 6), (1, 1, 6, 5), 3, ((0, 0), (0, 0)), "pointwise"),
        ((2, 9, 9, 6), (3, 3, 6, 5), 2, ((1, 1), (1, 1)), None),  # odd size: XLA's gradient
        ((2, 8, 8, 6), (3, 3, 6, 5), 1, ((1, 1), (1, 1)), None),  # plain conv: XLA's gradient
    ],
)
def test_conv2d_custom_gradients_equal_xla(x_shape, w_shape, stride, padding, kind):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
    pads = (
        padding
        if not isinstance(padding, str)
        else tuple(jax.lax.padtype_to_pads(x_shape[1:3], w_shape[:2], (stride, stride), padding))
    )
    assert cpu_conv.fast_grad_kind(x_shape, w_shape, stride, pads) == kind
    fast = jax.jit(lambda x, w: _conv_grads(x, w, stride, padding, True))(x, w)
    ref = jax.jit(lambda x, w: _conv_grads(x, w, stride, padding, False))(x, w)
    for a, b, name in zip(fast, ref, ("y", "dx", "dw")):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    c=st.integers(1, 6),
    o=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_stride2_input_gradient_property(b, h, w, c, o, seed):
    """Any even H, W: the sub-pixel input gradient equals XLA's dilated-conv gradient."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 2 * h, 2 * w, c)).astype(np.float32)
    k = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    fast = _conv_grads(x, k, 2, ((1, 1), (1, 1)), True)
    ref = _conv_grads(x, k, 2, ((1, 1), (1, 1)), False)
    np.testing.assert_allclose(fast[1], ref[1], rtol=1e-5, atol=1e-4)


def test_conv2d_second_order_gradient():
    """The custom backward is itself differentiable (grad of a gradient norm, as in input-gradient
    regularisers): equal to XLA's."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4), np.float32))

    def gnorm(w, fast):
        g = jax.grad(lambda x: jnp.sum(jnp.tanh(_conv(x, w, 1, "SAME", fast))))(x)
        return jnp.sum(g**2)

    np.testing.assert_allclose(jax.grad(gnorm)(w, True), jax.grad(gnorm)(w, False), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrt", ["x", "w", "both"])
def test_conv2d_gradients_by_argument_and_materialized_input(wrt):
    """Gradients for x only, w only and both equal XLA's; the input of a convolution whose kernel
    gradient is taken goes through :func:`cpu_conv.materialize` (a while loop in the compiled
    program, so XLA cannot fuse the input's producer into the weight gradient's transpose), and an
    attack-style gradient (x only) has no such loop."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 6), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 6, 5), np.float32))
    argnums = {"x": 0, "w": 1, "both": (0, 1)}[wrt]

    def loss(x, w, fast):
        h = jax.nn.relu(x * 1.5 + 0.25)  # an elementwise producer, as BN + ReLU
        return jnp.sum(jnp.tanh(_conv(h, w, 1, "SAME", fast)))

    fast = jax.jit(jax.grad(lambda x, w: loss(x, w, True), argnums))
    ref = jax.jit(jax.grad(lambda x, w: loss(x, w, False), argnums))
    for a, b in zip(jax.tree.leaves(fast(x, w)), jax.tree.leaves(ref(x, w))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    hlo = fast.lower(x, w).compile().as_text()
    assert (" while(" in hlo) == (wrt != "x"), wrt


def test_materialize_is_exact_identity():
    """Bit-identical output for ordinary values, signed zeros, infinities and a NaN first element
    (the case where the loop runs zero times)."""
    rng = np.random.default_rng(3)
    cases = [
        rng.standard_normal((3, 4, 5, 2)).astype(np.float32),
        np.array([[-0.0, 0.0, np.inf, -np.inf, 1e-45]], np.float32),
        np.array([np.nan, 1.0, -2.0], np.float32),
        np.array([np.inf, np.nan, 3.0], np.float32),
    ]
    f = jax.jit(cpu_conv.materialize)
    for c in cases:
        out = np.asarray(f(jnp.asarray(c)))
        assert out.shape == c.shape
        np.testing.assert_array_equal(out.view(np.uint32), c.view(np.uint32))


# ----------------------------------------------------------------------------------------------
# BatchNorm


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 8, 8, 16), (10, 7)])
def test_channel_sum_and_broadcast(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(
        channel_sum(jnp.asarray(x)), x.reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-5
    )
    v = jnp.arange(shape[-1], dtype=jnp.float32)
    np.testing.assert_array_equal(channel_broadcast(v, shape), np.broadcast_to(np.asarray(v), shape))


def _bn_pair(train):
    return (
        nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5),
        BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5),
    )


@pytest.fixture(params=[True, False], ids=["cpu_fast", "plain"])
def cpu_fast(request, monkeypatch):
    """Runs the test with the speed layer on and off (``ASCL_JAX_CPU_FAST``, read at trace time)."""
    monkeypatch.setenv(xla_cpu.ENV_SWITCH, "1" if request.param else "0")
    assert xla_cpu.enabled() == (request.param and jax.default_backend() == "cpu")
    return request.param


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(8, 6, 5, 4), (16, 3)])
def test_batchnorm_matches_flax(train, shape, cpu_fast):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
    flax_bn, ours = _bn_pair(train)
    v_flax = flax_bn.init(jax.random.key(0), x)
    v_ours = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(v_flax) == jax.tree.structure(v_ours)
    # non-trivial parameters and running statistics
    v = jax.tree.map(lambda t: t + jnp.linspace(0.2, 0.7, t.shape[-1]), v_ours)
    weights = jnp.asarray(rng.standard_normal(shape, np.float32))

    def loss(m, v, x):
        y, upd = m.apply(v, x, mutable=["batch_stats"])
        stats = upd["batch_stats"]
        # the loss also reads the updated running statistics, so their cotangents reach the backward
        return jnp.sum(y * weights) + jnp.sum(stats["mean"] * 50.0) + jnp.sum(stats["var"] * 70.0), (y, upd)

    def run(m):
        return jax.jit(jax.value_and_grad(lambda v, x: loss(m, v, x), (0, 1), has_aux=True))(v, x)

    (_, (y1, u1)), g1 = run(flax_bn)
    (_, (y2, u2)), g2 = run(ours)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), u1, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4), g1, g2)


def test_batchnorm_train_against_numpy_float64(cpu_fast):
    """Train-mode output and input gradient against BN written out in float64 numpy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 4, 5)) * 2 + 0.5
    gy = rng.standard_normal(x.shape)
    scale, bias = rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
    v = {
        "params": {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)},
        "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)},
    }
    bn = BatchNorm()
    f = lambda x: bn.apply(v, x, mutable=["batch_stats"])[0]  # noqa: E731
    y, vjp = jax.vjp(f, jnp.asarray(x, jnp.float32))
    (dx,) = vjp(jnp.asarray(gy, jnp.float32))
    n = x.size // 5
    mu, var = x.reshape(-1, 5).mean(0), x.reshape(-1, 5).var(0)
    xhat = (x - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y, xhat * scale + bias, rtol=1e-4, atol=1e-4)
    g = gy * scale
    dx_ref = g - g.reshape(-1, 5).mean(0) - xhat * (g * xhat).reshape(-1, 5).sum(0) / n
    dx_ref = dx_ref / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_unbiased_running_var_both_paths(cpu_fast):
    """model.bn_running_var='unbiased' is applied after the speed layer's statistics too: the
    running variance is PyTorch's (float64 reference), with the layer on and off."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 4, 4, 5)) * 2 + 0.5
    v = {
        "params": {"scale": jnp.ones(5), "bias": jnp.zeros(5)},
        "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)},
    }
    bn = BatchNorm(running_var="unbiased")
    _, upd = jax.jit(lambda x: bn.apply(v, x, mutable=["batch_stats"]))(jnp.asarray(x, jnp.float32))
    flat = x.reshape(-1, 5)
    want = 0.9 + 0.1 * flat.var(0, ddof=1)
    np.testing.assert_allclose(upd["batch_stats"]["var"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The switch


@pytest.fixture(scope="module")
def resnet20():
    from ascl_jax import models

    model = models.build_model(
        dict(arch="resnet20", normalization="cifar10"), num_classes=10, image_shape=(32, 32, 3)
    )
    x = jnp.full((2, 32, 32, 3), 0.5, jnp.float32)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)
    return model, variables, x


def _speed_layer_parts(jaxpr_text: str, hlo: str) -> dict:
    """Which parts of the speed layer a traced program holds."""
    import re

    kernel_specs = set(re.findall(r"x\[([0-9a-z, ]+)\]->", hlo))
    return {
        "custom_vjp": "custom_vjp_call" in jaxpr_text,
        "custom_call": "custom_call" in hlo,
        "while": "stablehlo.while" in hlo,
        "oi_kernels": "0, 1, o, i" in kernel_specs,
    }


def test_switch_off_traces_plain_jax(resnet20, cpu_fast):
    """ASCL_JAX_CPU_FAST=0: a ResNet-20 train-mode forward+backward and a PGD attack are plain JAX
    (no custom_vjp in the forward's jaxpr; no custom call -- the C++ kernels --, no while loop -- the weight
    gradient's barrier, the attack's fori_loop -- in the lowered program, and the attack's
    input-gradient convolutions keep JAX's own kernel layout). Switch on (CPU): they hold them."""
    from ascl_jax import attacks
    from ascl_jax.xla_cpu import kernels

    model, variables, x = resnet20
    y = jnp.array([1, 2])

    def train_loss(params, x):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(out["logits"] * jnp.arange(10.0))

    def forward(params, x):
        return train_loss(params, x)

    def pgd(x, x_init):  # explicit start: the PRNG's own lowering holds a while loop
        f = attacks.model_forward(model, variables)
        return attacks.pgd_linf(
            attacks.ce_objective(f, y), x, None, eps=8 / 255, step_size=2 / 255, num_steps=3, x_init=x_init
        )

    grad = jax.value_and_grad(train_loss)
    step = _speed_layer_parts(
        str(jax.make_jaxpr(forward)(variables["params"], x)),
        jax.jit(grad).lower(variables["params"], x).as_text(),
    )
    attack = _speed_layer_parts(str(jax.make_jaxpr(pgd)(x, x)), jax.jit(pgd).lower(x, x).as_text())
    on = cpu_fast and jax.default_backend() == "cpu"
    assert step["custom_vjp"] == on  # conv and BN rules (an attack's jaxpr holds them applied)
    assert step["while"] == on  # materialize before XLA's weight gradients
    assert attack["while"] == on  # fori_loop over single steps
    assert attack["oi_kernels"] == (not on)  # canonicalize_convs
    # the train step always holds the batch-norm kernel; the attack (eval-mode BN) only the 3x3
    # convolution, which is used where the build has its AVX-512 code
    assert step["custom_call"] == (on and kernels.available())
    assert attack["custom_call"] == (on and kernels.conv3x3_available())


def test_evaluation_loop_body_canonicalised(cpu_fast):
    """The evaluation attacks' while loop (``programs.chunked_loop``, run by ``run_program``): with
    the switch on (CPU) the body's input-gradient convolutions take HWIO kernels
    (``xla_cpu.loops.loop_body``); off, JAX's own layout. Same values either way."""
    import re

    from ascl_jax.evaluation import programs

    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 8), np.float32) * 0.3)

    def loss(x):
        h = jnp.tile(x, (1, 1, 1, 8))
        for _ in range(2):
            h = jnp.tanh(
                jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            )
        return jnp.sum(h**2)

    def step(i, x):
        return jnp.clip(x + 0.01 * jnp.sign(jax.grad(loss)(x)), 0.0, 1.0)

    x = jnp.asarray(rng.uniform(0, 1, (4, 8, 8, 1)), jnp.float32)
    f = jax.jit(lambda x: programs.chunked_loop(3, 1, step, x))
    specs = set(re.findall(r"x\[([0-9a-z, ]+)\]->", f.lower(x).as_text()))
    on = cpu_fast and jax.default_backend() == "cpu"
    assert ("0, 1, o, i" in specs) == (not on), specs
    ref = x
    for i in range(3):
        ref = step(i, ref)
    np.testing.assert_allclose(f(x), ref, atol=1e-6)
