"""The original Fashion-MNIST files (IDX format, LeCun et al.'s MNIST layout), read with numpy.

An IDX file is a 4-byte magic number -- two zero bytes, the element type (0x08 = unsigned byte)
and the number of dimensions d -- then d big-endian uint32 dimension sizes, then the elements in
C order. Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) ships four of them:

  train-images-idx3-ubyte  magic 0x00000803, [60000, 28, 28] uint8 pixels 0..255
  train-labels-idx1-ubyte  magic 0x00000801, [60000] uint8 labels 0..9
  t10k-images-idx3-ubyte   magic 0x00000803, [10000, 28, 28]
  t10k-labels-idx1-ubyte   magic 0x00000801, [10000]

each plain or gzipped (name + '.gz'). :func:`read_split` checks the magic number, the number of
dimensions, the image shape, that the byte count is exactly what the header says (a truncated or
padded file is an error), that images and labels have the same count and that labels lie in
0..9; every error is an :class:`IdxFormatError` naming the file. The examples keep the files'
order (tfds' prepared fashion_mnist is in a different, shuffled order).
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """An IDX file is truncated, has the wrong header, shape or contents."""


class IdxFilesMissingError(FileNotFoundError):
    """The folder lacks one of the four Fashion-MNIST IDX files."""


def find_file(idx_dir: str, stem: str) -> str:
    """The path of ``stem`` or ``stem.gz`` in ``idx_dir`` (the plain file when both exist)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(idx_dir, name)
        if os.path.isfile(path):
            return path
    raise IdxFilesMissingError(f"{os.path.join(idx_dir, stem)}[.gz] does not exist")


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip stream
        kind = "gzip" if path.endswith(".gz") else "a file"
        raise IdxFormatError(f"{path}: cannot be read as {kind} ({e})") from None


def parse(path: str, raw: bytes, ndim: int) -> np.ndarray:
    """The uint8 array of IDX bytes ``raw`` (read from ``path``, named in errors), of ``ndim`` dims."""
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype, got_ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or dtype != _UBYTE or got_ndim != ndim:
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{0x800 + ndim:08x} (unsigned bytes, "
            f"{ndim} dimension{'s' if ndim > 1 else ''}); not an IDX {'image' if ndim == 3 else 'label'} file"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(raw)} bytes, {header} needed)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: {state}: the header gives dimensions {dims} = {expected} bytes, the file has {len(raw)}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_split(idx_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28, 1] in 0..255, labels int32 [n] in 0..9) of 'train' or 'test'.

    Raises IdxFilesMissingError for a missing file, IdxFormatError (naming the file) for a bad one.
    """
    image_stem, label_stem = FILES[split]
    image_path, label_path = find_file(idx_dir, image_stem), find_file(idx_dir, label_stem)
    images = parse(image_path, _read_bytes(image_path), 3)
    labels = parse(label_path, _read_bytes(label_path), 1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise IdxFormatError(f"{image_path}: images of {images.shape[1:]} pixels, expected {IMAGE_SHAPE}")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise IdxFormatError(
            f"{label_path}: label {int(labels.max())} out of range; Fashion-MNIST labels are "
            f"0..{NUM_CLASSES - 1}"
        )
    images = images[..., None]
    images.setflags(write=False)
    out_labels = labels.astype(np.int32)
    out_labels.setflags(write=False)
    return images, out_labels


def read_split_cached(idx_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_split`, cached while the files' paths, sizes and modification times are unchanged
    (the returned arrays are read-only)."""
    paths = [find_file(idx_dir, stem) for stem in FILES[split]]
    stats = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    return _cached(idx_dir, split, stats)


@functools.lru_cache(maxsize=2)
def _cached(idx_dir: str, split: str, stats: tuple) -> tuple[np.ndarray, np.ndarray]:
    del stats  # part of the cache key only
    return read_split(idx_dir, split)


def check_files(idx_dir: str) -> None:
    """Raises IdxFilesMissingError when one of the four files is absent (reads nothing)."""
    missing = []
    for stems in FILES.values():
        for stem in stems:
            try:
                find_file(idx_dir, stem)
            except IdxFilesMissingError:
                missing.append(stem)
    if missing:
        raise IdxFilesMissingError(f"{idx_dir!r} lacks {missing} (plain or .gz)")
