"""Stateless TensorFlow image augmentations for the tf.data input pipeline.

Every function takes one image ``float32 [H, W, C]`` with pixels in [0, 1] and a stateless seed
``int64 [2]`` and returns an image of the same shape and range. The functions draw all their
randomness from that seed (``tf.random.stateless_*`` / ``tf.image.stateless_random_*``), so the
same (image, seed) always gives the same output: ``ascl_jax.data.pipeline`` derives the seed from
(run seed, epoch, example index, view), which makes training data order and augmentation exactly
reproducible and a resumed run sees the same batches as an uninterrupted one.

Augmentations of the papers (SPEC §1.7, §3.5):

- ``crop_flip``: torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` (ASCL, TRADES,
  Madry AT: "random horizontal flips and random shifts with scale 10%").
- ``shift_flip``: random shifts of up to 10% of the height / width + horizontal flip (ASCL §4.1:
  "random horizontal flips and random shifts with scale 10% ... as used in Pang et al. (2019)",
  whose Keras ``ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1,
  horizontal_flip=True)`` draws real-valued shifts, resamples bilinearly and fills with the nearest
  edge pixel). The authors' code uses ``crop_flip``; this is the paper's wording as a switch.
- ``simclr``: ``RandomResizedCrop(32, scale=(0.1, 1.0), bicubic)``, horizontal flip,
  ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` with p = 0.8, ``RandomGrayscale`` with p = 0.2 (ACL
  pre-training).
  On 1-channel images (the embedded digits dataset) the colour jitter and the grayscale step are
  skipped: hue and saturation are undefined there and grayscale is the identity; brightness and
  contrast are skipped too, so that 'simclr' on digits is purely geometric (documented deviation).

This module imports TensorFlow at import time; ``ascl_jax.data.pipeline`` imports it lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from ascl_jax.config import AUGMENTS


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
    """Splits a stateless seed ``[2]`` into ``num`` independent seeds ``[num, 2]``."""
    return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed: tf.Tensor, shape=(), minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=tf.float32)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 0.5 (torchvision ``RandomHorizontalFlip``)."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def pad_random_crop(image: tf.Tensor, seed: tf.Tensor, *, padding: int) -> tf.Tensor:
    """torchvision ``RandomCrop((H, W), padding=padding)``: zero-pad, crop at a uniform offset.

    Args:
      image: float32 [H, W, C] in [0, 1].
      seed: int64 [2] stateless seed.
      padding: pixels of zero padding on every side (4 for 32x32 CIFAR = the papers' 10% shift).
    Returns:
      float32 [H, W, C]; shifted by up to ``padding`` pixels in each direction, zeros shifted in.
    """
    if padding <= 0:
        return image
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, size=shape, seed=seed)


def crop_flip(image: tf.Tensor, seed: tf.Tensor, *, padding: int, flip: bool) -> tf.Tensor:
    """Adversarial-training augmentation (SPEC §1.7): pad-and-random-crop, then optional flip."""
    s = _split(seed, 2)
    image = pad_random_crop(image, s[0], padding=padding)
    if flip:
        image = random_flip(image, s[1])
    return image


def translate(image: tf.Tensor, dy, dx) -> tf.Tensor:
    """``out[i, j] = image[i + dy, j + dx]``, bilinear between pixels, nearest edge pixel outside.

    Args:
      image: float32 [H, W, C]; dy, dx: float32 scalars (pixels, may be fractional).
    Returns:
      float32 [H, W, C] (scipy ``ndimage.shift(image, (-dy, -dx, 0), order=1, mode='nearest')``).
    """
    one, zero = tf.ones([], tf.float32), tf.zeros([], tf.float32)
    dy, dx = tf.cast(dy, tf.float32), tf.cast(dx, tf.float32)
    transform = tf.stack([one, zero, dx, zero, one, dy, zero, zero])[None]  # output (x, y) <- (x+dx, y+dy)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    return tf.ensure_shape(out, image.shape)


def shift_flip(image: tf.Tensor, seed: tf.Tensor, *, fraction: float = 0.1, flip: bool) -> tf.Tensor:
    """Random shift (dy, dx) ~ U(-fraction, fraction) * (H, W) (``translate``), then optional flip."""
    s = _split(seed, 3)
    height, width = float(image.shape[0]), float(image.shape[1])
    dy = _uniform(s[0], (), -fraction * height, fraction * height)
    dx = _uniform(s[1], (), -fraction * width, fraction * width)
    image = translate(image, dy, dx)
    if flip:
        image = random_flip(image, s[2])
    return image


def _resized_crop_box(
    seed: tf.Tensor,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    attempts: int = 10,
):
    """Crop box of torchvision ``RandomResizedCrop.get_params`` (same algorithm, stateless draws).

    Up to ``attempts`` candidate boxes: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    ``w = round(sqrt(A r))``, ``h = round(sqrt(A / r))``; the first box that fits is placed at a
    uniform offset. If none fits, the central crop with the aspect ratio clamped into ``ratio``.
    The candidates are drawn at once (vectorised); the first valid one is used, as in torchvision.
    Returns int32 scalars (top, left, h, w).
    """
    s = _split(seed, 4)
    area = float(height * width)
    target_area = area * _uniform(s[0], [attempts], scale[0], scale[1])
    log_r = _uniform(s[1], [attempts], math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_r)
    w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    any_valid = tf.reduce_any(valid)

    # Fallback: central crop (torchvision), aspect ratio clamped into [ratio[0], ratio[1]].
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height

    ch = tf.where(any_valid, h[first], fh)
    cw = tf.where(any_valid, w[first], fw)
    u = _uniform(s[2], [2])
    top_rand = tf.cast(tf.floor(u[0] * tf.cast(height - ch + 1, tf.float32)), tf.int32)
    left_rand = tf.cast(tf.floor(u[1] * tf.cast(width - cw + 1, tf.float32)), tf.int32)
    top = tf.where(any_valid, tf.minimum(top_rand, height - ch), (height - fh) // 2)
    left = tf.where(any_valid, tf.minimum(left_rand, width - cw), (width - fw) // 2)
    return top, left, ch, cw


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    scale: Sequence[float] = (0.1, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    method: str = "bicubic",
) -> tf.Tensor:
    """torchvision ``RandomResizedCrop(size=(H, W), scale, ratio, interpolation=BICUBIC)``.

    Args:
      image: float32 [H, W, C] in [0, 1] with static H, W.
      seed: int64 [2].
    Returns:
      float32 [H, W, C], clipped back into [0, 1] (bicubic interpolation overshoots; PIL clips
      by working in uint8).
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    top, left, h, w = _resized_crop_box(seed, height, width, scale, ratio)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, -1]))
    out = tf.image.resize(crop, [height, width], method=method)
    out = tf.clip_by_value(out, 0.0, 1.0)
    return tf.ensure_shape(out, image.shape)


def _grayscale_like(image: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma (torchvision / PIL 'L': 0.299, 0.587, 0.114), broadcast to 3 channels."""
    gray = tf.image.rgb_to_grayscale(image)
    return tf.tile(gray, [1, 1, 3])


def color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> tf.Tensor:
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` on an RGB image.

    Factors: brightness, contrast, saturation ~ U[max(0, 1 - v), 1 + v]; hue shift ~ U[-hue, hue]
    (fraction of the hue circle). The four adjustments are applied in a random order (torchvision
    ``randperm(4)``), each followed by clipping to [0, 1]:
    brightness ``f x``; contrast ``f x + (1 - f) mean(gray(x))``;
    saturation ``f x + (1 - f) gray(x)``; hue: rotate H in HSV space.
    """
    s = _split(seed, 5)
    b = _uniform(s[0], (), max(0.0, 1 - brightness), 1 + brightness)
    c = _uniform(s[1], (), max(0.0, 1 - contrast), 1 + contrast)
    sat = _uniform(s[2], (), max(0.0, 1 - saturation), 1 + saturation)
    h = _uniform(s[3], (), -hue, hue)
    order = tf.argsort(_uniform(s[4], [4]))  # int32

    def _brightness(x):
        return tf.clip_by_value(x * b, 0.0, 1.0)

    def _contrast(x):
        mean = tf.reduce_mean(tf.image.rgb_to_grayscale(x))
        return tf.clip_by_value(c * x + (1 - c) * mean, 0.0, 1.0)

    def _saturation(x):
        return tf.clip_by_value(sat * x + (1 - sat) * _grayscale_like(x), 0.0, 1.0)

    def _hue(x):
        return tf.clip_by_value(tf.image.adjust_hue(x, h), 0.0, 1.0)

    branches = [_brightness, _contrast, _saturation, _hue]
    for k in range(4):
        image = tf.switch_case(order[k], [lambda f=f, x=image: f(x) for f in branches])
    return image


def simclr(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    scale: Sequence[float] = (0.1, 1.0),
    flip: bool = True,
    jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
) -> tf.Tensor:
    """ACL / SimCLR augmentation (SPEC §3.5), in torchvision's order.

    ``RandomResizedCrop(scale, bicubic)`` -> ``RandomHorizontalFlip`` ->
    ``RandomApply([ColorJitter(*jitter)], p=jitter_prob)`` -> ``RandomGrayscale(p=grayscale_prob)``.
    Colour steps run only on 3-channel images (see the module docstring).
    """
    s = _split(seed, 5)
    image = random_resized_crop(image, s[0], scale=scale)
    if flip:
        image = random_flip(image, s[1])
    if image.shape[-1] == 3:
        apply_jitter = _uniform(s[2]) < jitter_prob
        image = tf.cond(
            apply_jitter,
            lambda: color_jitter(
                image, s[3], brightness=jitter[0], contrast=jitter[1], saturation=jitter[2], hue=jitter[3]
            ),
            lambda: image,
        )
        apply_gray = _uniform(s[4]) < grayscale_prob
        image = tf.cond(apply_gray, lambda: _grayscale_like(image), lambda: image)
    return image


def augment(image: tf.Tensor, seed: tf.Tensor, *, kind: str, padding: int, flip: bool) -> tf.Tensor:
    """Dispatches on ``kind`` (``AUGMENTS``); float32 [H, W, C] in [0, 1] -> same shape, range."""
    if kind == "none":
        return image
    if kind == "crop_flip":
        return crop_flip(image, seed, padding=padding, flip=flip)
    if kind == "shift_flip":
        return shift_flip(image, seed, flip=flip)
    if kind == "simclr":
        return simclr(image, seed, flip=flip)
    raise ValueError(f"augment={kind!r}; allowed: {AUGMENTS}")
