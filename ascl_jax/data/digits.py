"""The embedded digits dataset: scikit-learn's ``load_digits`` (1797 real 8x8 grayscale handwritten
digits, 10 classes, pixels 0..16) with a fixed stratified split of NUM_TEST test images
(``stratified_choice`` with ``np.random.default_rng(SPLIT_SEED)``); both splits keep the original
order of ``load_digits``."""

from __future__ import annotations

import functools

import numpy as np

NUM_TEST = 360
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed digits split: {'train': (uint8 [1437, 8, 8, 1] in 0..16, int32 [1437]), 'test': ..}."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    d = load_digits()
    images = np.rint(d.images).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = stratified_choice(labels, NUM_TEST, rng)
    is_test = np.zeros(len(labels), bool)
    is_test[test_idx] = True
    out = {"train": (images[~is_test], labels[~is_test]), "test": (images[is_test], labels[is_test])}
    for v in out.values():
        v[0].setflags(write=False)
        v[1].setflags(write=False)
    return out


def stratified_choice(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``k`` examples; class quotas ``k n_c / n``, largest-remainder rounded."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = k * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    short = k - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))
