"""The C++ XLA:CPU kernels (ascl_jax/cpu_kernels): values against float64 numpy, the BN paths with
and without them, the build cache and the fallbacks."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ascl_jax import cpu_kernels
from ascl_jax.models import norm

needs_kernels = pytest.mark.skipif(not cpu_kernels.enabled(),
                                   reason="C++ kernels unavailable here (no compiler?)")


def _ref_sums(a, b, shift):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = a64.shape[-1]
    a64, b64 = a64.reshape(-1, c), b64.reshape(-1, c)
    return a64.sum(0), (a64 * (b64 - np.asarray(shift, np.float64))).sum(0)


@needs_kernels
@pytest.mark.parametrize("shape", [(128, 32, 32, 16), (7, 5, 3, 32), (3, 9, 9, 48), (2, 8, 8, 64),
                                   (5, 3, 4, 3), (33, 100), (1, 1), (600, 17)])
def test_channel_sums_match_float64(shape):
    k1, k2, k3 = jax.random.split(jax.random.key(sum(shape)), 3)
    a = jax.random.normal(k1, shape) * 2.0 + 0.5
    b = jax.random.normal(k2, shape) * 3.0 - 1.0
    shift = jax.random.normal(k3, shape[-1:])
    s1, s2 = jax.jit(cpu_kernels.channel_sums)(a, b, shift)
    r1, r2 = _ref_sums(a, b, shift)
    n = int(np.prod(shape[:-1]))
    # |error| of a float32 sum of n terms of size ~|x|: a few ulps times sqrt-ish growth
    tol = 1e-6 * max(1.0, np.sqrt(n)) * 10
    np.testing.assert_allclose(s1, r1, rtol=0, atol=tol * np.abs(np.asarray(a)).max())
    np.testing.assert_allclose(s2, r2, rtol=0, atol=tol * np.abs(np.asarray(a) * np.asarray(b)).max() * 2)


@needs_kernels
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 700), c=st.sampled_from([1, 2, 5, 16, 31, 32, 48, 64, 70]),
       seed=st.integers(0, 2**16))
def test_channel_sums_property(m, c, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, c)).astype(np.float32)
    b = rng.normal(size=(m, c)).astype(np.float32)
    shift = rng.normal(size=(c,)).astype(np.float32)
    s1, s2 = cpu_kernels.channel_sums(jnp.asarray(a), jnp.asarray(b), jnp.asarray(shift))
    r1, r2 = _ref_sums(a, b, shift)
    np.testing.assert_allclose(s1, r1, atol=1e-4 * np.sqrt(m), rtol=1e-5)
    np.testing.assert_allclose(s2, r2, atol=1e-4 * np.sqrt(m), rtol=1e-5)


@needs_kernels
def test_channel_sums_deterministic_and_vmappable():
    a = jax.random.normal(jax.random.key(0), (64, 16, 16, 32))
    f = jax.jit(lambda a: cpu_kernels.channel_sums(a, a, jnp.zeros(32)))
    first = f(a)
    for _ in range(3):
        again = f(a)
        assert all(np.array_equal(x, y) for x, y in zip(first, again))
    batched = jax.vmap(lambda a: cpu_kernels.channel_sums(a, a, jnp.zeros(32)))(a[:4])
    single = [cpu_kernels.channel_sums(a[i], a[i], jnp.zeros(32)) for i in range(4)]
    np.testing.assert_array_equal(batched[0], np.stack([s[0] for s in single]))


def test_channel_sums_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shift"):
        cpu_kernels.channel_sums(jnp.zeros((4, 3)), jnp.zeros((4, 3)), jnp.zeros((4,)))


@needs_kernels
def test_bn_train_with_and_without_kernel_agree():
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 32)) * 3.0 + 2.0
    scale = jax.random.normal(jax.random.key(1), (32,))
    bias = jax.random.normal(jax.random.key(2), (32,))

    def loss(x, scale, bias, kernel):
        y, mean, var = norm.bn_train(x, scale, bias, 1e-5, kernel=kernel)
        return jnp.sum(jnp.sin(y)) + jnp.sum(mean ** 2) + jnp.sum(jnp.cos(var))

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    with_k, without = f(x, scale, bias, True), f(x, scale, bias, False)
    for p, q in zip(jax.tree.leaves(with_k), jax.tree.leaves(without)):
        np.testing.assert_allclose(p, q, rtol=2e-5, atol=2e-5)
    hlo = jax.jit(jax.grad(loss), static_argnums=3).lower(x, scale, bias, True).as_text()
    assert hlo.count(cpu_kernels.TARGET) == 2          # forward sums + backward sums
    hlo = jax.jit(jax.grad(loss), static_argnums=3).lower(x, scale, bias, False).as_text()
    assert cpu_kernels.TARGET not in hlo


def test_switch_turns_kernels_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    assert not cpu_kernels.enabled()
    x = jnp.ones((2, 4, 4, 16))
    hlo = jax.jit(lambda x: norm.bn_train(x, jnp.ones(16), jnp.zeros(16), 1e-5)[0]).lower(x).as_text()
    assert cpu_kernels.TARGET not in hlo


def test_failed_build_raises_and_leaves_no_partial_file(tmp_path, monkeypatch):
    if cpu_kernels._compiler() is None:
        pytest.skip("no compiler")
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", str(bad))
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="failed"):
        cpu_kernels.build()
    assert os.listdir(tmp_path / "cache") == []


def test_library_path_depends_on_source(tmp_path, monkeypatch):
    cxx = cpu_kernels._compiler()
    if cxx is None:
        pytest.skip("no compiler")
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path))
    p1 = cpu_kernels.library_path(cxx)
    src = tmp_path / "k.cc"
    src.write_text(open(cpu_kernels.SOURCE).read() + "\n// changed\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", str(src))
    p2 = cpu_kernels.library_path(cxx)
    assert p1 != p2 and os.path.dirname(p1) == os.path.dirname(p2) == str(tmp_path)
