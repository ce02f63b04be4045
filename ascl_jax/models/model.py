"""The full model: input normalisation -> encoder -> {z, proj, logits} (docs/design.md "Model call contract").

``ASCLModel.__call__(x, *, train, bn='clean', mask=None)``

- x: [B, H, W, C] float images in [0, 1] (C must equal ``image_shape[-1]``). Normalisation
  ``(x - mean) / std`` is the first op (ASCL ``models.py::Normalize`` wrapper; ACL
  ``NormalizeByChannelMeanStd`` inside the ResNet).
- train: BN uses batch statistics (and needs ``mutable=['batch_stats']``) when True, running
  statistics when False.
- bn: ``'clean'`` or ``'adv'``: which dual-BN branch every BN layer uses (trunk and head). Ignored
  (but still validated) for ``bn_type='single'``.
- mask: optional bool ``[B]``, the valid rows of a padded batch: in train mode every BN layer
  (trunk and head) takes its batch statistics over these rows only (``models.norm``); None = all
  rows (the unmasked arithmetic). Outputs are computed for every row.

Compute dtype (``dtype``, config ``model.dtype``, ``config.DTYPES``): ``'float32'`` (default, the
papers) or ``'bfloat16'``. With bfloat16 the normalised input is cast to bfloat16 and every
convolution and matmul (trunk, head, classifier) runs in bfloat16 (``models.layers``); parameters
and the BN arithmetic and statistics stay float32 (``models.norm``), and the three outputs are cast
to float32, so losses, the attack objective and the perturbation arithmetic (the input x and its
gradient) are float32.

Returns ``{'z': [B, h], 'proj': [B, p], 'logits': [B, num_classes]}``, float32: z the penultimate features
(ASCL's loss space without a head), proj the projection head output (``proj is z`` for
``head='identity'``), logits the linear classifier applied to the un-projected z (CE / VAT / TRADES
always use these; SPEC §1.7).

Variable tree: ``params/{encoder, head, classifier}`` (no ``head`` for ``'identity'``) and
``batch_stats/{encoder, head}``. The classifier is ``Linear(h, C)`` with PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax import config as config_lib
from ascl_jax.config import ARCHS, DTYPES
from ascl_jax.models import cnn as cnn_lib
from ascl_jax.models import layers
from ascl_jax.models import resnet as resnet_lib
from ascl_jax.models import wideresnet as wrn_lib
from ascl_jax.models.heads import ProjectionHead
from ascl_jax.models.norm import Norm, check_branch

# Width h of z per architecture.
FEATURE_DIMS = {
    "cnn": 200,
    "resnet20": 64,
    "resnet18": 512,
    "preact_resnet18": 512,
    "wrn34_10": 640,
    "tiny": 16,
}

# Default conv initialisation per architecture (see models/layers.py and each encoder's docstring).
DEFAULT_CONV_INIT = {
    "cnn": "kaiming_fan_in",
    "resnet20": "kaiming_fan_out",
    "resnet18": "kaiming_fan_out",
    "preact_resnet18": "torch",
    "wrn34_10": "kaiming_fan_out",
    "tiny": "kaiming_fan_out",
}

# Per-dataset (mean, std) of the [0, 1] images, channel order RGB; one row per
# config.NORMALIZATIONS name.
# digits: sklearn ``load_digits`` (1797 images, 8x8, 1 channel) scaled by 1/16; mean and std over all
# pixels of all images (0.305260..., 0.376049...).
# fashion_mnist: the 60,000 training images (28x28, 1 channel) scaled by 1/255; mean and (population)
# std over all their pixels (0.286041, 0.353024).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.30526,), (0.37605,)),
    "fashion_mnist": ((0.28604,), (0.35302,)),
    "none": ((0.0,), (1.0,)),
}


def _make_encoder(arch: str, norm: Norm, conv_init: str, cnn_padding: str) -> nn.Module:
    """Creates the encoder as child 'encoder' of the module whose compact method calls this."""
    if arch == "cnn":
        return cnn_lib.cnn(norm, conv_init, padding=cnn_padding, name="encoder")
    if arch == "resnet20":
        return resnet_lib.resnet20(norm, conv_init, name="encoder")
    if arch == "resnet18":
        return resnet_lib.resnet18(norm, conv_init, name="encoder")
    if arch == "preact_resnet18":
        return resnet_lib.preact_resnet18(norm, conv_init, name="encoder")
    if arch == "wrn34_10":
        return wrn_lib.wrn34_10(norm, conv_init, name="encoder")
    if arch == "tiny":
        return resnet_lib.tiny(norm, conv_init, name="encoder")
    raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_images(x: Any, channels: int) -> None:
    """Raises ValueError unless x is a float [B, H, W, channels] array; if x is concrete (not traced)
    its values must also lie in [0, 1]."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"images must have rank 4 [batch, height, width, channels] (NHWC), got shape {shape}"
        )
    if shape[-1] != channels:
        raise ValueError(f"images must have {channels} channels (last axis, NHWC), got shape {tuple(shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
    if not _is_tracer(x) and x.size:
        lo, hi = float(jnp.min(x)), float(jnp.max(x))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"image values must lie in [0, 1] (normalisation is done inside the "
                f"model), got min {lo} and max {hi}"
            )


class ASCLModel(nn.Module):
    """Encoder + projection head + linear classifier; see the module docstring for the call."""

    arch: str = "resnet18"
    head: str = "identity"
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (32, 32, 3)
    proj_dim: int = 128
    proj_hidden: int = 200
    mlp_dim: int | None = None
    mlp_layers: int = 3
    bn_type: str = "single"
    bn_momentum: float = 0.9
    bn_running_var: str = "unbiased"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    conv_init: str | None = None
    cnn_padding: str = "auto"
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, bn: str = "clean", mask: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        check_branch(bn)
        check_images(x, self.image_shape[-1])
        x = x.astype(jnp.float32)
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        x = (x - mean) / std
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.dtype != "float32":
            x = x.astype(jnp.dtype(self.dtype))

        norm = Norm(self.bn_type, self.bn_momentum, running_var=self.bn_running_var)
        if mask is not None:
            if jnp.shape(mask) != x.shape[:1]:
                raise ValueError(f"mask must have shape [B] = {x.shape[:1]}, got {tuple(jnp.shape(mask))}")
            norm = norm.with_mask(jnp.asarray(mask, bool))
        conv_init = self.conv_init or DEFAULT_CONV_INIT[self.arch]
        encoder = _make_encoder(self.arch, norm, conv_init, self.cnn_padding)
        z = encoder(x, train=train, bn=bn)
        if self.head == "identity":
            proj = z
        else:
            proj = ProjectionHead(
                self.head, self.proj_dim, self.proj_hidden, self.mlp_dim, self.mlp_layers, norm, name="head"
            )(z, train=train, bn=bn)
        logits = layers.linear(z, self.num_classes, name="classifier")
        out = {"z": z, "proj": proj, "logits": logits}
        return {k: v if v.dtype == jnp.float32 else v.astype(jnp.float32) for k, v in out.items()}


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def build_model(model_cfg: Any, *, num_classes: int, image_shape: Sequence[int]) -> ASCLModel:
    """Builds the model from a model config (ConfigDict, dict or any attribute object).

    model_cfg: any subset of the fields of ``config.model_defaults()`` (documented there): arch
    (ARCHS), head (HEADS), proj_dim, proj_hidden, mlp_dim, mlp_layers, bn (BN_TYPES), bn_momentum,
    bn_running_var (BN_RUNNING_VARS), normalization (keys of NORMALIZATION), conv_init (None =
    per-arch reference, else CONV_INITS), cnn_padding, dtype (DTYPES: compute dtype, module doc);
    absent fields take those defaults
    (``config.resolve_model``).
    image_shape: (H, W, C) of the inputs, e.g. (32, 32, 3) or (8, 8, 1).
    Raises ValueError naming the field and the allowed values for anything unknown.
    """
    m = config_lib.resolve_model(model_cfg)
    num_classes = _positive_int(num_classes, "num_classes")
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) <= 0:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape}")
    mean, std = NORMALIZATION[m.normalization]
    channels = image_shape[-1]
    if len(mean) not in (1, channels):
        raise ValueError(
            f"model.normalization={m.normalization!r} has {len(mean)} channels but "
            f"image_shape {image_shape} has {channels}"
        )
    return ASCLModel(
        arch=m.arch,
        head=m.head,
        num_classes=num_classes,
        image_shape=image_shape,
        proj_dim=m.proj_dim,
        proj_hidden=m.proj_hidden,
        mlp_dim=m.mlp_dim,
        mlp_layers=m.mlp_layers,
        bn_type=m.bn,
        bn_momentum=m.bn_momentum,
        bn_running_var=m.bn_running_var,
        mean=tuple(mean),
        std=tuple(std),
        conv_init=m.conv_init,
        cnn_padding=m.cnn_padding,
        dtype=m.dtype,
    )


# ----------------------------------------------------------------------------- variable utilities


def count_params(params: Any) -> int:
    """Number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct`` from ``eval_shape``)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


def strip_head(variables: Mapping[str, Any]) -> dict:
    """Removes the projection head (``head`` subtree) from every collection (ACL fine-tuning drops
    the pretraining head, SPEC §3.2). Returns plain dicts."""
    return {col: {k: v for k, v in tree.items() if k != "head"} for col, tree in variables.items()}


def reset_classifier(variables: Mapping[str, Any], num_classes: int | None = None) -> dict:
    """Sets the classifier (``params/classifier``) to zeros: ACL's fine-tuning FC is zero-initialised
    (``train_trades.py``, SPEC §3.2). ``num_classes`` changes its output width (kernel [h, C],
    bias [C]); default keeps the current width. Returns plain dicts; other variables are shared."""
    variables = {col: dict(tree) for col, tree in variables.items()}
    clf = variables["params"]["classifier"]
    h, c = clf["kernel"].shape
    c = c if num_classes is None else _positive_int(num_classes, "num_classes")
    variables["params"]["classifier"] = {
        "kernel": jnp.zeros((h, c), clf["kernel"].dtype),
        "bias": jnp.zeros((c,), clf["bias"].dtype),
    }
    return variables
