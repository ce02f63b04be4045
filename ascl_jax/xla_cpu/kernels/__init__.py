"""C++ kernels for XLA:CPU, called as XLA FFI custom calls; built from source on first use.

Part of the CPU speed layer (:mod:`ascl_jax.xla_cpu`): the library calls them only through
:mod:`ascl_jax.xla_cpu.conv` and :mod:`ascl_jax.xla_cpu.batch_norm`, and only when the layer is on
(``ASCL_JAX_CPU_FAST``) and :func:`available`. tests/test_cpu_kernels.py checks them against float64
numpy and against XLA.

- :func:`channel_sums` (``channel_sums.cc``): the per-channel sums of train-mode batch norm,
  ``sum a`` and ``sum a * (b - shift)`` over all axes but the last, in one pass (where XLA:CPU
  writes ``x*x``, ``x - mean`` and ``dy * (x - mean)`` to memory before reducing them).
- :func:`conv3x3` (``conv3x3.cc``): a direct 3x3 stride-1 padding-1 NHWC convolution with AVX-512
  register blocking, used only where the build has its AVX-512 code (:func:`conv3x3_available`);
  :func:`conv3x3_input_grad` (the same kernel on the flipped kernel) and
  :func:`conv3x3_weight_grad`, its kernel gradient, summed over each image in registers.

Results equal XLA's up to float rounding; each kernel sums in a fixed order (the docstrings say
which), so the same shape gives the same bits whatever the thread timing. Calling a kernel function
directly builds and loads the library first and raises ``RuntimeError`` if that is not possible.

Build: the first call compiles the ``.cc`` files with the system C++ compiler (``$CXX``, else
``c++``/``g++``/``clang++``; ``-O3 -march=native``) against the XLA FFI headers that jaxlib ships
(``jax.ffi.include_dir()``), into a cache directory (``$ASCL_JAX_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/ascl_jax/kernels``, else ``~/.cache/ascl_jax/kernels``). The library's file name
carries a hash of the source, the compiler command, the compiler's version, jaxlib's version and
this CPU's feature flags, so a changed source, toolchain or machine gets a new build and a cached
library is never loaded on a CPU it was not built for. Builds are written to a temporary file and
renamed into place, so concurrent processes (pytest-xdist workers) are safe.

Not :func:`available`: a backend other than CPU; more than one process (``jax.process_count() >
1``: the custom call has no partitioning rule, so XLA would gather the global batch onto every
device; within one process, e.g. the tests' 8 simulated CPU devices, it does that too: correct, but
each device then computes the whole call); no compiler, or a failed build or load (one warning,
naming the cause; the callers then use XLA's ops).
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

ENV_CACHE = "ASCL_JAX_KERNEL_CACHE"
_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = (os.path.join(_HERE, "channel_sums.cc"), os.path.join(_HERE, "conv3x3.cc"))
HEADERS = (os.path.join(_HERE, "work_queue.h"),)  # part of the build's cache key
TARGET = "ascl_channel_sums"  # FFI target names and the library symbols of their handlers
CONV_TARGET = "ascl_conv3x3"
WGRAD_TARGET = "ascl_conv3x3_wgrad"
_SYMBOLS = {TARGET: "AsclChannelSums", CONV_TARGET: "AsclConv3x3", WGRAD_TARGET: "AsclConv3x3Wgrad"}
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


def include_dir() -> str:
    """The XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``, else ``jaxlib/include``)."""
    fn = getattr(jax.ffi, "include_dir", None)
    if fn is not None:
        return fn()
    import jaxlib

    path = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    if os.path.isfile(os.path.join(path, "xla", "ffi", "api", "ffi.h")):
        return path
    raise RuntimeError("the XLA FFI headers were not found (jax.ffi.include_dir, jaxlib/include)")


def library_path(cxx: str) -> str:
    """The cached library's path for this source, compiler, jaxlib and CPU (built or not)."""
    source = b""
    for src in (*SOURCES, *HEADERS):
        with open(src, "rb") as f:
            source += f.read() + b"\0"
    try:
        cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        cxx_version = ""
    h = hashlib.sha256()
    for part in (
        source,
        cxx.encode(),
        " ".join(CXX_FLAGS).encode(),
        cxx_version.encode(),
        importlib.metadata.version("jaxlib").encode(),
        _cpu_signature().encode(),
    ):
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
    cmd = [cxx, *CXX_FLAGS, "-I", include_dir(), *SOURCES, "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_VECTORIZED = {"conv3x3": False}


@functools.cache
def load() -> bool:
    """Builds (if needed), loads and registers the kernels once per process; False on failure."""
    try:
        import ctypes

        lib = ctypes.cdll.LoadLibrary(build())
        _VECTORIZED["conv3x3"] = bool(lib.AsclConv3x3Vectorized())
        for target, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        return True
    except Exception as e:  # noqa: BLE001 - any failure means: use XLA's ops instead
        warnings.warn(
            f"ascl_jax.xla_cpu.kernels: not using the C++ kernels ({e}); falling back "
            "to XLA's ops (ASCL_JAX_CPU_FAST=0 turns the CPU speed layer off)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def available() -> bool:
    """Whether the kernels can run here: CPU backend, one process, library built and loaded
    (module doc; decided at trace time). The speed layer's switch is the callers' to check."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return False
    return load()


def _require_loaded(name: str) -> None:
    if not load():
        raise RuntimeError(
            f"xla_cpu.kernels.{name}: the C++ kernels could not be built or loaded "
            "(see the warning above); use the XLA paths instead"
        )


def channel_sums(a: jax.Array, b: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum a, sum a * (b - shift))`` over all axes but the last, in float32.

    a, b: [..., C] float32, same shape; shift: [C]. Returns two [C] arrays. Summation: float within
    blocks of 256 rows, double across blocks and threads; deterministic for a given shape and thread
    count.
    """
    if a.shape != b.shape or shift.shape != a.shape[-1:]:
        raise ValueError(
            f"channel_sums: a, b must be [..., C] of one shape and shift [C]; got "
            f"{a.shape}, {b.shape}, {shift.shape}"
        )
    _require_loaded("channel_sums")
    out = jax.ShapeDtypeStruct(a.shape[-1:], jnp.float32)
    return tuple(
        jax.ffi.ffi_call(TARGET, (out, out), vmap_method="sequential")(
            a.astype(jnp.float32), b.astype(jnp.float32), shift.astype(jnp.float32)
        )
    )


def conv3x3_available() -> bool:
    """Whether :func:`conv3x3` is worth using here: :func:`available`, and the build has its AVX-512
    code (without it the kernel is plain loops, slower than XLA's convolution)."""
    return available() and _VECTORIZED["conv3x3"]


def conv3x3_supported(x_shape, w_shape, stride: int, padding, dtype) -> bool:
    """Whether :func:`conv3x3` computes ``conv_general_dilated(x, w, stride, padding)`` (NHWC, HWIO):
    a 3x3 kernel, stride 1, one pixel of zero padding on each side, float32, 16k output channels.
    Shape test only (callers also check :func:`conv3x3_available`)."""
    return (
        len(x_shape) == 4
        and tuple(w_shape[:2]) == (3, 3)
        and stride == 1
        and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
        and w_shape[2] == x_shape[3]
        and w_shape[3] % 16 == 0
        and w_shape[3] > 0
        and jnp.dtype(dtype) == jnp.float32
    )


def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3 stride-1 padding-1 convolution: x [N, H, W, Ci] (NHWC), w [3, 3, Ci, Co] (HWIO, Co a
    multiple of 16) -> [N, H, W, Co], float32. Equals ``lax.conv_general_dilated(x, w, (1, 1),
    ((1, 1), (1, 1)))`` up to float rounding. Not differentiable by itself (:mod:`ascl_jax.xla_cpu.conv`
    holds the rules)."""
    if not conv3x3_supported(x.shape, w.shape, 1, ((1, 1), (1, 1)), x.dtype) or w.dtype != x.dtype:
        raise ValueError(
            f"conv3x3: needs x [N, H, W, Ci] and w [3, 3, Ci, 16k], float32; got "
            f"{x.shape} {x.dtype}, {w.shape} {w.dtype}"
        )
    _require_loaded("conv3x3")
    out = jax.ShapeDtypeStruct(x.shape[:3] + w.shape[3:], jnp.float32)
    return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method="sequential")(x, w)


def conv3x3_input_grad(dy: jax.Array, w: jax.Array) -> jax.Array:
    """dx of :func:`conv3x3` (the same convolution with the kernel flipped and its channel axes
    swapped): dy [N, H, W, Co], w [3, 3, Ci, Co] (Ci a multiple of 16) -> [N, H, W, Ci]."""
    return conv3x3(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))


def conv3x3_weight_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    """Kernel gradient of :func:`conv3x3`: x [N, H, W, Ci], dy [N, H, W, Co] (Co a multiple of 16)
    -> dw [3, 3, Ci, Co], ``dw[a, b, i, o] = sum_{n, h, v} xpad[n, h + a, v + b, i] dy[n, h, v, o]``.
    Summed per image in float32 registers, then over fixed blocks of images in block order
    (deterministic for a given shape)."""
    if (
        x.ndim != 4
        or dy.ndim != 4
        or x.shape[:3] != dy.shape[:3]
        or dy.shape[3] % 16
        or x.dtype != jnp.float32
        or dy.dtype != jnp.float32
    ):
        raise ValueError(
            f"conv3x3_weight_grad: needs x [N, H, W, Ci] and dy [N, H, W, 16k], "
            f"float32; got {x.shape} {x.dtype}, {dy.shape} {dy.dtype}"
        )
    _require_loaded("conv3x3_weight_grad")
    out = jax.ShapeDtypeStruct((3, 3, x.shape[3], dy.shape[3]), jnp.float32)
    return jax.ffi.ffi_call(WGRAD_TARGET, out, vmap_method="sequential")(x, dy)
