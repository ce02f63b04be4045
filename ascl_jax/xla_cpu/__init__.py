"""The XLA:CPU speed layer, behind one switch.

Switch: :func:`enabled` is true when the environment variable ``ASCL_JAX_CPU_FAST`` is not one of
``0``/``false``/``no``/``off`` (:func:`requested`), JAX's default backend is CPU and the caller is
not inside :func:`off`. On any other backend the layer is off by construction. It is read at trace
time, so it decides what a function compiles to when it is traced.

Lowering for another platform from a CPU host (``jax.export`` with ``platforms=('cuda',)`` or
``('tpu',)``): the default backend is still CPU there, so the layer would put its CPU-only parts
(C++ custom calls among them) into the exported module. :func:`export` (``jax.export.export`` traced
and lowered inside :func:`off`) gives the plain graph instead; :func:`off` is part of JAX's
tracing-cache key, so functions traced earlier with the layer on are traced again inside it.

The rest of the library consults it at these points only, and calls plain JAX / Flax otherwise:

- ``ascl_jax.main`` (and the tests' and benches' set-up): :func:`ascl_jax.xla_cpu.flags.tune_cpu_flags`
  (XLA_FLAGS, before JAX starts).
- ``models.layers.Conv``: :func:`ascl_jax.xla_cpu.conv.conv2d` instead of ``lax.conv_general_dilated``.
- ``models.norm.BatchNorm`` (NHWC input): :func:`ascl_jax.xla_cpu.batch_norm.train` (train mode) and
  :func:`ascl_jax.xla_cpu.batch_norm.normalize` (running statistics) instead of the plain arithmetic.
- ``attacks.pgd`` (``pgd_linf``, ``fgsm``, ``multi_targeted_pgd``) and the evaluation loops
  (``evaluation.programs.chunked_loop``): :mod:`ascl_jax.xla_cpu.loops` (convolution
  canonicalisation in loop bodies and the loop form).
- ``losses.similarity``: the default block size of the blocked pairwise distances (memory only).
- The C++ kernels (:mod:`ascl_jax.xla_cpu.kernels`) are used by ``conv`` and ``batch_norm`` only, and
  only where :func:`ascl_jax.xla_cpu.kernels.available`.

Guarantees: with the switch on, results equal the plain-XLA computation up to float rounding
(tests/test_fast_paths.py, tests/test_cpu_kernels.py) and each fast path sums in a fixed order (the
same inputs give the same bits). With it off (``ASCL_JAX_CPU_FAST=0``) no part of the layer runs --
no XLA flags, custom VJPs, hand-written BN backward, canonicalisation or C++ kernels -- and the
library traces exactly the plain JAX graph that a GPU or TPU compiles (tests/test_fast_paths.py
checks the lowered programs). Functions of the submodules called directly always take their fast
path (their keyword arguments pick the variant); the switch decides whether the library calls them.

Non-float32 operands (``model.dtype='bfloat16'``): :func:`ascl_jax.xla_cpu.conv.conv2d` and
:func:`ascl_jax.xla_cpu.batch_norm.train` take their plain paths (XLA's convolution; the BN
arithmetic without custom VJP or kernels).

This module imports nothing from JAX at import time (``flags`` must run before JAX starts).
"""

from __future__ import annotations

import contextlib
import os
import threading

ENV_SWITCH = "ASCL_JAX_CPU_FAST"
_OFF = ("0", "false", "no", "off")


def requested() -> bool:
    """Whether the environment leaves the speed layer on (``ASCL_JAX_CPU_FAST`` unset or not off).
    Reads only the environment (safe before JAX starts)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF


_OFF_STATE: dict = {}  # 'context': the JAX user context of :func:`off`, made on first use
_LOCK = threading.Lock()


def _off_context():
    """The JAX user context (part of the jit / tracing cache key) that :func:`off` sets to True."""
    with _LOCK:
        if "context" not in _OFF_STATE:
            import jax

            _OFF_STATE["context"] = jax.make_user_context(False)
        return _OFF_STATE["context"]


def enabled() -> bool:
    """The switch: :func:`requested`, JAX's default backend is CPU, and not inside :func:`off`
    (decided at trace time)."""
    if not requested():
        return False
    ctx = _OFF_STATE.get("context")
    if ctx is not None and ctx.value:
        return False
    import jax  # not at import time: flags.tune_cpu_flags runs before JAX is imported

    return jax.default_backend() == "cpu"


@contextlib.contextmanager
def off():
    """Within the block (this thread), :func:`enabled` is False: what is traced there is the plain
    JAX graph. The state is a JAX user context, so jitted functions traced outside the block (with
    the layer on) are traced anew inside it, and vice versa; the first use costs one retrace of
    functions traced before it."""
    with _off_context()(True):
        yield


def export(fun, *, platforms, **kwargs):
    """``jax.export.export(fun, platforms=platforms, **kwargs)`` whose tracing and lowering run
    inside :func:`off`: the exported module is the plain graph for every platform (CPU included: the
    layer's C++ custom calls are local builds, not serialisable). Returns ``f(*args) -> Exported``
    as ``jax.export.export`` does (args may be ``jax.ShapeDtypeStruct`` with shardings)."""
    import jax

    exporter = jax.export.export(fun, platforms=platforms, **kwargs)

    def lower(*args, **kw):
        with off():
            return exporter(*args, **kw)

    return lower
