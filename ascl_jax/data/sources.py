"""Input pipeline: tfds CIFAR-10/100 and the embedded scikit-learn digits, through tf.data.

Datasets (``data_cfg.name``):

- ``'digits'`` (default, embedded, no download): scikit-learn's ``load_digits`` -- 1797 real 8x8
  grayscale handwritten digits, 10 classes. Pixels 0..16 are divided by 16 -> float32 [8, 8, 1] in
  [0, 1]. Fixed stratified split: 360 test images (``round(360 * n_c / 1797)`` per class by largest
  remainder, chosen with ``np.random.default_rng(0)``), the other 1437 are 'train'; both keep the
  original order of ``load_digits``. Served through the same tf.data path as the tfds datasets.
- ``'cifar10'`` / ``'cifar100'``: ``tfds.builder(name, data_dir=data_cfg.data_dir)``; 32x32x3,
  10 / 100 ('label', the fine label) classes. Must be prepared beforehand (this code never
  downloads; a missing dataset raises :class:`DatasetNotPreparedError` at once, with the command
  to prepare it).

Split strings are tfds-style: ``'train'``, ``'test'``, ``'train[:45000]'``, ``'train[45000:]'`` (the
ACL 45k/5k split, SPEC §3.6 -- a contiguous slice of tfds' fixed, already shuffled order, where ACL
used a random index file). Split sizes come from the config (``num_train``/``num_test``), else from
the known sizes of the datasets; never from ``builder.info.splits`` (empty under
``tfds.testing.mock_data``, STYLE §1.5).

Example index: every example carries ``index`` = its position in the split (canonical order:
files read sequentially, ``interleave_cycle_length=1``). It is the same for any process count, for
the train iterator, for the eval iterator over the same split and for :func:`label_split`, so it can
key pseudo-labels (ACL semi-supervised, SPEC §3.7).

Multi-host: each process reads only its shard, ``tfds.split_for_jax_process(split,
process_index=i, process_count=k)`` (= ``tfds.even_splits(split, k)[i]``: contiguous, sizes differ
by at most one); the digits arrays are sliced with the same arithmetic. Batch sizes in the config
are global; each process yields ``batch_size // process_count`` examples per step.

Training data order (determinism and resume): the training examples of a process live in memory
(uint8; CIFAR-10 train = 150 MB). Step ``s``, slot ``j`` of the local batch is stream position
``p = s * b_local + j``; ``epoch = p // (steps_per_epoch * b_local)``; the example is
``tf.random.experimental.index_shuffle(p mod ..., seed(seed, epoch, process), n_local - 1)``, an
exact per-epoch permutation of the local examples (no shuffle buffer); the first
``steps_per_epoch * b_local`` of them are used (``drop_remainder``). Augmentation seeds are
``fold_in(seed, epoch, example index)`` split per view. All ops are stateless, so
``make_train_iterator(..., start_step=k)`` starts directly at position ``k * b_local`` (O(1) skip)
and yields exactly the batches an uninterrupted iterator yields from step ``k`` on.

TensorFlow: imported lazily (``import ascl_jax.data`` and :func:`dataset_info` / config validation
do not import it; importing TF costs ~4 s). TF is kept off GPUs (``set_visible_devices([], 'GPU')``,
JAX owns the accelerators). tf.data runs on a private thread pool of ``os.cpu_count()`` threads
with ``max_intra_op_parallelism=1`` (per-image ops are tiny; one thread per op avoids TF
oversubscribing the cores JAX uses). The pipeline is far faster than a training step (2 busy CPU
cores: digits crop_flip ~20k images/s, CIFAR crop_flip ~8k, CIFAR simclr ~2k), so once
``prefetch(AUTOTUNE)`` has filled its buffer the TF threads sleep and the cores belong to JAX; a
pool smaller than the core count would only slow 'simclr' on large hosts (its colour jitter runs
at ~2.5k images/s per thread). Memory: the training examples are held ~2x (150 MB each for CIFAR).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from typing import Any, Iterator

import ml_collections
import numpy as np

NAMES = ('digits', 'cifar10', 'cifar100')
AUGMENTS = ('none', 'crop_flip', 'simclr')
NUM_VIEWS = (1, 2)
SUBSETS = (None, 'labelled', 'unlabelled')

# Known split sizes (tfds cifar10/cifar100 3.0.2; the fixed digits split of this module).
SPLIT_SIZES = {
    'digits': {'train': 1437, 'test': 360},
    'cifar10': {'train': 50_000, 'test': 10_000},
    'cifar100': {'train': 50_000, 'test': 10_000},
}
_IMAGE_SHAPES = {'digits': (8, 8, 1), 'cifar10': (32, 32, 3), 'cifar100': (32, 32, 3)}
_NUM_CLASSES = {'digits': 10, 'cifar10': 10, 'cifar100': 100}
_PIXEL_MAX = {'digits': 16.0, 'cifar10': 255.0, 'cifar100': 255.0}
_DEFAULT_PADDING = {'digits': 1, 'cifar10': 4, 'cifar100': 4}  # ~10% shift of the image side
_DEFAULT_FLIP = {'digits': False, 'cifar10': True, 'cifar100': True}  # mirrored digits mislead
_DIGITS_NUM_TEST = 360
_DIGITS_SPLIT_SEED = 0
_LABEL_SPLIT_SEED = 0
_TF_DATA_THREADS = max(1, os.cpu_count() or 1)
_STREAM_IDS = {None: 0, 'labelled': 1, 'unlabelled': 2}

_FIELDS = ('name', 'data_dir', 'batch_size', 'eval_batch_size', 'num_train', 'num_test',
           'train_split', 'augment', 'num_views', 'crop_padding', 'flip', 'label_fraction',
           'shuffle_buffer')


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not prepared in the data_dir (this code never downloads)."""


def default_config(name: str = 'digits') -> ml_collections.ConfigDict:
    """The data config (``config.data``) with the defaults for dataset ``name``.

    Fields:
      name: one of ``NAMES``.
      data_dir: tfds data directory (None or '': ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
        unused for digits.
      batch_size: global training batch (all processes); divisible by the process count.
      eval_batch_size: global evaluation batch; divisible by the process count.
      num_train / num_test: sizes of ``train_split`` / ``'test'``; None or -1 derives them from the
        known dataset sizes (set them explicitly for splits like ``'train[:90%]'`` and under tfds
        mock_data, which yields its ``num_examples`` for every split).
      train_split: tfds split string, e.g. ``'train'`` or ``'train[:45000]'`` (ACL 45k/5k).
      augment: ``'none'``, ``'crop_flip'`` (pad + random crop + flip, SPEC §1.7) or ``'simclr'``
        (SPEC §3.5).
      num_views: 1, or 2 independent augmentations of each image (``image`` gains a view axis).
      crop_padding: pixels of padding for 'crop_flip' (None or -1: 4 for CIFAR, 1 for 8x8 digits).
      flip: horizontal flips in 'crop_flip'/'simclr' (None: True for CIFAR, False for digits).
      label_fraction: None (or 0.0), or the fraction of ``train_split`` that is labelled (0.01,
        0.1 in ACL semi-supervised, SPEC §3.7); see :func:`label_split`.
      shuffle_buffer: accepted for compatibility and ignored (optional): training draws an exact
        per-epoch permutation of the whole split (``index_shuffle``), i.e. an unbounded buffer.

    The sentinels None / -1 / '' / 0.0 above are equivalent, so that configs can use typed
    defaults that ``ml_collections.config_flags`` can override from the command line.
    """
    if name not in NAMES:
        raise ValueError(f'data.name={name!r}; allowed: {NAMES}')
    placeholder = ml_collections.config_dict.placeholder  # typed None: overridable from the CLI
    return ml_collections.ConfigDict(dict(
        name=name,
        data_dir=placeholder(str),
        batch_size=128,
        eval_batch_size=256 if name == 'digits' else 500,
        num_train=placeholder(int),
        num_test=placeholder(int),
        train_split='train',
        augment='crop_flip',
        num_views=1,
        crop_padding=placeholder(int),
        flip=placeholder(bool),
        label_fraction=placeholder(float),
    ))


@dataclasses.dataclass(frozen=True)
class _Resolved:
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


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return cfg.get(key, default) if hasattr(cfg, 'get') else getattr(cfg, key, default)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _positive_int(value: Any, field: str) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f'data.{field}={value!r}; allowed: a positive integer')
    return int(value)


def _parse_split(spec: str) -> tuple[str, int | None, int | None] | None:
    """``'train'`` -> ('train', None, None); ``'train[a:b]'`` (absolute, >= 0) -> (base, a, b).

    Returns None for forms it does not handle (percent slices, '+').
    """
    m = re.fullmatch(r'\s*(\w+)\s*(?:\[\s*(\d*)\s*:\s*(\d*)\s*\])?\s*', spec)
    if m is None:
        return None
    base, a, b = m.group(1), m.group(2), m.group(3)
    return base, (int(a) if a else None), (int(b) if b else None)


def _known_split_size(name: str, spec: str) -> int | None:
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


def _resolve(cfg: Any) -> _Resolved:
    """Validates ``data_cfg`` and fills the derived fields. Raises ValueError naming the field."""
    if cfg is None:
        raise ValueError('data_cfg is None')
    keys = set(cfg.keys()) if hasattr(cfg, 'keys') else set(vars(cfg))
    unknown = sorted(keys - set(_FIELDS))
    if unknown:
        raise ValueError(f'unknown data config field(s) {unknown}; allowed: {_FIELDS}')
    shuffle_buffer = _get(cfg, 'shuffle_buffer')
    if shuffle_buffer is not None and (not _is_int(shuffle_buffer) or shuffle_buffer < 0):
        raise ValueError(f'data.shuffle_buffer={shuffle_buffer!r}; allowed: None or an integer '
                         '>= 0 (ignored: training uses an exact per-epoch permutation)')
    name = _get(cfg, 'name', 'digits')
    if name not in NAMES:
        raise ValueError(f'data.name={name!r}; allowed: {NAMES}')
    augment = _get(cfg, 'augment', 'crop_flip')
    if augment not in AUGMENTS:
        raise ValueError(f'data.augment={augment!r}; allowed: {AUGMENTS}')
    num_views = _get(cfg, 'num_views', 1)
    if not _is_int(num_views) or num_views not in NUM_VIEWS:
        raise ValueError(f'data.num_views={num_views!r}; allowed: {NUM_VIEWS}')
    batch_size = _positive_int(_get(cfg, 'batch_size', 128), 'batch_size')
    eval_batch_size = _positive_int(_get(cfg, 'eval_batch_size', 256), 'eval_batch_size')
    padding = _get(cfg, 'crop_padding')
    if padding is None or (_is_int(padding) and padding == -1):
        padding = _DEFAULT_PADDING[name]
    if not _is_int(padding) or padding < 0:
        raise ValueError(f'data.crop_padding={padding!r}; allowed: None / -1 (dataset default) '
                         'or an integer >= 0')
    flip = _get(cfg, 'flip')
    if flip is None:
        flip = _DEFAULT_FLIP[name]
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f'data.flip={flip!r}; allowed: None, True, False')
    frac = _get(cfg, 'label_fraction')
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float))
                             or not 0.0 <= float(frac) < 1.0):
        raise ValueError(f'data.label_fraction={frac!r}; allowed: None / 0.0 (no labelled split) '
                         'or a fraction in (0, 1), e.g. 0.01 or 0.1')
    if frac is not None and float(frac) == 0.0:
        frac = None
    train_split = _get(cfg, 'train_split', 'train')
    if not isinstance(train_split, str) or not train_split.strip():
        raise ValueError(f'data.train_split={train_split!r}; allowed: a tfds split string such as '
                         "'train' or 'train[:45000]'")
    if name == 'digits':
        parsed = _parse_split(train_split)
        if parsed is None or parsed[0] not in SPLIT_SIZES['digits']:
            raise ValueError(f'data.train_split={train_split!r} for digits; allowed: '
                             "'train', 'test' or an absolute slice such as 'train[:1000]'")

    def size(field: str, spec: str) -> int:
        value = _get(cfg, field)
        if value is not None and not (_is_int(value) and value == -1):
            return _positive_int(value, field)
        known = _known_split_size(name, spec)
        if not known:
            raise ValueError(f'data.{field} is unset and the size of split {spec!r} of {name!r} is '
                             f'not known; set data.{field} explicitly')
        return known

    num_train = size('num_train', train_split)
    num_test = size('num_test', 'test')
    if name == 'digits':
        known = _known_split_size(name, train_split)
        if num_train > known:
            raise ValueError(f'data.num_train={num_train} but digits {train_split!r} has {known}')
    if batch_size > num_train:
        raise ValueError(f'data.batch_size={batch_size} exceeds data.num_train={num_train} '
                         '(training drops incomplete batches: zero steps per epoch)')
    data_dir = _get(cfg, 'data_dir')
    return _Resolved(name=name, data_dir=str(data_dir) if data_dir else None,
                     batch_size=batch_size, eval_batch_size=eval_batch_size, num_train=num_train,
                     num_test=num_test, train_split=train_split.strip(), augment=augment,
                     num_views=int(num_views), crop_padding=int(padding), flip=bool(flip),
                     label_fraction=None if frac is None else float(frac),
                     image_shape=_IMAGE_SHAPES[name], num_classes=_NUM_CLASSES[name],
                     pixel_max=_PIXEL_MAX[name])


def validate_config(data_cfg: Any) -> None:
    """Raises ValueError (naming the field and the allowed values) for a bad data config."""
    _resolve(data_cfg)


def dataset_info(data_cfg: Any) -> dict[str, Any]:
    """Static facts of the configured dataset (no TensorFlow, no data access).

    Returns dict(num_classes, image_shape=(H, W, C), num_train (size of ``train_split``), num_test,
    normalization=dataset name, the key of the models' per-dataset mean/std table).
    """
    r = _resolve(data_cfg)
    return dict(num_classes=r.num_classes, image_shape=r.image_shape, num_train=r.num_train,
                num_test=r.num_test, normalization=r.name)


def _check_process(batch: int, field: str, process_index: int, process_count: int) -> int:
    if not _is_int(process_count) or process_count <= 0:
        raise ValueError(f'process_count={process_count!r}; allowed: a positive integer')
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f'process_index={process_index!r}; allowed: 0..{process_count - 1}')
    if batch % process_count:
        raise ValueError(f'data.{field}={batch} (global) is not divisible by process_count='
                         f'{process_count}; every process loads {field} // process_count examples')
    return batch // process_count


def _shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[lo, hi) of process ``process_index`` of ``n`` examples (``tfds.even_splits`` arithmetic)."""
    per, rem = divmod(n, process_count)
    lo = per * process_index + min(process_index, rem)
    hi = per * (process_index + 1) + min(process_index + 1, rem)
    return lo, hi


def _num_labelled(r: _Resolved) -> int:
    return max(1, int(round(r.label_fraction * r.num_train)))


def _pool_size(r: _Resolved, subset: str | None) -> int:
    if subset not in SUBSETS:
        raise ValueError(f'subset={subset!r}; allowed: {SUBSETS}')
    if subset is None:
        return r.num_train
    if r.label_fraction is None:
        raise ValueError(f"subset={subset!r} needs data.label_fraction (e.g. 0.01 or 0.1)")
    k = _num_labelled(r)
    return k if subset == 'labelled' else r.num_train - k


def steps_per_epoch(data_cfg: Any, *, subset: str | None = None,
                    batch_size: int | None = None) -> int:
    """Training steps per epoch: ``pool // batch_size`` (drop_remainder), pool = ``num_train`` or
    the size of the labelled/unlabelled subset; ``batch_size`` (global) overrides the config's."""
    r = _resolve(data_cfg)
    b = r.batch_size if batch_size is None else _positive_int(batch_size, 'batch_size')
    steps = _pool_size(r, subset) // b
    if steps <= 0:
        raise ValueError(f'batch_size={b} exceeds the {subset or "training"} pool of '
                         f'{_pool_size(r, subset)} examples')
    return steps


# --------------------------------------------------------------------------------------------------
# TensorFlow / tfds access (lazy imports).

_TF_READY = False


def _tf():
    """Imports TensorFlow once and keeps it off the GPUs (JAX owns the accelerators)."""
    global _TF_READY
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not _TF_READY:
        try:
            tf.config.set_visible_devices([], 'GPU')
        except (RuntimeError, ValueError) as e:  # TF runtime already initialised by the caller
            logging.info('data: TF GPUs left visible (%s)', e)
        _TF_READY = True
    return tf


def _tf_options():
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = _TF_DATA_THREADS
    options.threading.max_intra_op_parallelism = 1
    return options


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed digits split: {'train': (uint8 [1437, 8, 8, 1] in 0..16, int32 [1437]), 'test': ..}."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    d = load_digits()
    images = np.rint(d.images).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    test_idx = _stratified_choice(labels, _DIGITS_NUM_TEST, rng)
    is_test = np.zeros(len(labels), bool)
    is_test[test_idx] = True
    out = {'train': (images[~is_test], labels[~is_test]),
           'test': (images[is_test], labels[is_test])}
    for v in out.values():
        v[0].setflags(write=False)
        v[1].setflags(write=False)
    return out


def _stratified_choice(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``k`` examples; class quotas ``k n_c / n``, largest-remainder rounded."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = k * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    short = k - quota.sum()
    quota[np.argsort(-(exact - quota), kind='stable')[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def _prepare_hint(name: str, root: str) -> str:
    return (f"tfds dataset {name!r} is not prepared in data_dir={root!r}. This code never "
            f"downloads (tfds would spend minutes retrying the network on an offline machine). "
            f"Prepare it on a machine with network access:\n"
            f"    tfds build {name} --data_dir {root}\n"
            f"or  python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\"\n"
            f"and copy the prepared folder <data_dir>/{name} to {os.path.join(root, name)} here "
            f"(or set data.data_dir / $TFDS_DATA_DIR to the folder that holds {name}/). "
            f"The embedded dataset data.name='digits' needs no download.")


def _tfds_dataset(r: _Resolved, split: Any, *, decode_image: bool = True):
    """tf.data.Dataset of {'image': uint8 [H, W, C], 'label': int64} in canonical (file) order."""
    _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(r.name, data_dir=r.data_dir)  # local only: no GCS, no download
    decoders = None if decode_image else {'image': tfds.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                read_config=tfds.ReadConfig(interleave_cycle_length=1))
    except AssertionError as e:  # tfds: "Dataset cifar10: could not find data in ..."
        if 'could not find data' not in str(e):
            raise
        root = os.path.dirname(os.path.dirname(builder.data_dir))
        raise DatasetNotPreparedError(_prepare_hint(r.name, root)) from None
    keep = ('image', 'label') if decode_image else ('label',)
    ds = ds.map(lambda ex: {k: ex[k] for k in keep})
    return ds.with_options(_tf_options())


def check_prepared(data_cfg: Any) -> None:
    """Raises DatasetNotPreparedError at once if the tfds dataset is not prepared (no network)."""
    r = _resolve(data_cfg)
    if r.name != 'digits':
        _tfds_dataset(r, r.train_split, decode_image=False)


@dataclasses.dataclass
class _Examples:
    image: np.ndarray  # uint8 [n, H, W, C]
    label: np.ndarray  # int32 [n]
    index: np.ndarray  # int32 [n], position in the split


def _read_numpy(ds, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in ds.batch(4096).as_numpy_iterator():
        for k in keys:
            parts[k].append(batch[k])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def _first_n(r: _Resolved, split: str, total: int) -> str:
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
    known = _known_split_size(r.name, split)
    if b is None and known is not None and total >= known:
        return f'{base}[{start}:]' if start else base
    stop = start + total if b is None else min(b, start + total)
    return f'{base}[{start}:{stop}]'


def _load(r: _Resolved, split: str, total: int, process_index: int,
          process_count: int) -> _Examples:
    """The examples of process ``process_index`` in the first ``total`` examples of ``split``."""
    lo, hi = _shard_bounds(total, process_index, process_count)
    if r.name == 'digits':
        base, a, b = _parse_split(split) or (None, None, None)
        if base not in SPLIT_SIZES['digits']:
            raise ValueError(f"split={split!r} for digits; allowed: 'train', 'test' or an absolute "
                             "slice such as 'train[:1000]'")
        images, labels = _digits_arrays()[base]
        start = a or 0
        stop = min(len(labels) if b is None else b, start + total)
        images, labels = images[start:stop][lo:hi], labels[start:stop][lo:hi]
    else:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        shard = tfds.split_for_jax_process(_first_n(r, split, total), process_index=process_index,
                                           process_count=process_count)
        arrays = _read_numpy(_tfds_dataset(r, shard), ('image', 'label'))
        images, labels = arrays['image'].astype(np.uint8), arrays['label'].astype(np.int32)
        if len(labels) > hi - lo:  # tfds.testing.mock_data yields num_examples for any split
            images, labels = images[:hi - lo], labels[:hi - lo]
    if len(labels) != hi - lo:
        logging.warning('data: %s split %r gave %d examples on process %d/%d, the config '
                        'implies %d (num_train/num_test or num_examples may be wrong)', r.name,
                        split, len(labels), process_index, process_count, hi - lo)
    if images.shape[1:] != r.image_shape:
        raise ValueError(f'{r.name} images have shape {images.shape[1:]}, expected {r.image_shape}')
    return _Examples(image=np.asarray(images), label=np.asarray(labels, np.int32),
                     index=np.arange(lo, lo + len(labels), dtype=np.int32))


def _load_labels(r: _Resolved) -> np.ndarray:
    """All labels of ``train_split`` (first ``num_train``), int32 [num_train], canonical order."""
    if r.name == 'digits':
        return _load(r, r.train_split, r.num_train, 0, 1).label
    spec = _first_n(r, r.train_split, r.num_train)
    labels = _read_numpy(_tfds_dataset(r, spec, decode_image=False), ('label',))['label']
    return labels[:r.num_train].astype(np.int32)


def label_split(data_cfg: Any, *, seed: int = _LABEL_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic labelled / unlabelled partition of ``train_split`` (ACL semi-supervised, §3.7).

    ``round(label_fraction * num_train)`` examples (450 / 4500 of the 45k split for 1% / 10%),
    stratified by class (quotas by largest remainder), chosen with ``np.random.default_rng(seed)``.
    Depends only on the data, the config and ``seed`` (not on the process count).

    Returns:
      (labelled, unlabelled): sorted int32 example indices (positions in ``train_split``, the
      ``index`` field of the batches), disjoint, together ``arange(num_train)``.
    """
    r = _resolve(data_cfg)
    if r.label_fraction is None:
        raise ValueError('label_split needs data.label_fraction (e.g. 0.01 or 0.1)')
    labels = _load_labels(r)
    if len(labels) < r.num_train:
        raise ValueError(f'{r.name} {r.train_split!r} has {len(labels)} examples, '
                         f'data.num_train={r.num_train}')
    labelled = _stratified_choice(labels, _num_labelled(r), np.random.default_rng(seed))
    mask = np.zeros(r.num_train, bool)
    mask[labelled] = True
    return labelled.astype(np.int32), np.flatnonzero(~mask).astype(np.int32)


# --------------------------------------------------------------------------------------------------
# Training iterator.


def make_train_iterator(data_cfg: Any, *, seed: int, start_step: int = 0, process_index: int = 0,
                        process_count: int = 1, subset: str | None = None,
                        batch_size: int | None = None,
                        label_seed: int = _LABEL_SPLIT_SEED) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, deterministic, resumable training batches of this process (numpy).

    Args:
      data_cfg: the data config (:func:`default_config`).
      seed: run seed; data order and augmentation are a pure function of (seed, process_index,
        process_count, config) and the step.
      start_step: first step to yield; batch ``k`` of ``make_train_iterator(start_step=s)`` equals
        batch ``s + k`` of ``make_train_iterator(start_step=0)`` (O(1) skip, across epochs).
      process_index, process_count: this process's shard (``jax.process_index()``,
        ``jax.process_count()``).
      subset: None (all of ``train_split``), or 'labelled' / 'unlabelled' (:func:`label_split`;
        needs ``label_fraction``). Subsets read the whole split on every process and shard the
        subset's indices (tfds.even_splits arithmetic).
      batch_size: global batch overriding ``data_cfg.batch_size`` (e.g. the labelled sub-batch).
      label_seed: seed of :func:`label_split` for ``subset``.

    Yields:
      {'image': float32 [b, H, W, C] in [0, 1] (or [b, V, H, W, C] when num_views = V = 2),
       'label': int32 [b], 'index': int32 [b] (position in ``train_split``)} with
      b = batch_size // process_count; epochs of ``steps_per_epoch`` steps repeat forever
      (incomplete batches dropped). Data is loaded and checked before this returns.
    """
    r = _resolve(data_cfg)
    gb = r.batch_size if batch_size is None else _positive_int(batch_size, 'batch_size')
    b_local = _check_process(gb, 'batch_size', process_index, process_count)
    if not _is_int(seed):
        raise ValueError(f'seed={seed!r}; allowed: an integer')
    if not _is_int(start_step) or start_step < 0:
        raise ValueError(f'start_step={start_step!r}; allowed: an integer >= 0')
    spe = _pool_size(r, subset) // gb
    if spe <= 0:
        raise ValueError(f'batch_size={gb} exceeds the {subset or "training"} pool of '
                         f'{_pool_size(r, subset)} examples')

    if subset is None:
        ex = _load(r, r.train_split, r.num_train, process_index, process_count)
    else:
        labelled, unlabelled = label_split(data_cfg, seed=label_seed)
        pool = labelled if subset == 'labelled' else unlabelled
        lo, hi = _shard_bounds(len(pool), process_index, process_count)
        pool = pool[lo:hi]
        full = _load(r, r.train_split, r.num_train, 0, 1)
        ex = _Examples(image=full.image[pool], label=full.label[pool], index=full.index[pool])
    per_epoch = spe * b_local
    if len(ex.label) < per_epoch:
        raise ValueError(f'{r.name} {r.train_split!r}: process {process_index} has {len(ex.label)} '
                         f'training examples but an epoch of {spe} steps x {b_local} needs '
                         f'{per_epoch}; check data.num_train')
    ds = _train_dataset(r, ex, seed=int(seed), start_step=int(start_step), b_local=b_local,
                        per_epoch=per_epoch, process_index=process_index,
                        stream=_STREAM_IDS[subset])
    return ds.as_numpy_iterator()


def _train_dataset(r: _Resolved, ex: _Examples, *, seed: int, start_step: int, b_local: int,
                   per_epoch: int, process_index: int, stream: int):
    tf = _tf()
    from ascl_jax import augment as aug  # pylint: disable=g-import-not-at-top
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
            p % per_epoch, seed=fold_in(shuffle_root, epoch), max_index=max_index)
        image = tf.cast(tf.gather(images, local), tf.float32) * scale
        image = tf.ensure_shape(image, r.image_shape)
        index = tf.gather(indices, local)
        key = fold_in(fold_in(augment_root, epoch), tf.cast(index, tf.int64))
        if views == 1:
            image = one_view(image, key)
        else:
            keys = tf.random.experimental.stateless_split(key, num=views)
            image = tf.stack([one_view(image, keys[v]) for v in range(views)])
        return {'image': image, 'label': tf.gather(labels, local), 'index': index}

    ds = tf.data.Dataset.range(start_step * b_local, np.iinfo(np.int64).max)
    ds = ds.map(tf.autograph.experimental.do_not_convert(element),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b_local, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_tf_options())


# --------------------------------------------------------------------------------------------------
# Evaluation.


def _eval_total(r: _Resolved, split: str, num_examples: int | None) -> int:
    if split == r.train_split:
        size = r.num_train
    elif split == 'test':
        size = r.num_test
    else:
        size = _known_split_size(r.name, split)
        if size is None:
            if num_examples is None:
                raise ValueError(f'the size of split {split!r} of {r.name!r} is not known; pass '
                                 'num_examples')
            size = num_examples
    if num_examples is not None:
        size = min(size, _positive_int(num_examples, 'num_examples'))
    if size <= 0:
        raise ValueError(f'split {split!r} of {r.name!r} is empty')
    return size


def num_eval_batches(data_cfg: Any, *, split: str = 'test', num_examples: int | None = None,
                     process_count: int = 1) -> int:
    """Batches every process yields from :func:`make_eval_iterator` (equal on all processes)."""
    r = _resolve(data_cfg)
    b_local = _check_process(r.eval_batch_size, 'eval_batch_size', 0, process_count)
    total = _eval_total(r, split, num_examples)
    return math.ceil(math.ceil(total / process_count) / b_local)


def make_eval_iterator(data_cfg: Any, *, split: str = 'test', num_examples: int | None = None,
                       process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Padded evaluation batches; each of the first ``num_examples`` examples appears exactly once.

    The first ``num_examples`` (default: all) examples of ``split`` are sharded over processes
    (``tfds.even_splits`` arithmetic); every process yields the same number of batches
    (:func:`num_eval_batches`) of ``b = eval_batch_size // process_count`` rows, in order, no
    augmentation. Padding rows are zeros with ``mask`` False; sum metrics with the mask.

    Yields:
      {'image': float32 [b, H, W, C] in [0, 1], 'label': int32 [b], 'index': int32 [b] (position in
       ``split``; -1 for padding), 'mask': bool [b]}. Data is loaded before this returns.
    """
    r = _resolve(data_cfg)
    b_local = _check_process(r.eval_batch_size, 'eval_batch_size', process_index, process_count)
    total = _eval_total(r, split, num_examples)
    ex = _load(r, split, total, process_index, process_count)
    num_batches = math.ceil(math.ceil(total / process_count) / b_local)
    return _eval_batches(r, ex, b_local, num_batches)


def _eval_batches(r: _Resolved, ex: _Examples, b: int, num_batches: int):
    n = len(ex.label)
    scale = np.float32(1.0 / r.pixel_max)
    for i in range(num_batches):
        lo, hi = min(i * b, n), min((i + 1) * b, n)
        m = hi - lo
        image = np.zeros((b,) + r.image_shape, np.float32)
        image[:m] = ex.image[lo:hi].astype(np.float32) * scale
        label = np.zeros((b,), np.int32)
        label[:m] = ex.label[lo:hi]
        index = np.full((b,), -1, np.int32)
        index[:m] = ex.index[lo:hi]
        mask = np.zeros((b,), bool)
        mask[:m] = True
        yield {'image': image, 'label': label, 'index': index, 'mask': mask}


def load_eval_arrays(data_cfg: Any, split: str = 'test',
                     num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` examples of ``split`` as full arrays (one process, no sharding).

    For small evaluation sets, e.g. AutoAttack on the first 1000 test images.
    Returns (images float32 [N, H, W, C] in [0, 1], labels int32 [N]).
    """
    r = _resolve(data_cfg)
    total = _eval_total(r, split, num_examples)
    ex = _load(r, split, total, 0, 1)
    return ex.image.astype(np.float32) * np.float32(1.0 / r.pixel_max), ex.label.copy()
