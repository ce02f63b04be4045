"""Loop bodies and loop forms for XLA:CPU (part of :mod:`ascl_jax.xla_cpu`).

Convolutions in loop bodies: JAX lowers the input gradient of a convolution with its kernel in
``01oi`` layout (O and I swapped). XLA:CPU's convolution-canonicalization pass, which rewrites such
convolutions into the HWIO form its fast convolution kernels accept, visits only the entry
computation, so inside a ``while`` body (``fori_loop``, ``scan``, ``while_loop``) they run through
XLA's generic loop emitter, several times slower (jax-ml/jax#12868). :func:`canonicalize_convs`
re-traces a function to a jaxpr and binds every convolution whose kernel is not HWIO with an
explicit kernel transpose and HWIO dimension numbers: the same convolution, the same values up to
float rounding, in the form XLA:CPU would have produced at top level.

Loop policy when :func:`ascl_jax.xla_cpu.enabled` (each an explicit argument of the callers too):

- attacks (``attacks.pgd_linf``, ``fgsm``, ``multi_targeted_pgd``): the gradient goes through
  :func:`canonicalize_convs` (:func:`use_canonical`) and, when the caller sets neither ``unroll`` nor
  ``max_unroll``, the steps run as a ``lax.fori_loop`` over single steps (:func:`attack_unroll`);
- evaluation (``evaluation.autoattack`` Programs, run by the engine as one compiled
  ``lax.while_loop`` per batch): each loop body goes through :func:`canonicalize_convs`
  (:func:`loop_body`).

With the switch off every function here leaves its input unchanged and the callers use their plain
loop forms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ascl_jax import xla_cpu


def _hwio_conv(lhs, rhs, params):
    """conv_general_dilated with the kernel transposed to HWIO (spatial..., I, O) explicitly."""
    dn = params["dimension_numbers"]
    n = rhs.ndim
    hwio = (n - 1, n - 2) + tuple(range(n - 2))  # rhs_spec = (O, I, spatial...)
    if not isinstance(dn, jax.lax.ConvDimensionNumbers) or tuple(dn.rhs_spec) == hwio:
        return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    perm = tuple(dn.rhs_spec[2:]) + (dn.rhs_spec[1], dn.rhs_spec[0])
    new = dict(
        params, dimension_numbers=jax.lax.ConvDimensionNumbers(tuple(dn.lhs_spec), hwio, tuple(dn.out_spec))
    )
    return jax.lax.conv_general_dilated_p.bind(lhs, jax.lax.transpose(rhs, perm), **new)


_CALL_PARAMS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}


def _eval_canonical(jaxpr, consts, *args):
    """Evaluates a jaxpr like ``jax.core.eval_jaxpr``, inlining jit/call sub-jaxprs and binding
    every convolution through ``_hwio_conv``. Other higher-order primitives are bound unchanged."""
    from jax.extend.core import Literal

    env = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for v, val in zip(jaxpr.constvars, consts):
        env[v] = val
    for v, val in zip(jaxpr.invars, args):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            outvals = [_hwio_conv(*invals, eqn.params)]
        elif name in _CALL_PARAMS and _CALL_PARAMS[name] in eqn.params:
            sub = eqn.params[_CALL_PARAMS[name]]
            sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            outvals = _eval_canonical(sub_jaxpr, sub_consts, *invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
            if ctx is not None:
                with ctx:
                    outvals = eqn.primitive.bind(*invals, **params)
            else:
                outvals = eqn.primitive.bind(*invals, **params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for v, val in zip(eqn.outvars, outvals):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def canonicalize_convs(fun: Callable[..., Any]) -> Callable[..., Any]:
    """``fun`` with every convolution's kernel given to XLA in HWIO layout (module doc).

    ``fun`` takes and returns pytrees of arrays. The result is the same up to float rounding; the
    point is speed on XLA:CPU when ``fun`` (e.g. a gradient) runs inside a while loop. jit/call
    sub-jaxprs are inlined; convolutions inside other higher-order primitives (cond, scan, remat,
    custom_vjp) are left as they are. Meant for input gradients; a weight-gradient convolution
    gets its activation-sized right operand transposed (as XLA:CPU itself does at top level).
    """

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        out = _eval_canonical(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def use_canonical(canonicalize: bool | None = None) -> bool:
    """Whether a loop body's convolutions are canonicalised: ``canonicalize``, or when None
    :func:`ascl_jax.xla_cpu.enabled`."""
    return xla_cpu.enabled() if canonicalize is None else bool(canonicalize)


def loop_body(fun: Callable[..., Any], canonicalize: bool | None = None) -> Callable[..., Any]:
    """``fun`` as it should run inside a loop: :func:`canonicalize_convs` (fun) where
    :func:`use_canonical` (canonicalize), else ``fun`` itself."""
    return canonicalize_convs(fun) if use_canonical(canonicalize) else fun


def attack_unroll(unroll: int | None, max_unroll: int | None, canonical: bool) -> int | None:
    """Steps per loop iteration for an attack whose gradient is canonicalised (``canonical``) and
    whose caller left the loop form open (``unroll`` and ``max_unroll`` None): 1, a ``fori_loop``
    over single steps. None otherwise: the caller's own policy applies."""
    if canonical and unroll is None and max_unroll is None:
        return 1
    return None
