"""CIFAR-10-C (Hendrycks & Dietterich 2019), the data of the corruption evaluation (ACL §3, Fig. 2).

tfds ``cifar10_corrupted/<corruption>_<severity>``: each of the 19 corruptions of
``config.CORRUPTIONS`` (15 benchmark + 4 extra, tfds' names) at each severity 1..5 is its own tfds
config holding one split, 'test': the 10,000 CIFAR-10 test images (32x32x3, CIFAR-10's labels)
under that corruption. Each config must be prepared in ``data.data_dir`` like CIFAR-10 itself (or
``data.download=True`` on a machine with network access); :func:`check_prepared` names every missing
one before any evaluation starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ascl_jax import config as config_lib
from ascl_jax.data import sources

NAME = "cifar10_corrupted"
IMAGE_SHAPE = (32, 32, 3)


def tfds_name(corruption: str, severity: int) -> str:
    """The tfds name of one CIFAR-10-C set, e.g. 'cifar10_corrupted/fog_3'."""
    return f"{NAME}/{corruption}_{int(severity)}"


def check_prepared(data_cfg: Any, pairs) -> None:
    """Raises DatasetNotPreparedError listing every (corruption, severity) of ``pairs`` whose tfds
    config is not prepared in ``data_cfg.data_dir`` (downloading it first when data.download).
    Reads no example; a missing set costs a few ms."""
    r = sources.resolve(data_cfg)
    missing, first = [], None
    for c, sev in pairs:
        try:
            sources.check_tfds(r, tfds_name(c, sev))
        except sources.DatasetNotPreparedError as e:
            missing.append(tfds_name(c, sev))
            first = first or str(e)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise sources.DatasetNotPreparedError(
            f"eval.corruptions: {len(missing)} CIFAR-10-C set(s) are not prepared ({shown}). Each "
            "corruption and severity is its own tfds config; prepare them all with\n"
            f"    for c in {' '.join(config_lib.CORRUPTIONS)}; do for s in 1 2 3 4 5; do "
            f"tfds build {NAME}/${{c}}_${{s}} --data_dir DATA_DIR; done; done\n"
            f"(or set data.download=True on a machine with network access). The first: {first}"
        )


def load(
    data_cfg: Any, corruption: str, severity: int, num_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` (None = all 10,000) images of one CIFAR-10-C set in tfds' file
    order: (float32 [n, 32, 32, 3] in [0, 1], int32 [n]). ``data_cfg`` gives data_dir / download.
    An unknown corruption or severity raises ConfigError listing the allowed names."""
    config_lib.parse_corruptions((f"{corruption}:{severity}",))
    r = sources.resolve(data_cfg)
    split = "test" if num_examples is None else f"test[:{int(num_examples)}]"
    images, labels = sources.tfds_arrays(r, split, name=tfds_name(corruption, severity))
    if num_examples is not None:  # tfds.testing.mock_data yields num_examples for any split
        images, labels = images[:num_examples], labels[:num_examples]
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{tfds_name(corruption, severity)}: images of shape {images.shape[1:]}")
    return images.astype(np.float32) / np.float32(255.0), labels
