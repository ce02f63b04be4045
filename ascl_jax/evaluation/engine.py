"""Batching, sharding and bookkeeping shared by every evaluation attack.

An ``Engine`` holds a model (``logits_fn`` and its ``params``), a 1-D ``('data',)`` mesh and a global
batch size. It runs *stages*: compiled per-batch functions ``(x, y, index, active, key, rank, eps) ->
(x_adv, fooled)``. A stage runs only on the rows given to it (the rows still robust): those rows are
gathered on the host, cut into as many batches as the global batch size needs, all of one size
(``parallel.balanced_batch_size``: at most the global batch and one of at most 16 bucket sizes, so
a stage compiles for a few shapes; the last batch padded with copies of a real row and masked out),
placed with ``NamedSharding(mesh, P('data'))``, attacked, and the results scattered back.
Compaction happens on the host *between* stages (attacks, restarts and target classes), never inside
the iteration loops, which are all in compiled code. Every stage re-projects its output onto the
eps-ball and [0, 1] and re-checks the prediction there, so a row only counts as broken on a verified
adversarial example.

The model parameters are an explicit (replicated) argument of the compiled functions rather than
captured constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import parallel
from ascl_jax.evaluation import programs
from ascl_jax.evaluation.projections import project_ball
from ascl_jax.parallel import DATA_AXIS


def max_eps(norm: str, shape) -> float:
    """The largest meaningful radius for images of per-example ``shape`` in [0, 1]: the diameter
    of the box under ``norm`` (1 for L-inf, sqrt(D) for L2, D for L1)."""
    d = int(np.prod(shape)) if shape is not None else 1
    return {"Linf": 1.0, "L2": math.sqrt(d), "L1": float(d)}.get(norm, 1.0)


def check_eps(eps, name: str = "eps", *, norm: str = "Linf", shape=None) -> float:
    """eps must be a number in (0, max_eps(norm, shape)] (images live in [0, 1]; for L2 / L1 the
    bound is the box's diameter, known once the image ``shape`` is)."""
    hi = max_eps(norm, shape) if norm != "Linf" else 1.0
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={eps!r} must be a number in (0, {hi:g}]") from None
    if math.isnan(e) or not (0.0 < e <= hi * (1 + 1e-9)):
        where = "images are in [0, 1]" if norm == "Linf" else f"the {norm} diameter of [0, 1]^D"
        raise ValueError(f"{name}={eps!r} must lie in (0, {hi:g}] for norm={norm!r} ({where})")
    return e


def check_inputs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """x [N, H, W, C] float in [0, 1], y [N] int in [0, K)."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C] (NHWC), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be [N] with N={x.shape[0]}, got shape {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    x = x.astype(np.float32, copy=False)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0 or not np.isfinite(x).all():
        raise ValueError(
            f"images must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); "
            "normalisation is the model's first operation"
        )
    return x, y.astype(np.int32)


def _get(a: jax.Array) -> np.ndarray:
    """A global array's value as numpy on every process (``parallel.to_host``)."""
    return np.asarray(parallel.to_host(a))


def grow(bar, n: int) -> None:
    """Adds n rows to a shared progress bar's total."""
    if bar is not None:
        bar.total = (bar.total or 0) + n
        bar.refresh()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return None
    try:
        from tqdm import auto as tqdm_auto
    except ImportError:  # tqdm is a dependency; stay silent without it
        return None
    return tqdm_auto.tqdm(total=total, desc=desc, unit="ex", leave=True, dynamic_ncols=True)


_ENGINES: dict = {}
_MAX_ENGINES = 4


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return ("id", id(v))


def _fn_key(fn):
    """A cache key for a callable: equal for closures of the same code over the same objects and
    the same global namespace.

    ``lambda v, x: model.apply(v, x)['logits']`` created anew on every call (a common pattern) then
    still finds its engine and compiled stages; a ``functools.partial`` keys on its function and
    arguments. The same source run in two namespaces (two notebooks, two doctests) keys apart: the
    cached engine holds the function, so the namespace's id stays unique while it is cached.
    """
    import functools

    if isinstance(fn, functools.partial):
        return (
            "partial",
            _fn_key(fn.func),
            tuple(_hashable(a) for a in fn.args),
            tuple(sorted((k, _hashable(v)) for k, v in fn.keywords.items())),
        )
    code = getattr(fn, "__code__", None)
    if code is None:
        return _hashable(fn)
    cells = tuple(_hashable(c.cell_contents) for c in (fn.__closure__ or ()))
    namespace = id(getattr(fn, "__globals__", None))
    return ("code", code, namespace, cells, _hashable(getattr(fn, "__defaults__", None)))


def get_engine(
    logits_fn: Callable,
    *,
    params=None,
    batch_size: int = 128,
    mesh=None,
    progress: bool = True,
    unroll: int | None = None,
    stochastic: bool = False,
) -> Engine:
    """An Engine for ``logits_fn``, reused across calls so that its compiled stages are too.

    The cache key is the function (its code and the objects its closure holds, see ``_fn_key``), the
    mesh, batch size and unroll; the parameters are swapped in, not part of the key (they are
    arguments of the compiled functions), so a periodic evaluation compiles each stage once per run
    and batch size (``parallel.balanced_batch_size``: a few sizes).
    At most ``_MAX_ENGINES`` engines are kept (least recently used dropped).
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    key = (_fn_key(logits_fn), params is None, mesh, int(batch_size), unroll, bool(stochastic))
    kw = dict(params=params, batch_size=batch_size, mesh=mesh, unroll=unroll, progress=progress)
    try:
        hash(key)
    except TypeError:  # something unhashable in the closure: a fresh, uncached engine
        return Engine(logits_fn, stochastic=stochastic, **kw)
    eng = _ENGINES.pop(key, None)
    if eng is None:
        eng = Engine(logits_fn, stochastic=stochastic, **kw)
    else:
        eng.set_params(params)
        eng.progress = progress
    _ENGINES[key] = eng  # most recently used last
    while len(_ENGINES) > _MAX_ENGINES:
        _ENGINES.pop(next(iter(_ENGINES)))
    return eng


class Engine:
    """Runs compiled attack stages over host arrays, batched and sharded over a ('data',) mesh.

    Args:
      logits_fn: ``x -> logits`` when ``params`` is None, else ``(params, x) -> logits``;
        x [B, H, W, C] in [0, 1], logits [B, K]. Must treat rows independently (eval-mode BN).
      params: a pytree passed (replicated) to every compiled call, or None.
      batch_size: global batch; rounded up to a multiple of the mesh size.
      mesh: a 1-D mesh with axis 'data' (default: all devices).
      progress: tqdm bars (process 0 only).
      unroll: iterations per loop body (default 1). A stage runs the attack's init, one compiled
        ``lax.while_loop`` over its iterations (``programs.run_program``; with the CPU speed layer
        on, its loop body's convolutions are canonicalised, ``xla_cpu.loops``) and the verification
        as one compiled call per batch.
      stochastic: a randomised model, called as ``logits_fn(x, key)`` (``(params, x, key)``) with a
        typed PRNG key. Inside the stages the model is ``lf(x, key=None)``: attacks that pass a
        key (APGD, a fresh key per forward pass) see fresh noise; calls without one (clean
        prediction, targets, FAB, Square, verification) use a fixed key, i.e. one noise draw.
    """

    def __init__(
        self,
        logits_fn: Callable,
        *,
        params=None,
        batch_size: int = 128,
        mesh=None,
        progress: bool = True,
        unroll: int | None = None,
        stochastic: bool = False,
    ):
        if not callable(logits_fn):
            raise ValueError("logits_fn must be callable: x -> logits (or (params, x) -> logits)")
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size={batch_size!r} must be > 0")
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        if DATA_AXIS not in self.mesh.axis_names:
            raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis, got {self.mesh.axis_names}")
        n_dev = self.mesh.shape[DATA_AXIS]
        self.batch_size = -(-int(batch_size) // n_dev) * n_dev
        self.repl = parallel.replicated(self.mesh)
        self.data = parallel.data_sharded(self.mesh)
        self._has_params = params is not None
        self.stochastic = bool(stochastic)
        if self.stochastic:
            self._fn = logits_fn if self._has_params else (lambda p, x, k: logits_fn(x, k))
        else:
            self._fn = logits_fn if self._has_params else (lambda p, x: logits_fn(x))
        self.set_params(params)
        self.progress = progress
        self.unroll = 1 if unroll is None else max(1, int(unroll))
        self._cache: dict = {}

    def set_params(self, params) -> None:
        """Replaces the model parameters (same structure: no recompilation)."""
        if (params is not None) != self._has_params:
            raise ValueError(
                "this engine was built with"
                + ("" if self._has_params else "out")
                + " params; pass them consistently"
            )
        self.params = () if params is None else jax.device_put(params, self.repl)

    # -- compiled functions ----------------------------------------------------------------------

    def logits_fn(self, params):
        """The ``x -> logits`` closure over (traced) params; ``(x, key=None) -> logits`` for a
        stochastic model (key None: the fixed key ``jax.random.key(0)``)."""
        if not self.stochastic:
            return lambda x: self._fn(params, x)
        return lambda x, key=None: self._fn(params, x, jax.random.key(0) if key is None else key)

    def _predict_jit(self):
        if "predict" not in self._cache:

            def predict(params, x):
                logits = self.logits_fn(params)(x)
                return jnp.argmax(logits, -1).astype(jnp.int32), jnp.asarray(logits.shape[-1])

            self._cache["predict"] = jax.jit(
                predict, in_shardings=(self.repl, self.data), out_shardings=(self.data, self.repl)
            )
        return self._cache["predict"]

    def stage(self, cache_key, prog: programs.Program, *, unroll: int | None = None, early_stop: bool = True):
        """A stage ``f(params, x, y, index, active, key, rank, eps) -> (x_adv, fooled)`` for a Program.

        The result is re-projected onto the eps-ball (``prog.norm``) and [0, 1] and ``fooled`` is
        recomputed there as ``active & (argmax logits(x_adv) != y)``. Compiled functions are cached
        under ``cache_key``.
        """
        unroll = self.unroll if unroll is None else max(1, int(unroll))
        full_key = (cache_key, prog.n_steps, prog.norm, unroll, early_stop)
        if full_key in self._cache:
            return self._cache[full_key]

        def verify(params, x, y, active, eps, x_adv):
            lf = self.logits_fn(params)
            x_adv = project_ball(x_adv, x, eps, prog.norm)
            return x_adv, active & (jnp.argmax(lf(x_adv), -1) != y)

        def run(params, x, y, index, active, key, rank, eps):
            lf = self.logits_fn(params)
            x_adv, _ = programs.run_program(
                prog,
                lf,
                x,
                y,
                index=index,
                active=active,
                key=key,
                rank=rank,
                eps=eps,
                unroll=unroll,
                early_stop=early_stop,
            )
            return verify(params, x, y, active, eps, x_adv)

        fn = jax.jit(run)
        self._cache[full_key] = fn
        return fn

    def compile_stage(self, cache_key, fn):
        """``fn`` with a stage's calling convention (``f(params, x, y, index, active, key, rank,
        eps) -> (x_out, flags)``, rows sharded over 'data', the rest replicated), jitted once per
        ``cache_key``; runs with ``run_stage``."""
        if cache_key not in self._cache:
            self._cache[cache_key] = jax.jit(
                fn,
                in_shardings=(self.repl,) + (self.data,) * 4 + (self.repl,) * 3,
                out_shardings=(self.data, self.data),
            )
        return self._cache[cache_key]

    # -- host loops ------------------------------------------------------------------------------

    def predict(
        self, x: np.ndarray, *, desc: str = "clean", y: np.ndarray | None = None, progress: bool | None = None
    ) -> tuple[np.ndarray, int]:
        """Predicted classes [N] and the number of classes K."""
        fn = self._predict_jit()
        out = np.zeros(x.shape[0], np.int32)
        n_cls = None
        bar = _progress(x.shape[0], desc, self.progress if progress is None else progress)
        n_ok = done = 0
        for r, _, n in parallel.padded_index_batches(np.arange(x.shape[0]), self.batch_size):
            pred, k = fn(self.params, parallel.put_global(x[r], self.data))
            pred = _get(pred)[:n]
            out[r[:n]] = pred
            n_cls = int(_get(k))
            if bar is not None:
                if y is not None:
                    n_ok += int((pred == y[r[:n]]).sum())
                    done += n
                    bar.set_postfix(acc=f"{n_ok / done:.2%}")
                bar.update(n)
        if bar is not None:
            bar.close()
        return out, n_cls

    def run_stage(
        self,
        fn,
        x: np.ndarray,
        y: np.ndarray,
        index: np.ndarray,
        rows: np.ndarray,
        key,
        *,
        eps: float,
        rank: int = 0,
        desc: str = "",
        robust_count: int | None = None,
        total: int | None = None,
        keep_adv: bool = True,
        bar=None,
    ):
        """Runs a compiled stage on ``rows``; returns (fooled [len(rows)] bool, x_adv or None).

        ``robust_count``/``total`` drive the running robust accuracy shown in the progress bar;
        ``bar`` (from ``progress_bar``) lets several stages of one attack share a bar.
        """
        fooled = np.zeros(len(rows), bool)
        x_adv = np.empty((len(rows),) + x.shape[1:], np.float32) if keep_adv else None
        if len(rows) == 0:
            return fooled, x_adv
        key_r = jax.device_put(key, self.repl)
        rank_r = jax.device_put(jnp.int32(rank), self.repl)
        eps_r = jax.device_put(jnp.float32(eps), self.repl)
        own_bar = bar is None
        if own_bar:
            bar = _progress(len(rows), desc, self.progress)
        elif desc:
            bar.set_description(desc)
        done = 0
        put = lambda a: parallel.put_global(a, self.data)  # noqa: E731
        b = parallel.balanced_batch_size(len(rows), self.batch_size, self.mesh.shape[DATA_AXIS])
        for r, valid, n in parallel.padded_index_batches(rows, b):
            # Padding rows repeat a real row; `valid` masks them out of the results.
            out_x, out_f = fn(
                self.params,
                put(x[r]),
                put(y[r]),
                put(index[r].astype(np.int32)),
                put(valid),
                key_r,
                rank_r,
                eps_r,
            )
            f = _get(out_f)[:n]
            fooled[done : done + n] = f
            if keep_adv:
                x_adv[done : done + n] = _get(out_x)[:n]
            done += n
            if bar is not None:
                if robust_count is not None:
                    robust_count -= int(f.sum())
                    bar.set_postfix(robust=f"{robust_count / max(total, 1):.2%}")
                bar.update(n)
        if bar is not None and own_bar:
            bar.close()
        return fooled, x_adv

    def progress_bar(self, desc: str):
        """A progress bar (or None) shared by the stages of one attack; grow it with ``grow``."""
        return _progress(0, desc, self.progress)
