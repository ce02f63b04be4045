"""Flax linen encoders with single / dual batch norm, projection heads and a linear classifier.

Public API (docs/design.md, "Model call contract"):

- ``build_model(model_cfg, *, num_classes, image_shape) -> ASCLModel``
- ``model.apply(variables, x, train=..., bn='clean'|'adv', [mutable=['batch_stats']])``
  -> ``{'z': [B, h], 'proj': [B, p], 'logits': [B, C]}``; x NHWC float in [0, 1].
- ``ARCHS``, ``HEADS``, ``BN_TYPES``, ``NORMALIZATION``, ``FEATURE_DIMS``
- ``select_bn_branch(variables, 'clean'|'adv')``: dual-BN tree -> single-BN tree (SPEC §3.2)
- ``strip_head(variables)``, ``reset_classifier(variables, num_classes=None)``, ``count_params(tree)``
- ``DualBatchNorm`` / ``Norm`` (``models/norm.py``)

Parameter counts (``count_params(variables['params'])``, 32x32x3 input, 10 classes, head 'identity';
BN running statistics not counted; the references' PyTorch ``sum(p.numel())`` gives the same numbers):

| arch             | z   | single BN  | dual BN    | reference                                  |
|------------------|-----|------------|------------|--------------------------------------------|
| cnn              | 200 | 427,978    | 427,978    | C&W 2017 / TRADES SmallCNN at 32x32 (no BN) |
| resnet20         | 64  | 272,474    | 274,042    | He et al.; = peer-bench ``torch_resnet20_at.py`` |
| resnet18         | 512 | 11,173,962 | 11,183,562 | Kuang-Liu ResNet18 (ASCL ``resnet.py``)    |
| preact_resnet18  | 512 | 11,172,170 | 11,179,978 | ASCL ``preactresnet.py`` (Kuang-Liu + final BN: 11,171,146 + 1,024) |
| wrn34_10         | 640 | 46,160,474 | 46,182,906 | TRADES WideResNet-34-10 (without the unused ``sub_block1``) |
| tiny             | 16  | 1,586      | 1,634      | test encoder                               |

Dual BN adds one more (scale, bias) pair per BN layer, e.g. +9,600 for ResNet-18 and +1,568 for
ResNet-20. Heads on ResNet-18 (h = 512): p1 +65,664 (512*128 + 128); p2 +128,000 (512*200 + 200*128);
acl_mlp +790,016 with single BN (512*512 + 512 + 2*512*512 + 3 BN * 1,024) and +793,088 with dual BN.
The cnn count depends on the input size (flatten): 8x8x1 digits give 158,602.
These numbers are checked in ``tests/test_models.py``.
"""

from ascl_jax.models.heads import HEADS, ProjectionHead
from ascl_jax.models.layers import CONV_INITS
from ascl_jax.models.model import (
    ARCHS,
    DEFAULT_CONV_INIT,
    FEATURE_DIMS,
    NORMALIZATION,
    ASCLModel,
    build_model,
    check_images,
    count_params,
    reset_classifier,
    strip_head,
)
from ascl_jax.models.norm import BN_BRANCHES, BN_TYPES, DualBatchNorm, Norm, has_dual_bn, select_bn_branch

__all__ = [
    "ARCHS",
    "HEADS",
    "BN_TYPES",
    "BN_BRANCHES",
    "CONV_INITS",
    "NORMALIZATION",
    "FEATURE_DIMS",
    "DEFAULT_CONV_INIT",
    "ASCLModel",
    "ProjectionHead",
    "DualBatchNorm",
    "Norm",
    "build_model",
    "check_images",
    "count_params",
    "select_bn_branch",
    "has_dual_bn",
    "strip_head",
    "reset_classifier",
]
