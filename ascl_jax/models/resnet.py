"""CIFAR ResNets (NHWC): ResNet-20, ResNet-18, PreAct ResNet-18 and a tiny test encoder.

Every encoder maps normalised images x [B, H, W, C] to the penultimate features z [B, h]
(``__call__(x, *, train, bn)``); the classifier and projection head live in ``models/model.py``.
Global average pooling replaces the references' fixed ``avg_pool2d(4)`` (identical at 32x32 input,
and it also works on 8x8 digits). Convs feeding a BN have no bias.

- ``resnet20`` (He et al. 2016, CIFAR variant; layout of /work/shared/peer-bench/torch_resnet20_at.py):
  3x3 stem conv 16 + BN + ReLU, 3 stages x 3 BasicBlocks with widths 16/32/64 (stride 2 at the first
  block of stages 2 and 3), *projection* shortcut (1x1 conv + BN) where the shape changes (He's
  option B; the peer benchmark does the same), z = 64-d global average pool. 272,474 params (10 classes).
- ``resnet18`` (Kuang-Liu ``pytorch-cifar/models/resnet.py``, ASCL ``resnet.py``; ACL's
  ``resnet_multi_bn.py`` is the same network): 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] BasicBlocks
  of widths 64/128/256/512, z = 512. 11,173,962 params (10 classes).
- ``preact_resnet18`` (Kuang-Liu / ASCL ``preactresnet.py``): pre-activation blocks, shortcut a bare
  1x1 conv applied to ``relu(bn1(x))``, final BN + ReLU before pooling (ASCL's version; the
  original Kuang-Liu file has no final BN and 1,024 params fewer), z = 512. 11,172,170 params.
- ``tiny``: conv8 -> BN -> ReLU -> conv16/2 -> BN -> ReLU -> GAP, z = 16 (tests and smoke runs).

Initialisation (``conv_init``, see ``models/layers.py``): ResNet-20 and ResNet-18 default to kaiming
normal fan_out (He init; torchvision / ACL ``resnet_multi_bn.py``); PreAct ResNet-18 defaults to
PyTorch's default conv init (Kuang-Liu sets none). Note that the Kuang-Liu ResNet-18 used by ASCL also
sets no init; pass ``conv_init='torch'`` in the model config to reproduce that instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from ascl_jax.models import layers
from ascl_jax.models.norm import Norm


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    features: int
    stride: int = 1
    norm: Norm = Norm()
    conv_init: str = "kaiming_fan_out"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        y = layers.conv(x, self.features, stride=self.stride, conv_init=self.conv_init, name="conv1")
        y = nn.relu(self.norm(y, train=train, bn=bn, name="bn1"))
        y = layers.conv(y, self.features, conv_init=self.conv_init, name="conv2")
        y = self.norm(y, train=train, bn=bn, name="bn2")
        if self.stride != 1 or x.shape[-1] != self.features:
            x = layers.conv(
                x,
                self.features,
                kernel=1,
                stride=self.stride,
                padding=0,
                conv_init=self.conv_init,
                name="shortcut_conv",
            )
            x = self.norm(x, train=train, bn=bn, name="shortcut_bn")
        return nn.relu(y + x)


def _stages(net: nn.Module, block: type[nn.Module], x: jax.Array, *, train: bool, bn: str) -> jax.Array:
    """x through ``net``'s stages, called inside ``net``'s compact method: ``stage_sizes[i]`` blocks
    of width ``widths[i]``, children ``layer{i + 1}_{j}``, stride 2 at the first block of every
    stage after the first."""
    for i, (n, w) in enumerate(zip(net.stage_sizes, net.widths)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            x = block(w, stride, norm=net.norm, conv_init=net.conv_init, name=f"layer{i + 1}_{j}")(
                x, train=train, bn=bn
            )
    return x


class CifarResNet(nn.Module):
    """3x3 stride-1 stem + stages of BasicBlocks + global average pool. [B,H,W,C] -> z [B, widths[-1]]."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    norm: Norm = Norm()
    conv_init: str = "kaiming_fan_out"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        x = layers.conv(x, self.widths[0], conv_init=self.conv_init, name="conv1")
        x = nn.relu(self.norm(x, train=train, bn=bn, name="bn1"))
        x = _stages(self, BasicBlock, x, train=train, bn=bn)
        return layers.global_avg_pool(x)


class PreActBlock(nn.Module):
    """Pre-activation block: out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut."""

    features: int
    stride: int = 1
    norm: Norm = Norm()
    conv_init: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        out = nn.relu(self.norm(x, train=train, bn=bn, name="bn1"))
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = layers.conv(
                out,
                self.features,
                kernel=1,
                stride=self.stride,
                padding=0,
                conv_init=self.conv_init,
                name="shortcut_conv",
            )
        else:
            shortcut = x
        y = layers.conv(out, self.features, stride=self.stride, conv_init=self.conv_init, name="conv1")
        y = nn.relu(self.norm(y, train=train, bn=bn, name="bn2"))
        y = layers.conv(y, self.features, conv_init=self.conv_init, name="conv2")
        return y + shortcut


class PreActResNet(nn.Module):
    """Kuang-Liu PreActResNet: conv stem, PreActBlocks, final BN + ReLU, global average pool."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    norm: Norm = Norm()
    conv_init: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        x = layers.conv(x, self.widths[0], conv_init=self.conv_init, name="conv1")
        x = _stages(self, PreActBlock, x, train=train, bn=bn)
        x = nn.relu(self.norm(x, train=train, bn=bn, name="bn_final"))
        return layers.global_avg_pool(x)


class TinyEncoder(nn.Module):
    """Small BN encoder for tests: conv(w) -> BN -> ReLU -> conv(2w, stride 2) -> BN -> ReLU -> GAP."""

    width: int = 8
    norm: Norm = Norm()
    conv_init: str = "kaiming_fan_out"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        x = layers.conv(x, self.width, conv_init=self.conv_init, name="conv1")
        x = nn.relu(self.norm(x, train=train, bn=bn, name="bn1"))
        x = layers.conv(x, 2 * self.width, stride=2, conv_init=self.conv_init, name="conv2")
        x = nn.relu(self.norm(x, train=train, bn=bn, name="bn2"))
        return layers.global_avg_pool(x)


# Factories: ``name`` lets a parent create the encoder inside its compact method as child ``name``.
def resnet20(norm: Norm, conv_init: str = "kaiming_fan_out", name: str | None = None) -> CifarResNet:
    return CifarResNet((3, 3, 3), (16, 32, 64), norm=norm, conv_init=conv_init, name=name)


def resnet18(norm: Norm, conv_init: str = "kaiming_fan_out", name: str | None = None) -> CifarResNet:
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), norm=norm, conv_init=conv_init, name=name)


def preact_resnet18(norm: Norm, conv_init: str = "torch", name: str | None = None) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), norm=norm, conv_init=conv_init, name=name)


def tiny(norm: Norm, conv_init: str = "kaiming_fan_out", name: str | None = None) -> TinyEncoder:
    return TinyEncoder(8, norm=norm, conv_init=conv_init, name=name)
