"""Data parallelism: one 1-D ('data',) mesh over all global devices, jit + NamedSharding (no pmap).

Under `jax.jit` with the batch sharded over 'data' and the state replicated, batch norm and the
contrastive loss see the global batch (global / sync BN), so results equal one device up to
float reduction order. Multi-host: call `initialize_distributed()` first; each process feeds its
own slice and `to_global` stitches the global array.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ascl_jax.config import ConfigError

DATA_AXIS = "data"


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
    """`jax.distributed.initialize`, before any other JAX call.

    With no arguments JAX auto-detects Cloud TPU, Slurm and Open MPI; the local multi-process
    launcher passes a localhost coordinator explicitly.
    """
    kwargs = {}
    if coordinator:
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A ('data',) mesh over every global device (or `devices`), Auto axis type."""
    if devices is not None:
        return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,),
                                 axis_types=(jax.sharding.AxisType.Auto,))
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,))


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
            f"multiple of {n_dev} (e.g. {max(n_dev, global_batch // n_dev * n_dev)})")
    if global_batch % n_proc:
        raise ConfigError(f"config.{field}={global_batch} does not divide over {n_proc} processes")


def to_global(local_batch, sharding: NamedSharding):
    """Host-local numpy batch (this process's slice) -> global jax.Array sharded on 'data'."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
    """A (possibly multi-host) global array tree -> numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def map_batches(fn, arrays, batch_size: int, sharding: NamedSharding):
    """`fn` over consecutive batches of host arrays, results gathered on the host.

    arrays: a tuple of numpy arrays with the same leading size n. Each batch of `batch_size` rows
    (the last one padded with zero rows to full size, so `fn` compiles once) is put on `sharding`
    and passed as `fn(start, *batch)`, start = the index of its first row. `fn` returns an array
    or a tuple of arrays with a leading batch axis. Returns the same structure of numpy arrays
    with the padding rows dropped, concatenated over batches: leading size n.
    """
    n = len(arrays[0])
    outs = []
    for start in range(0, n, batch_size):
        part = [a[start:start + batch_size] for a in arrays]
        rows = len(part[0])
        pad = batch_size - rows
        if pad:
            part = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for a in part]
        out = fn(start, *(jax.device_put(a, sharding) for a in part))
        outs.append(jax.tree.map(lambda o: np.asarray(o)[:rows], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
