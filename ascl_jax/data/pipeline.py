"""The training stream (tf.data: per-process shard, exact per-epoch permutation, deterministic resume)
and the evaluation arrays.

Batch sizes in the config are global; each process yields ``batch_size // process_count``
examples per step from its shard (:func:`ascl_jax.data.sources.load_examples`).

Training data order (determinism and resume): the training examples of a process live in memory
(uint8; CIFAR-10 train = 150 MB, held ~2x). Step ``s``, slot ``j`` of the local batch is stream
position ``p = s * b_local + j``; ``epoch = p // (steps_per_epoch * b_local)``; the example is
``tf.random.experimental.index_shuffle(p mod ..., seed(seed, epoch, process), n_local - 1)``, an
exact per-epoch permutation of the local examples (no shuffle buffer); the first
``steps_per_epoch * b_local`` of them are used (``drop_remainder``). Augmentation seeds are
``fold_in(seed, epoch, example index)`` split per view (:mod:`ascl_jax.data.augment`). All ops are
stateless, so ``make_train_iterator(..., start_step=k)`` starts directly at position
``k * b_local`` (O(1) skip) and yields exactly the batches an uninterrupted iterator yields from
step ``k`` on. The map runs with ``num_parallel_calls=AUTOTUNE, deterministic=True`` and a
``prefetch(AUTOTUNE)`` buffer, so the TF threads sleep once the buffer is full.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ascl_jax.data import semisup, sources

_STREAM_IDS = {None: 0, "labelled": 1, "unlabelled": 2}


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _positive_int(value: Any, field: str) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"data.{field}={value!r}; allowed: a positive integer")
    return int(value)


def _check_process(batch: int, field: str, process_index: int, process_count: int) -> int:
    if not _is_int(process_count) or process_count <= 0:
        raise ValueError(f"process_count={process_count!r}; allowed: a positive integer")
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index!r}; allowed: 0..{process_count - 1}")
    if batch % process_count:
        raise ValueError(
            f"data.{field}={batch} (global) is not divisible by process_count="
            f"{process_count}; every process loads {field} // process_count examples"
        )
    return batch // process_count


def steps_per_epoch(data_cfg: Any, *, subset: str | None = None, batch_size: int | None = None) -> int:
    """Training steps per epoch: ``pool // batch_size`` (drop_remainder), pool = ``num_train`` or
    the size of the labelled/unlabelled subset; ``batch_size`` (global) overrides the config's."""
    r = sources.resolve(data_cfg)
    b = r.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
    steps = semisup.pool_size(r, subset) // b
    if steps <= 0:
        raise ValueError(
            f"batch_size={b} exceeds the {subset or 'training'} pool of "
            f"{semisup.pool_size(r, subset)} examples"
        )
    return steps


def make_train_iterator(
    data_cfg: Any,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    subset: str | None = None,
    batch_size: int | None = None,
    label_seed: int = semisup.LABEL_SPLIT_SEED,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, deterministic, resumable training batches of this process (numpy).

    Args:
      data_cfg: the data section (``config.data``: any subset of ``config.data_defaults()``).
      seed: run seed; data order and augmentation are a pure function of (seed, process_index,
        process_count, config) and the step.
      start_step: first step to yield; batch ``k`` of ``make_train_iterator(start_step=s)`` equals
        batch ``s + k`` of ``make_train_iterator(start_step=0)`` (O(1) skip, across epochs).
      process_index, process_count: this process's shard (``jax.process_index()``,
        ``jax.process_count()``).
      subset: None (all of ``train_split``), or 'labelled' / 'unlabelled'
        (:func:`ascl_jax.data.semisup.label_split`; needs ``label_fraction``). Subsets read the
        whole split on every process and shard the subset's indices (tfds.even_splits arithmetic).
      batch_size: global batch overriding ``data_cfg.batch_size`` (e.g. the labelled sub-batch).
      label_seed: seed of :func:`ascl_jax.data.semisup.label_split` for ``subset``.

    Yields:
      {'image': float32 [b, H, W, C] in [0, 1] (or [b, V, H, W, C] when num_views = V = 2),
       'label': int32 [b], 'index': int32 [b] (position in ``train_split``)} with
      b = batch_size // process_count; epochs of ``steps_per_epoch`` steps repeat forever
      (incomplete batches dropped). Data is loaded and checked before this returns.
    """
    r = sources.resolve(data_cfg)
    gb = r.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
    b_local = _check_process(gb, "batch_size", process_index, process_count)
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r}; allowed: an integer")
    if not _is_int(start_step) or start_step < 0:
        raise ValueError(f"start_step={start_step!r}; allowed: an integer >= 0")
    spe = semisup.pool_size(r, subset) // gb
    if spe <= 0:
        raise ValueError(
            f"batch_size={gb} exceeds the {subset or 'training'} pool of "
            f"{semisup.pool_size(r, subset)} examples"
        )

    if subset is None:
        ex = sources.load_examples(r, r.train_split, r.num_train, process_index, process_count)
    else:
        labelled, unlabelled = semisup.label_split(data_cfg, seed=label_seed)
        pool = labelled if subset == "labelled" else unlabelled
        lo, hi = sources.shard_bounds(len(pool), process_index, process_count)
        pool = pool[lo:hi]
        full = sources.load_examples(r, r.train_split, r.num_train, 0, 1)
        ex = sources.Examples(image=full.image[pool], label=full.label[pool], index=full.index[pool])
    per_epoch = spe * b_local
    if len(ex.label) < per_epoch:
        raise ValueError(
            f"{r.name} {r.train_split!r}: process {process_index} has {len(ex.label)} "
            f"training examples but an epoch of {spe} steps x {b_local} needs "
            f"{per_epoch}; check data.num_train"
        )
    ds = _train_dataset(
        r,
        ex,
        seed=int(seed),
        start_step=int(start_step),
        b_local=b_local,
        per_epoch=per_epoch,
        process_index=process_index,
        stream=_STREAM_IDS[subset],
    )
    return ds.as_numpy_iterator()


def _train_dataset(
    r: sources.DataSpec,
    ex: sources.Examples,
    *,
    seed: int,
    start_step: int,
    b_local: int,
    per_epoch: int,
    process_index: int,
    stream: int,
):
    tf = sources.import_tf()
    from ascl_jax.data import augment as aug  # pylint: disable=g-import-not-at-top  (imports TF)

    fold_in = tf.random.experimental.stateless_fold_in
    n = len(ex.label)
    images = tf.constant(ex.image)
    labels = tf.constant(ex.label)
    indices = tf.constant(ex.index)
    root = tf.constant([seed, 0], tf.int64)
    shuffle_root = fold_in(fold_in(fold_in(root, 1), stream), process_index)
    augment_root = fold_in(root, 2)
    max_index = tf.constant(n - 1, tf.int64)
    scale = 1.0 / r.pixel_max
    views = r.num_views

    def one_view(image, key):
        return aug.augment(image, key, kind=r.augment, padding=r.crop_padding, flip=r.flip)

    def element(p):
        epoch = p // per_epoch
        local = tf.random.experimental.index_shuffle(
            p % per_epoch, seed=fold_in(shuffle_root, epoch), max_index=max_index
        )
        image = tf.cast(tf.gather(images, local), tf.float32) * scale
        image = tf.ensure_shape(image, r.image_shape)
        index = tf.gather(indices, local)
        key = fold_in(fold_in(augment_root, epoch), tf.cast(index, tf.int64))
        if views == 1:
            image = one_view(image, key)
        else:
            keys = tf.random.experimental.stateless_split(key, num=views)
            image = tf.stack([one_view(image, keys[v]) for v in range(views)])
        return {"image": image, "label": tf.gather(labels, local), "index": index}

    ds = tf.data.Dataset.range(start_step * b_local, np.iinfo(np.int64).max)
    ds = ds.map(
        tf.autograph.experimental.do_not_convert(element),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(b_local, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(sources.tf_options())


def _eval_total(r: sources.DataSpec, split: str, num_examples: int | None) -> int:
    if split == r.train_split:
        size = r.num_train
    elif split == "test":
        size = r.num_test
    else:
        size = sources.known_split_size(r.name, split)
        if size is None:
            if num_examples is None:
                raise ValueError(f"the size of split {split!r} of {r.name!r} is not known; pass num_examples")
            size = num_examples
    if num_examples is not None:
        size = min(size, _positive_int(num_examples, "num_examples"))
    if size <= 0:
        raise ValueError(f"split {split!r} of {r.name!r} is empty")
    return size


def load_eval_arrays(
    data_cfg: Any, split: str = "test", num_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` examples of ``split`` as full arrays (one process, no sharding).

    For small evaluation sets, e.g. AutoAttack on the first 1000 test images.
    Returns (images float32 [N, H, W, C] in [0, 1], labels int32 [N]).
    """
    r = sources.resolve(data_cfg)
    total = _eval_total(r, split, num_examples)
    ex = sources.load_examples(r, split, total, 0, 1)
    return ex.image.astype(np.float32) * np.float32(1.0 / r.pixel_max), ex.label.copy()
