"""XLA:CPU options that must be set before JAX compiles anything (imports nothing from JAX).

:func:`tune_cpu_flags` appends ``--xla_cpu_experimental_ynn_fusion_type=`` (empty: XLA:CPU sends no
convolution to YNNPACK fusions and uses its Eigen convolutions, which are faster for the
CIFAR-sized convolutions here; bench/step.py ``--flag-sets`` compares both) to ``XLA_FLAGS``.
It does so only when all of these hold, and otherwise leaves ``XLA_FLAGS`` untouched:

- the speed layer is requested (``ASCL_JAX_CPU_FAST`` is not ``0``; :func:`ascl_jax.xla_cpu.requested`);
- ``ASCL_JAX_KEEP_XLA_FLAGS`` is not set;
- ``XLA_FLAGS`` does not already choose a ``ynn_fusion_type``;
- the installed jaxlib is a version known to accept the flag (an unknown flag aborts XLA).

The flag only concerns the CPU backend; numerical results are those of XLA's convolutions either way
(up to float rounding).
"""

import os

from ascl_jax import xla_cpu

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_KNOWN = ("0.10.",)


def tune_cpu_flags() -> bool:
    """Adds the flag to XLA_FLAGS when safe (module doc); returns whether it did. Call before JAX's
    first computation (importing JAX first is fine; ``ascl_jax.main`` calls it before)."""
    if not xla_cpu.requested() or os.environ.get("ASCL_JAX_KEEP_XLA_FLAGS"):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" in flags:
        return False
    try:
        from importlib.metadata import version

        if not version("jaxlib").startswith(_KNOWN):
            return False
    except Exception:  # noqa: BLE001 - no metadata: leave XLA alone
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}".strip()
    return True
