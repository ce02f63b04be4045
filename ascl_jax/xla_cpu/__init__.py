"""The XLA:CPU speed layer, behind one switch.

Switch: :func:`enabled` is true when the environment variable ``ASCL_JAX_CPU_FAST`` is not one of
``0``/``false``/``no``/``off`` (:func:`requested`) and JAX's default backend is CPU. On any other
backend the layer is off by construction. It is read at trace time, so it decides what a function
compiles to when it is traced.

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

This module imports nothing from JAX at import time (``flags`` must run before JAX starts).
"""

from __future__ import annotations

import os

ENV_SWITCH = "ASCL_JAX_CPU_FAST"
_OFF = ("0", "false", "no", "off")


def requested() -> bool:
    """Whether the environment leaves the speed layer on (``ASCL_JAX_CPU_FAST`` unset or not off).
    Reads only the environment (safe before JAX starts)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in _OFF


def enabled() -> bool:
    """The switch: :func:`requested` and JAX's default backend is CPU (decided at trace time)."""
    if not requested():
        return False
    import jax  # not at import time: flags.tune_cpu_flags runs before JAX is imported

    return jax.default_backend() == "cpu"
