"""C++ kernels for XLA:CPU, called as XLA FFI custom calls; built from source on first use.

One kernel so far, :func:`channel_sums` (``channel_sums.cc``): the per-channel sums of train-mode
batch norm, ``sum a`` and ``sum a * (b - shift)`` over all axes but the last, in one pass. XLA:CPU
writes ``x*x``, ``x - mean`` and ``dy * (x - mean)`` to memory before reducing them, because the
reduce-window ops of its tree-reduction rewrite do not fuse their producers; the kernel reads the
operands once (docs/design.md "CPU fast paths"). :mod:`ascl_jax.models.norm` uses it on CPU when
:func:`enabled` says so and falls back to XLA's reductions otherwise; both give the same results up
to float rounding (tests/test_cpu_kernels.py).

Build: the first call compiles ``channel_sums.cc`` with the system C++ compiler (``$CXX``, else
``c++``/``g++``/``clang++``; ``-O3 -march=native``, about 2 s) against the XLA FFI headers that
jaxlib ships (``jax.ffi.include_dir()``), into a cache directory (``$ASCL_JAX_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/ascl_jax/kernels``, else ``~/.cache/ascl_jax/kernels``). The library's file name
carries a hash of the source, the compiler command, the compiler's version, jaxlib's version and
this CPU's feature flags, so a changed source, toolchain or machine gets a new build and a cached
library is never loaded on a CPU it was not built for. Builds are written to a temporary file and
renamed into place, so concurrent processes (pytest-xdist workers) are safe.

When the kernels are not used: ``ASCL_JAX_CPU_KERNELS=0`` in the environment; a backend other than
CPU; more than one process (``jax.process_count() > 1``: the custom call has no partitioning rule,
so XLA would gather the global batch onto every device); no compiler, or a failed build or load
(one warning, naming the cause, then XLA's reductions).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp

ENV_SWITCH = "ASCL_JAX_CPU_KERNELS"
ENV_CACHE = "ASCL_JAX_KERNEL_CACHE"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "channel_sums.cc")
TARGET = "ascl_channel_sums"
SYMBOL = "AsclChannelSums"
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def cache_dir() -> str:
    """Where built libraries are kept (see the module doc)."""
    if os.environ.get(ENV_CACHE):
        return os.environ[ENV_CACHE]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ascl_jax", "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """The CPU's model and feature flags (so a cached -march=native build stays on its machine)."""
    sig = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    sig.append(line.strip())
                if len(sig) >= 4:
                    break
    except OSError:
        sig.append(platform.processor())
    return "\n".join(sig)


def library_path(cxx: str) -> str:
    """The cached library's path for this source, compiler, jaxlib and CPU (built or not)."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    try:
        cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        cxx_version = ""
    h = hashlib.sha256()
    for part in (source, cxx.encode(), " ".join(CXX_FLAGS).encode(), cxx_version.encode(),
                 importlib.metadata.version("jaxlib").encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return os.path.join(cache_dir(), f"libascl_cpu_kernels-{h.hexdigest()[:20]}.so")


def build() -> str:
    """Compiles the kernels if no cached build exists; returns the library path. Raises on failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    path = library_path(cxx)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [cxx, *CXX_FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@functools.cache
def load() -> bool:
    """Builds (if needed), loads and registers the kernels once per process; False on failure."""
    try:
        import ctypes
        lib = ctypes.cdll.LoadLibrary(build())
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(lib, SYMBOL)),
                                    platform="cpu")
        return True
    except Exception as e:  # noqa: BLE001 - any failure means: use XLA's reductions instead
        warnings.warn(f"ascl_jax.cpu_kernels: not using the C++ batch-norm kernel ({e}); "
                      f"falling back to XLA's reductions (set {ENV_SWITCH}=0 to skip the build)",
                      RuntimeWarning, stacklevel=2)
        return False


def enabled() -> bool:
    """Whether :func:`channel_sums` runs here (decided at trace time; module doc)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return False
    return load()


def channel_sums(a: jax.Array, b: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum a, sum a * (b - shift))`` over all axes but the last, in float32.

    a, b: [..., C] float32, same shape; shift: [C]. Returns two [C] arrays. Requires :func:`load`
    to have succeeded (callers check :func:`enabled`). Summation: float within blocks of 256 rows,
    double across blocks and threads; deterministic for a given shape and thread count.
    """
    if a.shape != b.shape or shift.shape != a.shape[-1:]:
        raise ValueError(f"channel_sums: a, b must be [..., C] of one shape and shift [C]; got "
                         f"{a.shape}, {b.shape}, {shift.shape}")
    out = jax.ShapeDtypeStruct(a.shape[-1:], jnp.float32)
    return tuple(jax.ffi.ffi_call(TARGET, (out, out), vmap_method="sequential")(
        a.astype(jnp.float32), b.astype(jnp.float32), shift.astype(jnp.float32)))
