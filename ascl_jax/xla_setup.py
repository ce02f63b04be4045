"""XLA:CPU options that must be set before JAX starts (imports nothing from JAX).

On jaxlib 0.10 XLA:CPU sends most convolutions to YNNPACK, which is slower than Eigen for the
CIFAR-sized convolutions here: `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK
fusions) made PGD-10 on ResNet-20 ~1.25x and weight gradients ~2x faster (bench/step.py). Only
added for jaxlib versions known to accept the flag (an unknown flag aborts XLA), only when the
user has not set it, and never when ASCL_JAX_KEEP_XLA_FLAGS is set.
"""
import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_KNOWN = ("0.10.",)


def tune_cpu_flags() -> bool:
    """Adds the flag to XLA_FLAGS when safe; returns whether it did. Call before importing jax."""
    if os.environ.get("ASCL_JAX_KEEP_XLA_FLAGS"):
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
