"""Input data: the embedded scikit-learn digits, tfds CIFAR-10/100, Fashion-MNIST (tfds or its IDX
files) and CIFAR-10-C, through tf.data.

Modules, in data-flow order:

- ``idx``: the original Fashion-MNIST IDX files, parsed and checked with numpy.
- ``sources``: the datasets as in-memory arrays (digits split, tfds reads, Fashion-MNIST's source,
  split sizes, per-process shards, ``dataset_info``, ``check_prepared``; ``data.download``).
- ``corrupted``: the CIFAR-10-C sets of the corruption evaluation (``check_prepared``, ``load``).
- ``semisup``: the labelled / unlabelled partition of the training split (``label_split``).
- ``pipeline``: the training stream (per-process, exact per-epoch permutation, deterministic
  resume: ``make_train_iterator``, ``steps_per_epoch``, ``epoch_layout``), ``load_eval_arrays`` and the
  held-out validation split (``training_pool``, ``val_split``, ``load_val_arrays``).
- ``augment``: the stateless TensorFlow augmentations (imports TensorFlow; the others import it
  lazily, so ``import ascl_jax.data``, ``dataset_info`` and config validation stay light).

Every function takes the data section of a config (``config.data``, or any subset of the fields of
``ascl_jax.config.data_defaults()``; the schema and its checks live in ``ascl_jax.config``).
"""

from ascl_jax.config import AUGMENTS, NUM_VIEWS
from ascl_jax.config import DATASETS as NAMES
from ascl_jax.config import data_defaults as default_config
from ascl_jax.data import corrupted, idx
from ascl_jax.data.idx import IdxFilesMissingError, IdxFormatError
from ascl_jax.data.pipeline import (
    EpochLayout,
    epoch_layout,
    load_eval_arrays,
    load_val_arrays,
    make_train_iterator,
    steps_per_epoch,
    training_pool,
    val_split,
)
from ascl_jax.data.semisup import SUBSETS, label_split
from ascl_jax.data.sources import (
    SPLIT_SIZES,
    DatasetNotPreparedError,
    check_prepared,
    dataset_info,
    fashion_mnist_source,
    validate_config,
)

__all__ = [
    "NAMES",
    "AUGMENTS",
    "NUM_VIEWS",
    "SUBSETS",
    "SPLIT_SIZES",
    "DatasetNotPreparedError",
    "IdxFormatError",
    "IdxFilesMissingError",
    "corrupted",
    "idx",
    "fashion_mnist_source",
    "default_config",
    "validate_config",
    "dataset_info",
    "check_prepared",
    "label_split",
    "make_train_iterator",
    "steps_per_epoch",
    "epoch_layout",
    "EpochLayout",
    "load_eval_arrays",
    "load_val_arrays",
    "training_pool",
    "val_split",
]
