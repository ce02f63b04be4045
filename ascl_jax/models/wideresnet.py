"""WideResNet-34-10 of TRADES (``yaodongyu/TRADES: models/wideresnet.py``, copied by ASCL).

NHWC. Stem ``conv3x3(16)``; three groups of n = (34-4)/6 = 5 pre-activation blocks with widths
160/320/640 (strides 1/2/2); final BN + ReLU; global average pool (= ``avg_pool2d(8)`` at 32x32);
z = 640. Block (``equalInOut`` logic of the reference):

- in == out: ``o = relu(bn1(x)); o = conv2(relu(bn2(conv1(o)))); return x + o``
- in != out: ``x = relu(bn1(x)); o = conv2(relu(bn2(conv1(x)))); return convShortcut(x) + o``
  (the 1x1 shortcut sees the *activated* input).

Dropout (``dropRate``) is 0 in the references and omitted. The reference also builds a
``sub_block1`` that ``forward`` never uses; it holds 2,102,112 parameters that never train, and is
omitted here, so our count (46,160,474 with 10 classes) is the count of the network that runs
(PyTorch's ``sum(p.numel())`` on the reference reports 48,262,586).

Init as the reference: conv ``N(0, 2/(k*k*out))`` (kaiming normal fan_out), BN 1/0. The reference
zeroes the FC bias and keeps PyTorch's default FC weight; our classifier uses the PyTorch default for
both (see ``models/model.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ascl_jax.models import layers
from ascl_jax.models.norm import Norm


class WideBasicBlock(nn.Module):
    features: int
    stride: int = 1
    norm: Norm = Norm()
    conv_init: str = "kaiming_fan_out"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        equal_in_out = x.shape[-1] == self.features
        act = nn.relu(self.norm(x, train=train, bn=bn, name="bn1"))
        y = layers.conv(act, self.features, stride=self.stride, conv_init=self.conv_init, name="conv1")
        y = nn.relu(self.norm(y, train=train, bn=bn, name="bn2"))
        y = layers.conv(y, self.features, conv_init=self.conv_init, name="conv2")
        if equal_in_out:
            # The reference has no stride-2 equal-width block, so no projection is needed here.
            return x + y
        shortcut = layers.conv(
            act,
            self.features,
            kernel=1,
            stride=self.stride,
            padding=0,
            conv_init=self.conv_init,
            name="shortcut_conv",
        )
        return shortcut + y


class WideResNet(nn.Module):
    """TRADES WideResNet. [B, H, W, C] -> z [B, 64 * widen_factor]."""

    depth: int = 34
    widen_factor: int = 10
    norm: Norm = Norm()
    conv_init: str = "kaiming_fan_out"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
        n = (self.depth - 4) // 6
        widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
        x = layers.conv(x, 16, conv_init=self.conv_init, name="conv1")
        for g, (w, s) in enumerate(zip(widths, (1, 2, 2))):
            for j in range(n):
                x = WideBasicBlock(
                    w, s if j == 0 else 1, norm=self.norm, conv_init=self.conv_init, name=f"block{g + 1}_{j}"
                )(x, train=train, bn=bn)
        x = nn.relu(self.norm(x, train=train, bn=bn, name="bn_final"))
        return layers.global_avg_pool(x)


def wrn34_10(norm: Norm, conv_init: str = "kaiming_fan_out", name: str | None = None) -> WideResNet:
    return WideResNet(34, 10, norm=norm, conv_init=conv_init, name=name)
