"""Data parallelism: one 1-D ('data',) mesh over all global devices, jit + NamedSharding (no pmap).

Under `jax.jit` with the batch sharded over 'data' and the state replicated, batch norm and the
contrastive loss see the global batch (global / sync BN), so results equal one device up to
float reduction order. Multi-host: call `initialize_distributed()` first; each process feeds its
own slice and `to_global` stitches the global array.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ascl_jax.config import ConfigError

DATA_AXIS = "data"


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
    """`jax.distributed.initialize`, before any other JAX call.

    With no arguments JAX auto-detects Cloud TPU, Slurm and Open MPI; the local multi-process
    launcher passes a localhost coordinator explicitly.
    """
    kwargs = {}
    if coordinator:
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A ('data',) mesh over every global device (or `devices`), Auto axis type."""
    if devices is not None:
        return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divides(global_batch: int, field: str = "data.batch_size", mesh=None) -> None:
    """A global batch must split evenly over devices and over processes."""
    n_dev = mesh.devices.size if mesh is not None else jax.device_count()
    n_proc = jax.process_count()
    if global_batch % n_dev:
        raise ConfigError(
            f"config.{field}={global_batch} does not divide over the {n_dev} devices; use a "
            f"multiple of {n_dev} (e.g. {max(n_dev, global_batch // n_dev * n_dev)})"
        )
    if global_batch % n_proc:
        raise ConfigError(f"config.{field}={global_batch} does not divide over {n_proc} processes")


def to_global(local_batch, sharding: NamedSharding):
    """Host-local numpy batch (this process's slice) -> global jax.Array sharded on 'data'."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def _replicated_like(x: jax.Array):
    """The replicated sharding over the devices that hold `x`."""
    s = x.sharding
    if isinstance(s, NamedSharding):
        return s.update(spec=P())
    devices = sorted(s.device_set, key=lambda d: d.id)
    return NamedSharding(jax.sharding.Mesh(np.asarray(devices), ("all",)), P())


def _identity(*xs):
    return xs


def to_host(tree):
    """Every array of `tree` as numpy, in full, on every process: the one way results leave the
    devices (evaluation, latents, pseudo-labels, training metrics).

    A global `jax.Array` of which this process holds only part (e.g. data-sharded over devices of
    several processes) is gathered by one jitted copy of all such leaves to the replicated sharding,
    then read from a local device; this is a collective, so every process must call `to_host` with
    the same tree structure and shapes in the same order. Fully replicated and fully addressable
    arrays, numpy arrays and Python scalars are read locally (no communication; numpy leaves are
    never concatenated over processes). Returns the tree with numpy arrays (scalars as 0-d arrays).
    """
    leaves, treedef = jax.tree.flatten(tree)
    remote = [
        i
        for i, x in enumerate(leaves)
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated
    ]
    if remote:
        shardings = tuple(_replicated_like(leaves[i]) for i in remote)
        gathered = jax.jit(_identity, out_shardings=shardings)(*(leaves[i] for i in remote))
        for i, g in zip(remote, gathered):
            leaves[i] = g

    def read(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))  # fully replicated: any local copy is the value
        return np.asarray(x)

    return jax.tree.unflatten(treedef, [read(x) for x in leaves])


def sync(name: str) -> None:
    """A barrier over all processes (`multihost_utils.sync_global_devices`); nothing with one
    process. Used where process 0 writes a file that every process reads next."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def put_global(arr: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array that every process holds in full -> global jax.Array with `sharding`.

    (`to_global` instead takes each process's own slice.)
    """
    if jax.process_count() == 1:
        return jax.device_put(arr, sharding)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def balanced_batch_size(
    n: int, batch_size: int, multiple: int = 1, buckets: int = 16, min_width: int = 64
) -> int:
    """The batch size that covers n rows in as many batches as `batch_size` needs, with the least
    padding a few fixed sizes allow.

    k = ceil(n / batch_size) batches of ceil(n / k) rows, rounded up to a multiple of the bucket
    width max(ceil(batch_size / buckets), min_width) (itself rounded up to a multiple of `multiple`,
    the device count, of which `batch_size` must be a multiple), and at most `batch_size`. A
    function compiled per shape therefore sees at most `buckets` sizes (one, `batch_size`, when it
    is <= min_width), and the k batches carry fewer than k bucket widths of padding in all (all of
    it in the last batch) instead of up to `batch_size - 1` rows.
    Examples at batch_size 500: 660 rows run as 2 batches of 384 (768 rows computed, not 1000), 513
    as 2 of 320.
    """
    if n <= 0 or batch_size <= 0 or multiple <= 0 or batch_size % multiple:
        raise ValueError(
            f"balanced_batch_size: n={n}, batch_size={batch_size}, multiple={multiple}: all must be > 0 "
            "and batch_size a multiple of multiple"
        )
    width = _round_up(max(_round_up(batch_size, buckets) // buckets, min_width), multiple)
    k = _round_up(n, batch_size) // batch_size
    return min(batch_size, _round_up(_round_up(n, k) // k, width))


def _round_up(a: int, m: int) -> int:
    """a rounded up to a multiple of m."""
    return -(-a // m) * m


def padded_index_batches(rows: np.ndarray, batch_size: int):
    """Yields (batch_rows [batch_size], valid bool [batch_size], n) over `rows` in order.

    The last batch is padded with copies of its first row (a real example, so every padded row is
    a valid input); `valid` marks the n real rows, which come first.
    """
    b = batch_size
    for s in range(0, len(rows), b):
        r = rows[s : s + b]
        n = len(r)
        if n < b:
            r = np.concatenate([r, np.full(b - n, r[0], r.dtype)])
        yield r, np.arange(b) < n, n


def map_batches(fn, arrays, batch_size: int, sharding: NamedSharding):
    """`fn` over consecutive batches of host arrays, results gathered on the host.

    arrays: a tuple of numpy arrays with the same leading size n, held in full by every process.
    Each batch of `batch_size` rows (the last one padded as `padded_index_batches` does, so `fn`
    compiles once) is put on `sharding` and passed as `fn(start, *batch)`, start = the index of its
    first row. `fn` returns an array or a tuple of arrays with a leading batch axis, computed per
    row (padding rows must not change the real rows' results). Returns the same structure of numpy
    arrays with the padding rows dropped, concatenated over batches: leading size n.
    """
    outs = []
    for rows, _, n_real in padded_index_batches(np.arange(len(arrays[0])), batch_size):
        out = fn(int(rows[0]), *(put_global(a[rows], sharding) for a in arrays))
        outs.append(jax.tree.map(lambda o, k=n_real: np.asarray(o)[:k], to_host(out)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
