"""Dataset sources: the embedded scikit-learn digits, tfds CIFAR-10/100 and CIFAR-10-C, and
Fashion-MNIST (tfds or its original IDX files), as in-memory arrays.

Datasets (``data_cfg.name``):

- ``'digits'`` (default, embedded, no download): scikit-learn's ``load_digits`` -- 1797 real 8x8
  grayscale handwritten digits, 10 classes. Pixels 0..16 (stored uint8; divided by 16 when served:
  float32 [8, 8, 1] in [0, 1]). Fixed stratified split: 360 test images (``round(360 * n_c / 1797)``
  per class by largest remainder, chosen with ``np.random.default_rng(0)``), the other 1437 are
  'train'; both keep the original order of ``load_digits``.
- ``'cifar10'`` / ``'cifar100'``: ``tfds.builder(name, data_dir=data_cfg.data_dir)``; 32x32x3,
  10 / 100 ('label', the fine label) classes. Must be prepared beforehand (this code never
  downloads; a missing dataset raises :class:`DatasetNotPreparedError` at once, with the command
  to prepare it).
- ``'fashion_mnist'``: 28x28x1, 10 classes, 60,000 train / 10,000 test: tfds when prepared in
  ``data_dir`` (or ``data.download``), else the IDX files of ``data.idx_dir`` (:mod:`.idx`;
  :func:`fashion_mnist_source` says which). The sources' orders differ (IDX file order; tfds'
  shuffled one), and so does any "first n test images" subset.
- ``data.download=True`` lets tfds download and prepare a missing dataset into ``data_dir``
  (network needed); CIFAR-10-C (``cifar10_corrupted``) is read by :mod:`ascl_jax.data.corrupted`.

Split strings are tfds-style: ``'train'``, ``'test'``, ``'train[:45000]'``, ``'train[45000:]'`` (the
ACL 45k/5k split, SPEC §3.6 -- a contiguous slice of tfds' fixed, already shuffled order, where ACL
used a random index file). Split sizes come from the config (``num_train``/``num_test``), else from
the known sizes of the datasets; never from ``builder.info.splits`` (empty under
``tfds.testing.mock_data``, STYLE §1.5).

Example index: every example carries ``index`` = its position in the split (canonical order:
files read sequentially, ``interleave_cycle_length=1``), the same for any process count; it keys
pseudo-labels (ACL semi-supervised, SPEC §3.7).

Multi-host: process ``i`` of ``k`` reads only its shard, ``tfds.split_for_jax_process(split,
process_index=i, process_count=k)`` (= ``tfds.even_splits(split, k)[i]``: contiguous, sizes differ
by at most one); the digits arrays are sliced with the same arithmetic (:func:`shard_bounds`).

TensorFlow: imported lazily (``import ascl_jax.data``, :func:`dataset_info` and config validation
do not import it). TF is kept off GPUs (``set_visible_devices([], 'GPU')``, JAX owns the
accelerators). tf.data runs on a private thread pool of ``os.cpu_count()`` threads with
``max_intra_op_parallelism=1`` (per-image ops are tiny; one thread per op avoids TF
oversubscribing the cores JAX uses).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np

from ascl_jax import config as config_lib
from ascl_jax.data import digits, idx
from ascl_jax.data.digits import stratified_choice  # noqa: F401  (re-exported)

# Known split sizes (tfds cifar10/cifar100 3.0.2; the fixed digits split of this module).
SPLIT_SIZES = {
    "digits": {"train": 1437, "test": 360},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "fashion_mnist": {"train": 60_000, "test": 10_000},
}
_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "fashion_mnist": 10}
_PIXEL_MAX = {"digits": 16.0, "cifar10": 255.0, "cifar100": 255.0, "fashion_mnist": 255.0}
_TF_DATA_THREADS = max(1, os.cpu_count() or 1)


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset is not prepared in data_dir (data.download False; fashion_mnist: nor in idx_dir)."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The validated data config (``config.resolve_data``) with the dataset's facts.

    data_dir None = tfds' default; num_train / num_test resolved to split sizes; label_fraction
    None = no labelled split; pixel_max: the stored pixel value that maps to 1.0; download: tfds
    may download; idx_dir: the fashion_mnist IDX folder ('' resolved to config.IDX_DIR_DEFAULT).
    """

    name: str
    data_dir: str | None
    batch_size: int
    eval_batch_size: int
    num_train: int
    num_test: int
    train_split: str
    augment: str
    num_views: int
    crop_padding: int
    flip: bool
    label_fraction: float | None
    image_shape: tuple[int, int, int]
    num_classes: int
    pixel_max: float
    download: bool = False
    idx_dir: str = config_lib.IDX_DIR_DEFAULT


def _parse_split(spec: str) -> tuple[str, int | None, int | None] | None:
    """``'train'`` -> ('train', None, None); ``'train[a:b]'`` (absolute, >= 0) -> (base, a, b).

    Returns None for forms it does not handle (percent slices, '+').
    """
    m = re.fullmatch(r"\s*(\w+)\s*(?:\[\s*(\d*)\s*:\s*(\d*)\s*\])?\s*", spec)
    if m is None:
        return None
    base, a, b = m.group(1), m.group(2), m.group(3)
    return base, (int(a) if a else None), (int(b) if b else None)


def known_split_size(name: str, spec: str) -> int | None:
    """Size of split ``spec`` of dataset ``name`` from SPLIT_SIZES; None when not derivable."""
    parsed = _parse_split(spec)
    if parsed is None:
        return None
    base, a, b = parsed
    full = SPLIT_SIZES[name].get(base)
    if full is None:
        return None
    start = min(a or 0, full)
    stop = full if b is None else min(b, full)
    return max(0, stop - start)


def resolve(data_cfg: Any) -> DataSpec:
    """Validates ``data_cfg`` (``config.resolve_data``: any subset of the fields of
    ``config.data_defaults``) and adds the dataset's facts. Raises ValueError naming the field."""
    d = config_lib.resolve_data(data_cfg)
    name, train_split = d.name, d.train_split
    if name == "digits":
        parsed = _parse_split(train_split)
        if parsed is None or parsed[0] not in SPLIT_SIZES["digits"]:
            raise ValueError(
                f"data.train_split={train_split!r} for digits; allowed: "
                "'train', 'test' or an absolute slice such as 'train[:1000]'"
            )

    def size(field: str, spec: str) -> int:
        value = d[field]
        if value != -1:
            return value
        known = known_split_size(name, spec)
        if not known:
            raise ValueError(
                f"data.{field} is unset and the size of split {spec!r} of {name!r} is "
                f"not known; set data.{field} explicitly"
            )
        return known

    num_train = size("num_train", train_split)
    num_test = size("num_test", "test")
    if name == "digits":
        known = known_split_size(name, train_split)
        if num_train > known:
            raise ValueError(f"data.num_train={num_train} but digits {train_split!r} has {known}")
    if d.batch_size > num_train:
        raise config_lib.ConfigError(
            f"config.data.batch_size={d.batch_size} exceeds the training split {train_split!r} of "
            f"{num_train} examples (data.num_train); use a batch size of at most {num_train}"
        )
    return DataSpec(
        name=name,
        data_dir=d.data_dir or None,
        batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size,
        num_train=num_train,
        num_test=num_test,
        train_split=train_split,
        augment=d.augment,
        num_views=d.num_views,
        crop_padding=d.crop_padding,
        flip=d.flip,
        label_fraction=d.label_fraction or None,
        image_shape=config_lib.IMAGE_SHAPES[name],
        num_classes=_NUM_CLASSES[name],
        pixel_max=_PIXEL_MAX[name],
        download=d.download,
        idx_dir=d.idx_dir or config_lib.IDX_DIR_DEFAULT,
    )


def validate_config(data_cfg: Any) -> None:
    """Raises ValueError (naming the field and the allowed values) for a bad data config."""
    resolve(data_cfg)


def dataset_info(data_cfg: Any) -> dict[str, Any]:
    """Static facts of the configured dataset (no TensorFlow, no data access).

    Returns dict(num_classes, image_shape=(H, W, C), num_train (size of ``train_split``), num_test,
    normalization=dataset name, the key of the models' per-dataset mean/std table).
    """
    r = resolve(data_cfg)
    return dict(
        num_classes=r.num_classes,
        image_shape=r.image_shape,
        num_train=r.num_train,
        num_test=r.num_test,
        normalization=r.name,
    )


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[lo, hi) of process ``process_index`` of ``n`` examples (``tfds.even_splits`` arithmetic)."""
    per, rem = divmod(n, process_count)
    lo = per * process_index + min(process_index, rem)
    hi = per * (process_index + 1) + min(process_index + 1, rem)
    return lo, hi


# --------------------------------------------------------------------------------------------------
# TensorFlow / tfds access (lazy imports).

_TF_READY = False


def import_tf():
    """Imports TensorFlow once and keeps it off the GPUs (JAX owns the accelerators)."""
    global _TF_READY
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if not _TF_READY:
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError) as e:  # TF runtime already initialised by the caller
            logging.info("data: TF GPUs left visible (%s)", e)
        _TF_READY = True
    return tf


def tf_options():
    """tf.data options of every pipeline here: deterministic, private pool, one thread per op."""
    tf = import_tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = _TF_DATA_THREADS
    options.threading.max_intra_op_parallelism = 1
    return options


def _prepare_hint(name: str, root: str) -> str:
    return (
        f"tfds dataset {name!r} is not prepared in data_dir={root!r}. With data.download=False "
        f"(default) this code does not download (tfds would spend minutes retrying the network on "
        f"an offline machine); set data.download=True where a network exists, or prepare it:\n"
        f"    tfds build {name} --data_dir {root}\n"
        f'or  python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"\n"
        f"and copy the prepared folder <data_dir>/{name} to {os.path.join(root, name)} here "
        f"(or set data.data_dir / $TFDS_DATA_DIR to the folder that holds {name}/). "
        f"The embedded dataset data.name='digits' needs no download."
    )


def _tfds_dataset(r: DataSpec, split: Any, *, decode_image: bool = True, name: str | None = None):
    """tf.data.Dataset of {'image': uint8 [H, W, C], 'label': int64} in canonical (file) order.

    name: the tfds name (default ``r.name``), e.g. 'cifar10_corrupted/fog_3'. A dataset that is
    not prepared is downloaded and prepared first when ``r.download``."""
    import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    name = name or r.name
    builder = tfds.builder(name, data_dir=r.data_dir)  # local only: no GCS
    _maybe_download(builder, r.download)
    decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders=decoders,
            read_config=tfds.ReadConfig(interleave_cycle_length=1),
        )
    except AssertionError as e:  # tfds: "Dataset cifar10: could not find data in ..."
        if "could not find data" not in str(e):
            raise
        raise DatasetNotPreparedError(_prepare_hint(name, _data_root(builder))) from None
    keep = ("image", "label") if decode_image else ("label",)
    ds = ds.map(lambda ex: {k: ex[k] for k in keep})
    return ds.with_options(tf_options())


def _data_root(builder) -> str:
    """The data_dir a builder reads (``<root>/<name>[/<config>]/<version>``)."""
    root = os.path.dirname(builder.data_dir)
    return os.path.dirname(os.path.dirname(root) if builder.builder_config else root)


def _maybe_download(builder, download: bool) -> None:
    """``builder.download_and_prepare()`` when ``download`` and the dataset is not prepared."""
    if download and not builder.is_prepared():
        logging.info("data: downloading and preparing %s into %s", builder.name, _data_root(builder))
        builder.download_and_prepare()


def fashion_mnist_source(data_cfg: Any) -> str:
    """'tfds' when tfds' fashion_mnist is prepared in data_dir or data.download is set, else 'idx'
    (the IDX files of data.idx_dir). data_cfg: the data section or its DataSpec."""
    r = data_cfg if isinstance(data_cfg, DataSpec) else resolve(data_cfg)
    if r.download:
        return "tfds"
    import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return "tfds" if tfds.builder(r.name, data_dir=r.data_dir).is_prepared() else "idx"


def _fashion_mnist_hint(r: DataSpec, problem: str) -> str:
    return (
        f"fashion_mnist: {problem}. Either install the original IDX files (Debian/Ubuntu: "
        f"`apt-get install dataset-fashion-mnist` puts them in {config_lib.IDX_DIR_DEFAULT!r}; or "
        f"set data.idx_dir to a folder holding {[s for v in idx.FILES.values() for s in v]}, plain or "
        f".gz), or set data.download=True on a machine with network access, or prepare tfds' "
        f"fashion_mnist:\n" + _prepare_hint("fashion_mnist", r.data_dir or "~/tensorflow_datasets")
    )


def _in_memory(r: DataSpec) -> bool:
    """Whether ``r``'s splits are numpy arrays held here (digits; fashion_mnist from IDX files)."""
    return r.name == "digits" or (r.name == "fashion_mnist" and fashion_mnist_source(r) == "idx")


def _memory_split(r: DataSpec, base: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, H, W, C], int32 labels [n]) of split ``base`` of an in-memory dataset."""
    if r.name == "digits":
        return digits.arrays()[base]
    try:
        return idx.read_split_cached(r.idx_dir, base)
    except idx.IdxFilesMissingError as e:
        raise DatasetNotPreparedError(_fashion_mnist_hint(r, str(e))) from None


def check_prepared(data_cfg: Any) -> None:
    """Raises DatasetNotPreparedError at once if the dataset is not there (no network): a tfds
    dataset not prepared in data_dir, or fashion_mnist with neither tfds data nor its IDX files."""
    r = resolve(data_cfg)
    if r.name == "digits":
        return
    if r.name == "fashion_mnist" and fashion_mnist_source(r) == "idx":
        try:
            idx.check_files(r.idx_dir)
        except idx.IdxFilesMissingError as e:
            raise DatasetNotPreparedError(_fashion_mnist_hint(r, str(e))) from None
        return
    _tfds_dataset(r, r.train_split, decode_image=False)


@dataclasses.dataclass
class Examples:
    """Examples of one process, in memory."""

    image: np.ndarray  # uint8 [n, H, W, C]
    label: np.ndarray  # int32 [n]
    index: np.ndarray  # int32 [n], position in the split


def _read_numpy(ds, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in ds.batch(4096).as_numpy_iterator():
        for k in keys:
            parts[k].append(batch[k])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def _first_n(r: DataSpec, split: str, total: int) -> str:
    """tfds split string for the first ``total`` examples of ``split``.

    ``'train'``/``'train[a:]'`` stay open-ended when ``total`` is not below the known size (so a
    smaller-than-CIFAR prepared dataset still loads); otherwise an absolute slice. Other forms
    (percent slices, '+') are passed through: the configured size must then be right.
    """
    parsed = _parse_split(split)
    if parsed is None:
        return split
    base, a, b = parsed
    start = a or 0
    known = known_split_size(r.name, split)
    if b is None and known is not None and total >= known:
        return f"{base}[{start}:]" if start else base
    stop = start + total if b is None else min(b, start + total)
    return f"{base}[{start}:{stop}]"


def load_examples(r: DataSpec, split: str, total: int, process_index: int, process_count: int) -> Examples:
    """The examples of process ``process_index`` in the first ``total`` examples of ``split``."""
    lo, hi = shard_bounds(total, process_index, process_count)
    if _in_memory(r):
        base, a, b = _parse_split(split) or (None, None, None)
        if base not in SPLIT_SIZES[r.name]:
            raise ValueError(
                f"split={split!r} for {r.name}; allowed: 'train', 'test' or an absolute "
                "slice such as 'train[:1000]'"
            )
        images, labels = _memory_split(r, base)
        start = a or 0
        stop = min(len(labels) if b is None else b, start + total)
        if r.name == "fashion_mnist" and stop - start < total:
            raise ValueError(
                f"fashion_mnist split {split!r}: the IDX files in {r.idx_dir!r} hold {len(labels)} "
                f"{base} examples, the config needs {total} from position {start} (data.num_train / "
                "data.num_test, eval.num_examples)"
            )
        images, labels = images[start:stop][lo:hi], labels[start:stop][lo:hi]
    else:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        shard = tfds.split_for_jax_process(
            _first_n(r, split, total), process_index=process_index, process_count=process_count
        )
        arrays = _read_numpy(_tfds_dataset(r, shard), ("image", "label"))
        images, labels = arrays["image"].astype(np.uint8), arrays["label"].astype(np.int32)
        if len(labels) > hi - lo:  # tfds.testing.mock_data yields num_examples for any split
            images, labels = images[: hi - lo], labels[: hi - lo]
    if len(labels) != hi - lo:
        logging.warning(
            "data: %s split %r gave %d examples on process %d/%d, the config "
            "implies %d (num_train/num_test or num_examples may be wrong)",
            r.name,
            split,
            len(labels),
            process_index,
            process_count,
            hi - lo,
        )
    if images.shape[1:] != r.image_shape:
        raise ValueError(f"{r.name} images have shape {images.shape[1:]}, expected {r.image_shape}")
    return Examples(
        image=np.asarray(images),
        label=np.asarray(labels, np.int32),
        index=np.arange(lo, lo + len(labels), dtype=np.int32),
    )


def original_order(r: DataSpec, split: str, total: int) -> np.ndarray:
    """The permutation that puts the first ``total`` stored examples of ``split`` (those
    ``load_examples(r, split, total, 0, 1)`` returns) in CIFAR's original order.

    tfds stores each example's ``id`` '<split>_<n>' (n = its position in CIFAR's files, the order
    torchvision's loaders read); the stored order is tfds' shuffled one. Returns int64 [total] with
    ``examples[perm]`` in original order: ``perm = argsort(n)``. The digits split has one order:
    ``arange``. Raises ValueError if an id is not of that form.
    """
    if r.name == "digits":
        return np.arange(total)
    import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(r.name, data_dir=r.data_dir)
    ds = builder.as_dataset(
        split=_first_n(r, split, total),
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    ).map(lambda ex: {"id": ex["id"]})
    ids = [i.decode() for i in _read_numpy(ds.with_options(tf_options()), ("id",))["id"][:total]]
    numbers = []
    for i in ids:
        m = re.fullmatch(r"[A-Za-z]+_(\d+)", i)
        if m is None:
            raise ValueError(
                f"data.test_order='original' needs tfds ids '<split>_<n>' in {r.name} {split!r}; "
                f"got {i!r} (use data.test_order='tfds')"
            )
        numbers.append(int(m.group(1)))
    return np.argsort(np.asarray(numbers, np.int64), kind="stable")


def load_labels(r: DataSpec) -> np.ndarray:
    """All labels of ``train_split`` (first ``num_train``), int32 [num_train], canonical order."""
    if _in_memory(r):
        return load_examples(r, r.train_split, r.num_train, 0, 1).label
    spec = _first_n(r, r.train_split, r.num_train)
    labels = _read_numpy(_tfds_dataset(r, spec, decode_image=False), ("label",))["label"]
    return labels[: r.num_train].astype(np.int32)


def tfds_arrays(r: DataSpec, split: str, *, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, H, W, C], int32 labels [n]) of tfds dataset ``name`` (default ``r.name``)
    split ``split``, in file order, from ``r.data_dir`` (downloaded first when ``r.download``).
    Raises DatasetNotPreparedError when it is not prepared."""
    arrays = _read_numpy(_tfds_dataset(r, split, name=name), ("image", "label"))
    return arrays["image"].astype(np.uint8), arrays["label"].astype(np.int32)


def check_tfds(r: DataSpec, name: str, split: str = "test") -> None:
    """Raises DatasetNotPreparedError (with the commands that prepare it) when tfds dataset ``name``
    is not prepared in ``r.data_dir``; reads no example (downloads first when ``r.download``)."""
    _tfds_dataset(r, split, decode_image=False, name=name)
