"""The training stream (tf.data: per-process shard, exact per-epoch permutation, deterministic resume)
and the evaluation arrays.

Batch sizes in the config are global; each process yields ``batch_size // process_count``
examples per step from its shard (:func:`ascl_jax.data.sources.load_examples`).

Training data order (determinism and resume): the training examples of a process live in memory
(uint8; CIFAR-10 train = 150 MB, held ~2x). Step ``s``, slot ``j`` of the local batch is stream
position ``p = s * b_local + j``; ``epoch = p // (steps_per_epoch * b_local)``; the example is
``tf.random.experimental.index_shuffle(p mod ..., seed(seed, epoch, process), n_local - 1)``, an
exact per-epoch permutation of the local examples (no shuffle buffer); with
``data.drop_remainder=True`` the first ``steps_per_epoch * b_local`` of them are used.

With ``drop_remainder=False`` (the default) and a pool that ``batch_size`` does not divide, an
epoch is ``ceil(pool / batch_size)`` steps: ``steps_per_epoch - 1`` full batches and a last batch of
the remaining ``r_local = n_local - (steps_per_epoch - 1) * b_local`` examples of the permutation
(:func:`epoch_layout`), so every example is used once per epoch. The stream is then a sequence of
steps, step ``s`` holding epoch positions ``(s mod steps_per_epoch) * b_local + j``; the full batches
are the same examples (and augmentations) as with ``drop_remainder=True``. ``last_batch`` pads the
last batch to a given size with copies of real examples of the epoch (positions ``q mod n_local``)
and adds ``'mask'`` (bool, False on the padding) to that batch only. Augmentation seeds are
``fold_in(seed, epoch, example index)`` split per view (:mod:`ascl_jax.data.augment`). All ops are
stateless, so ``make_train_iterator(..., start_step=k)`` starts directly at position
``k * b_local`` (O(1) skip) and yields exactly the batches an uninterrupted iterator yields from
step ``k`` on. The map runs with ``num_parallel_calls=AUTOTUNE, deterministic=True`` and a
``prefetch(AUTOTUNE)`` buffer, so the TF threads sleep once the buffer is full.

Held-out validation split (``data.val_examples = v > 0``): the last ``v`` of the first
``num_train`` examples of ``train_split`` (:func:`val_split`, :func:`load_val_arrays`); the
training pool (:func:`training_pool`) is then the first ``num_train - v``, so every training-side
count above (steps per epoch, layout, labelled / unlabelled subsets) is over ``num_train - v``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ascl_jax import config as config_lib
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


def _drop_remainder(data_cfg: Any, drop_remainder: bool | None) -> bool:
    if drop_remainder is not None:
        return bool(drop_remainder)
    return bool(config_lib.resolve_data(data_cfg).drop_remainder)


def training_pool(data_cfg: Any) -> Any:
    """The data section of the training pool: ``data_cfg`` itself when ``val_examples`` is 0, else
    a resolved copy with ``num_train`` reduced by ``val_examples`` (the held-out split is the last
    ``val_examples`` of the first ``num_train`` examples of ``train_split``, :func:`val_split`).
    Every training-side function here (steps, layout, iterator, label split) reads this pool.
    Raises ConfigError (naming ``data.val_examples``) when the split would leave no training pool."""
    v = _val_examples(data_cfg)
    if v == 0:
        return data_cfg
    d = config_lib.resolve_data(data_cfg)
    d.num_train = sources.resolve(data_cfg).num_train - v
    d.val_examples = 0
    return d


def _val_examples(data_cfg: Any) -> int:
    v = config_lib.resolve_data(data_cfg).get("val_examples", 0)
    if not _is_int(v) or v < 0:
        raise config_lib.ConfigError(
            f"config.data.val_examples={v!r} is not allowed; allowed: an integer >= 0 (0: no held-out split)"
        )
    if v:
        r = sources.resolve(data_cfg)
        if v >= r.num_train:
            raise config_lib.ConfigError(
                f"config.data.val_examples={v} leaves no training pool: the training split "
                f"{r.train_split!r} has {r.num_train} examples (data.num_train); use "
                f"val_examples < {r.num_train}"
            )
    return int(v)


def val_split(data_cfg: Any) -> tuple[str, int]:
    """(tfds split string, size) of the held-out validation split: positions ``[num_train - v,
    num_train)`` of ``train_split`` (v = ``data.val_examples``; a contiguous slice of the split's
    fixed order, as ACL's 45k/5k ``train[:45000]`` / ``train[45000:]``), disjoint from the
    training pool :func:`training_pool`. Raises ConfigError when ``val_examples`` is 0 or
    ``train_split`` is not ``'name'`` / ``'name[a:b]'``."""
    v = _val_examples(data_cfg)
    if v == 0:
        raise config_lib.ConfigError("config.data.val_examples=0: there is no held-out validation split")
    r = sources.resolve(data_cfg)
    parsed = re.fullmatch(r"\s*(\w+)\s*(?:\[\s*(\d*)\s*:\s*(\d*)\s*\])?\s*", r.train_split)
    if parsed is None:
        raise config_lib.ConfigError(
            f"config.data.val_examples needs config.data.train_split of the form 'train' or "
            f"'train[a:b]', not {r.train_split!r}"
        )
    base, a = parsed.group(1), int(parsed.group(2) or 0)
    lo = a + r.num_train - v
    return f"{base}[{lo}:{lo + v}]", v


def load_val_arrays(data_cfg: Any, num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` (None: all) of the held-out split :func:`val_split`, un-augmented,
    as :func:`load_eval_arrays` returns them: (float32 [n, H, W, C] in [0, 1], int32 [n])."""
    split, v = val_split(data_cfg)
    n = v if num_examples is None else min(v, _positive_int(num_examples, "num_examples"))
    r = sources.resolve(data_cfg)
    ex = sources.load_examples(r, split, n, 0, 1)
    return ex.image.astype(np.float32) * np.float32(1.0 / r.pixel_max), ex.label.copy()


def _pool_and_batch(data_cfg: Any, subset: str | None, batch_size: int | None) -> tuple[int, int]:
    data_cfg = training_pool(data_cfg)
    r = sources.resolve(data_cfg)
    b = r.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
    pool = semisup.pool_size(r, subset)
    if b > pool:
        split = r.train_split if subset is None else f"the {subset} subset of {r.train_split!r}"
        raise config_lib.ConfigError(
            f"config.data.batch_size: a batch of {b} exceeds the training split ({split}: "
            f"{pool} examples); use a batch size of at most {pool}"
        )
    return pool, b


def steps_per_epoch(
    data_cfg: Any,
    *,
    subset: str | None = None,
    batch_size: int | None = None,
    drop_remainder: bool | None = None,
) -> int:
    """Training steps per epoch over pool = ``num_train`` or the size of the labelled / unlabelled
    subset: ``ceil(pool / batch_size)`` (``data.drop_remainder=False``, the default: the last,
    smaller batch is trained on, as the authors' loaders without ``drop_last``) or
    ``pool // batch_size`` (``drop_remainder=True``). ``batch_size`` (global) and
    ``drop_remainder`` override the config's. E.g. CIFAR-10's 50000 at 512: 98 (97 dropping);
    at 128: 391 (390). Raises ConfigError (naming ``data.batch_size``) for a batch larger than
    the pool."""
    pool, b = _pool_and_batch(data_cfg, subset, batch_size)
    if _drop_remainder(data_cfg, drop_remainder):
        return pool // b
    return -(-pool // b)


class EpochLayout(NamedTuple):
    """How an epoch splits into batches (global batch b over `process_count` streams).

    steps: steps per epoch; b_local: rows of a full batch per process; last_local: real rows of
    the epoch's last batch per process (``[b_local] * P`` when b divides the pool or the remainder
    is dropped); pool: the pool size."""

    steps: int
    b_local: int
    last_local: tuple[int, ...]
    pool: int


def epoch_layout(
    data_cfg: Any,
    *,
    process_count: int = 1,
    subset: str | None = None,
    batch_size: int | None = None,
    drop_remainder: bool | None = None,
) -> EpochLayout:
    """The :class:`EpochLayout` of the training stream (module doc): process p's last batch holds
    ``n_p - (steps - 1) * b_local`` real rows, n_p its shard of the pool (``sources.shard_bounds``)."""
    data_cfg = training_pool(data_cfg)
    pool, b = _pool_and_batch(data_cfg, subset, batch_size)
    b_local = _check_process(b, "batch_size", 0, process_count)
    steps = steps_per_epoch(data_cfg, subset=subset, batch_size=b, drop_remainder=drop_remainder)
    if pool % b == 0 or _drop_remainder(data_cfg, drop_remainder):
        return EpochLayout(steps, b_local, (b_local,) * process_count, pool)
    last = []
    for p in range(process_count):
        lo, hi = sources.shard_bounds(pool, p, process_count)
        last.append(hi - lo - (steps - 1) * b_local)
    return EpochLayout(steps, b_local, tuple(last), pool)


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
    drop_remainder: bool | None = None,
    last_batch: int | None = None,
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
      drop_remainder: overrides ``data_cfg.drop_remainder`` (None: the config's).
      last_batch: only with a kept remainder: the size of this process's last batch of each epoch,
        padded (module doc) from its real rows ``epoch_layout(...).last_local[process_index]``
        up to ``last_batch``; that batch then carries ``'mask'``. None: the real rows only (at
        least 1), no mask.

    Yields:
      {'image': float32 [b, H, W, C] in [0, 1] (or [b, V, H, W, C] when num_views = V = 2),
       'label': int32 [b], 'index': int32 [b] (position in ``train_split``)} with
      b = batch_size // process_count, except for the last batch of an epoch with a kept
      remainder (b = its real rows, or ``last_batch`` plus 'mask': bool [b], True on real rows);
      epochs of ``steps_per_epoch`` steps repeat forever. Data is loaded and checked before this
      returns.
    """
    data_cfg = training_pool(data_cfg)
    r = sources.resolve(data_cfg)
    gb = r.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
    b_local = _check_process(gb, "batch_size", process_index, process_count)
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r}; allowed: an integer")
    if not _is_int(start_step) or start_step < 0:
        raise ValueError(f"start_step={start_step!r}; allowed: an integer >= 0")
    layout = epoch_layout(
        data_cfg, process_count=process_count, subset=subset, batch_size=gb, drop_remainder=drop_remainder
    )
    spe = layout.steps
    last_real = layout.last_local[process_index]
    remainder = any(n != b_local for n in layout.last_local)  # a kept remainder (in any process)
    if remainder:
        if last_batch is None and last_real < 1:
            raise config_lib.ConfigError(
                f"config.data.batch_size={gb}: process {process_index} has no example left for the "
                f"last batch of an epoch ({layout.pool} examples); pass last_batch to pad it"
            )
        if last_batch is not None and (not _is_int(last_batch) or last_batch < max(last_real, 1)):
            raise ValueError(f"last_batch={last_batch!r}; allowed: an integer >= {max(last_real, 1)}")
    elif last_batch is not None:
        raise ValueError(
            "last_batch is only for an epoch whose last batch is incomplete (drop_remainder=False)"
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
    per_epoch = (spe - 1) * b_local + last_real
    if len(ex.label) < per_epoch:
        raise ValueError(
            f"{r.name} {r.train_split!r}: process {process_index} has {len(ex.label)} "
            f"training examples but an epoch of {spe} steps needs "
            f"{per_epoch}; check data.num_train"
        )
    kw = dict(
        seed=int(seed),
        start_step=int(start_step),
        b_local=b_local,
        process_index=process_index,
        stream=_STREAM_IDS[subset],
    )
    if not remainder:
        return _train_dataset(r, ex, per_epoch=per_epoch, **kw).as_numpy_iterator()
    last = last_real if last_batch is None else int(last_batch)
    ds = _train_dataset(r, ex, per_epoch=per_epoch, steps=spe, last=last, **kw)
    return _strip_masks(ds.as_numpy_iterator(), int(start_step), spe, keep_last=last_batch is not None)


def _strip_masks(it, step: int, spe: int, *, keep_last: bool):
    """The stream with 'mask' removed from every batch but a padded last batch of an epoch."""
    for batch in it:
        if not (keep_last and step % spe == spe - 1):
            batch.pop("mask")
        yield batch
        step += 1


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
    steps: int = 0,
    last: int = 0,
):
    """The tf.data stream. Without ``steps``: positions ``p`` of a flat stream of epochs of
    ``per_epoch`` examples, batched by ``b_local``. With ``steps`` (a kept remainder): epochs of
    ``steps`` batches, the last one ``last`` rows (positions ``q >= per_epoch`` of an epoch are
    padding, ``mask`` False); every batch carries 'mask' (stripped by the caller)."""
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

    def example(epoch, position):
        """The example at ``position`` (< n) of ``epoch``'s permutation, augmented."""
        local = tf.random.experimental.index_shuffle(
            position, seed=fold_in(shuffle_root, epoch), max_index=max_index
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

    def element(p):
        return example(p // per_epoch, p % per_epoch)

    if not steps:
        ds = tf.data.Dataset.range(start_step * b_local, np.iinfo(np.int64).max)
        ds = ds.map(
            tf.autograph.experimental.do_not_convert(element),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(b_local, drop_remainder=True)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        return ds.with_options(sources.tf_options())

    n_real = tf.constant(per_epoch, tf.int64)
    n_ex = tf.constant(n, tf.int64)

    def padded_element(epoch, q):
        # q: position in the epoch; q >= per_epoch is padding, a copy of the epoch's example q mod n.
        return dict(example(epoch, q % n_ex), mask=q < n_real)

    width = max(b_local, last)

    def step_batch(s):
        epoch, k = s // steps, s % steps
        size = tf.where(k == steps - 1, tf.constant(last, tf.int64), tf.constant(b_local, tf.int64))
        qs = tf.data.Dataset.range(k * b_local, k * b_local + size)
        qs = qs.map(
            tf.autograph.experimental.do_not_convert(lambda q: padded_element(epoch, q)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return qs.batch(width)

    ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    ds = ds.flat_map(tf.autograph.experimental.do_not_convert(step_batch))
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

    For small evaluation sets, e.g. AutoAttack on the first 1000 test images. With
    ``data.test_order='original'`` the 'test' split is first put in CIFAR's original order
    (``sources.original_order`` of the first ``data.num_test`` stored examples: the whole split by
    default), so "the first n" are the authors' first n.
    Returns (images float32 [N, H, W, C] in [0, 1], labels int32 [N]).
    """
    r = sources.resolve(data_cfg)
    total = _eval_total(r, split, num_examples)
    if split == "test" and config_lib.resolve_data(data_cfg).test_order == "original":
        ex = sources.load_examples(r, split, r.num_test, 0, 1)
        keep = sources.original_order(r, split, r.num_test)[:total]
        return ex.image[keep].astype(np.float32) * np.float32(1.0 / r.pixel_max), ex.label[keep].copy()
    ex = sources.load_examples(r, split, total, 0, 1)
    return ex.image.astype(np.float32) * np.float32(1.0 / r.pixel_max), ex.label.copy()
