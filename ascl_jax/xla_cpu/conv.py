"""NHWC x HWIO 2-D convolution with XLA:CPU-friendly gradients (part of :mod:`ascl_jax.xla_cpu`).

:func:`conv2d` computes ``lax.conv_general_dilated(x, w, stride, padding)`` -- the same values and
gradients up to float rounding (tests/test_fast_paths.py, tests/test_kernels.py) -- as one
``jax.custom_vjp`` (:func:`_conv_cpu`, ``symbolic_zeros``: it knows which gradients are wanted).
``models.layers.Conv`` calls it when :func:`ascl_jax.xla_cpu.enabled`; elsewhere the models call
``lax.conv_general_dilated`` directly.

Input gradient, by shape (:func:`fast_grad_kind`); other shapes use XLA's own input gradient:

- **few input channels, stride 1** (the RGB / grey stem, C <= ``STEM_MAX_CHANNELS``): one matmul
  ``dy [.., O] @ w^T [O, k*k*C]`` and a col2im (the k*k shifted windows added back), instead of a
  transposed convolution with C output channels.
- **3x3, stride 2, padding 1, even H and W**: the four output phases of dx (even/odd row x column)
  are one stride-1 2x2 conv of dy with a kernel assembled from w's taps, then depth-to-space
  (sub-pixel convolution), instead of a convolution of dy dilated with zeros.
- **1x1, stride s > 1, no padding** (projection shortcut): ``dy @ w^T`` placed on every s-th pixel
  (an interior pad).
- **3x3, stride 1, padding 1, float32, 16k output channels** with ``direct_kernels``: the forward is
  the C++ direct convolution :func:`ascl_jax.xla_cpu.kernels.conv3x3`, the kernel gradient
  :func:`ascl_jax.xla_cpu.kernels.conv3x3_weight_grad`, and, when the input also has 16k channels,
  the input gradient the same kernel on dy with w flipped and its channel axes swapped.

Kernel gradient: XLA's, except for the direct-kernel case above. When it is wanted and XLA computes
it, the convolution's input first goes through :func:`materialize`, so that XLA:CPU writes the
input's producer (e.g. BN + residual add + ReLU) to memory once instead of fusing it into the
weight gradient's transposed read of the input. Input-gradient-only uses (attacks) do not take it.

Summation order is fixed for a given shape (XLA's convolutions and dots, the kernels' documented
orders). Forward-mode autodiff (``jax.jvp``) through :func:`conv2d` is not available.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ascl_jax import xla_cpu
from ascl_jax.xla_cpu import kernels

PadPairs = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
STEM_MAX_CHANNELS = 4


def _xla_conv(x: jax.Array, w: jax.Array, stride: int, padding: PadPairs) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DIMENSION_NUMBERS)


def _weight_grad(x, w, stride, padding, dy):
    """XLA's weight gradient of :func:`_xla_conv` (unchanged by the custom rules)."""
    return jax.vjp(lambda w_: _xla_conv(x, w_, stride, padding), w)[1](dy)[0]


# ----------------------------------------------------------------------------------------------
# Input gradients


def stem_input_grad(dy: jax.Array, w: jax.Array, x_shape, padding: PadPairs) -> jax.Array:
    """dx of a stride-1 conv by matmul + col2im. dy [B,H',W',O], w [k,k,C,O] -> dx ``x_shape``."""
    kh, kw, c, o = w.shape
    _, h, wd, _ = x_shape
    ho, wo = dy.shape[1], dy.shape[2]
    cols = jnp.einsum("bhwo,ko->bhwk", dy, w.reshape(kh * kw * c, o))  # [B,H',W',k*k*C]
    cols = cols.reshape(dy.shape[:3] + (kh, kw, c))
    hp, wp = ho + kh - 1, wo + kw - 1  # padded input size
    dxp = sum(
        jnp.pad(cols[:, :, :, i, j, :], ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
        for i in range(kh)
        for j in range(kw)
    )
    (pt, _), (pl, _) = padding
    return dxp[:, pt : pt + h, pl : pl + wd, :]


# _S2_SELECT[a, p, k] = 1 when tap k of the 3x3 kernel feeds phase p of dx from dy offset a
# (dx[2n+p] += dy[n+a] w[k]): dx[2n] = dy[n] w[1]; dx[2n+1] = dy[n] w[2] + dy[n+1] w[0].
_S2_SELECT = np.zeros((2, 2, 3), np.float32)
for (_a, _p), _k in {(0, 0): 1, (0, 1): 2, (1, 1): 0}.items():
    _S2_SELECT[_a, _p, _k] = 1.0


def stride2_input_grad(dy: jax.Array, w: jax.Array, x_shape) -> jax.Array:
    """dx of a 3x3 stride-2 padding-1 conv on even H, W as a sub-pixel conv.

    dy [B,H/2,W/2,O], w [3,3,C,O] -> dx [B,H,W,C]: a stride-1 2x2 conv of dy (zero-padded by one
    row / column at the end) with kernel K[a,b,o,(p,q,c)] = sum_kl S[a,p,k] S[b,q,l] w[k,l,c,o]
    (S = ``_S2_SELECT``), then depth-to-space of the (p, q) phases.
    """
    b, h, wd, c = x_shape
    o = w.shape[-1]
    sel = jnp.asarray(_S2_SELECT, w.dtype)
    k = jnp.einsum("apk,bql,klco->abopqc", sel, sel, w).reshape(2, 2, o, 4 * c)
    dyp = jnp.pad(dy, ((0, 0), (0, 1), (0, 1), (0, 0)))
    ph = _xla_conv(dyp, k, 1, ((0, 0), (0, 0)))  # [B,H/2,W/2,4C]
    return ph.reshape(b, h // 2, wd // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(x_shape)


def pointwise_input_grad(dy: jax.Array, w: jax.Array, x_shape, stride: int) -> jax.Array:
    """dx of a 1x1 stride-s unpadded conv: ``dy @ w^T`` on every s-th pixel, zeros elsewhere."""
    _, h, wd, _ = x_shape
    core = jnp.einsum("bhwo,co->bhwc", dy, w[0, 0])
    ho, wo = dy.shape[1], dy.shape[2]
    cfg = [
        (0, 0, 0),
        (0, h - (ho - 1) * stride - 1, stride - 1),
        (0, wd - (wo - 1) * stride - 1, stride - 1),
        (0, 0, 0),
    ]
    return jax.lax.pad(core, jnp.zeros((), core.dtype), cfg)


def _input_grad(kind, x, w, stride, padding, dy):
    """dx of :func:`_xla_conv`: the custom rule for ``kind`` (:func:`fast_grad_kind`), else XLA's."""
    if kind == "direct":
        return kernels.conv3x3_input_grad(dy, w)
    if kind == "stem":
        return stem_input_grad(dy, w, x.shape, padding)
    if kind == "stride2":
        return stride2_input_grad(dy, w, x.shape)
    if kind == "pointwise":
        return pointwise_input_grad(dy, w, x.shape, stride)
    return jax.vjp(lambda x_: _xla_conv(x_, w, stride, padding), x)[1](dy)[0]


# ----------------------------------------------------------------------------------------------
# Materialising the input of a weight gradient


def materialize(x: jax.Array) -> jax.Array:
    """x, through a while loop that XLA cannot delete or fuse through (not differentiable).

    What it buys: x's producer is written to memory once and every consumer reads that buffer.
    Why a loop: ``lax.optimization_barrier`` is removed by XLA:CPU before fusion, and so is a loop
    with an identity body or a constant trip count. This loop runs ``first == first`` times (once;
    zero times when x's first element is NaN) and multiplies that one element in place by the same
    comparison as a float (1.0), which keeps every bit (signed zeros, infinities, subnormals), so
    its cost is one loop launch.
    """
    first = x.reshape(-1)[0]
    same = first == first
    trips, unit = same.astype(jnp.int32), same.astype(x.dtype)
    start = (0,) * x.ndim

    def body(_, v):
        head = jax.lax.dynamic_slice(v, start, (1,) * x.ndim)
        return jax.lax.dynamic_update_slice(v, head * unit, start)

    return jax.lax.fori_loop(0, trips, body, x)


# ----------------------------------------------------------------------------------------------
# custom_vjp wrapper


def _forward(x, w, stride, padding, direct_fwd):
    if direct_fwd:
        return kernels.conv3x3(x, w)
    return _xla_conv(x, w, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_cpu(x, w, stride, padding, kind, direct_fwd):
    return _forward(x, w, stride, padding, direct_fwd)


def _conv_cpu_fwd(x, w, stride, padding, kind, direct_fwd):
    # x, w: CustomVJPPrimal (symbolic_zeros=True), so we know whether w's gradient is wanted.
    # The direct kernels take x as a buffer already; XLA's weight gradient needs the barrier.
    xv = materialize(x.value) if w.perturbed and not direct_fwd else x.value
    return (_forward(xv, w.value, stride, padding, direct_fwd), (xv, w.value, x.perturbed, w.perturbed))


def _conv_cpu_bwd(stride, padding, kind, direct_fwd, res, dy):
    x, w, want_dx, want_dw = res
    if isinstance(dy, SymbolicZero):  # output unused: both gradients are zero
        return None, None
    dx = _input_grad(kind, x, w, stride, padding, dy) if want_dx else None
    if not want_dw:
        dw = None
    elif direct_fwd:
        dw = kernels.conv3x3_weight_grad(x, dy)
    else:
        dw = _weight_grad(x, w, stride, padding, dy)
    return dx, dw


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd, symbolic_zeros=True)


def fast_grad_kind(x_shape, w_shape, stride: int, padding: PadPairs) -> str | None:
    """Which custom input gradient applies to this conv (``'stem'``, ``'stride2'``, ``'pointwise'``) or
    None (module doc; ``'direct'`` is chosen by :func:`conv2d` itself)."""
    kh, kw, c, _ = w_shape
    _, h, wd, _ = x_shape
    if stride == 1 and c <= STEM_MAX_CHANNELS:
        return "stem"
    if stride == 2 and (kh, kw) == (3, 3) and padding == ((1, 1), (1, 1)) and h % 2 == 0 and wd % 2 == 0:
        return "stride2"
    if (kh, kw) == (1, 1) and padding == ((0, 0), (0, 0)) and stride > 1:
        return "pointwise"
    return None


def pad_pairs(x_shape, w_shape, stride: int, padding: PadPairs | str) -> PadPairs:
    """``padding`` as ((top, bottom), (left, right)) ints; ``'SAME'`` / ``'VALID'`` resolved as lax."""
    if isinstance(padding, str):
        padding = tuple(jax.lax.padtype_to_pads(x_shape[1:3], w_shape[:2], (stride, stride), padding))
    return tuple(tuple(int(p) for p in pair) for pair in padding)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    stride: int = 1,
    padding: PadPairs | str = ((0, 0), (0, 0)),
    *,
    direct_kernels: bool | None = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` in NHWC / HWIO with the gradients of the module doc:
    x [B,H,W,C], w [k,k,C,O] -> [B,H',W',O].

    ``padding``: ((top, bottom), (left, right)) or ``'SAME'`` / ``'VALID'``. ``direct_kernels``
    (default: :func:`ascl_jax.xla_cpu.enabled` and :func:`ascl_jax.xla_cpu.kernels.conv3x3_available`)
    computes 3x3 stride-1 padding-1 float32 convolutions with 16k output channels by the C++ kernel,
    and their input gradient too when the input has 16k channels. A non-float32 x or w (bfloat16
    compute) takes the plain path: ``lax.conv_general_dilated`` itself, no custom VJP.
    """
    padding = pad_pairs(x.shape, w.shape, stride, padding)
    if jnp.dtype(x.dtype) != jnp.float32 or jnp.dtype(w.dtype) != jnp.float32:
        return _xla_conv(x, w, stride, padding)  # plain path: the custom rules are float32-only
    kind = fast_grad_kind(x.shape, w.shape, stride, padding)
    if direct_kernels is None:
        direct_kernels = xla_cpu.enabled() and kernels.conv3x3_available()
    direct_fwd = (
        bool(direct_kernels)
        and w.dtype == x.dtype
        and kernels.conv3x3_supported(x.shape, w.shape, stride, padding, x.dtype)
    )
    if direct_fwd and kind is None and x.shape[-1] % 16 == 0:  # dx = conv3x3(dy, flipped w)
        kind = "direct"
    return _conv_cpu(x, w, stride, padding, kind, direct_fwd)
