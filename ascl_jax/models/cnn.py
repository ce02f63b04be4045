"""Standard CNN of Carlini & Wagner (2017), as in TRADES ``models/small_cnn.py::SmallCNN``.

conv3x3(32) -> ReLU -> conv3x3(32) -> ReLU -> maxpool2 -> conv3x3(64) -> ReLU -> conv3x3(64) ->
ReLU -> maxpool2 -> flatten -> FC200 -> ReLU -> FC200 -> ReLU = z [B, 200]; the model's classifier
is the third FC (200 -> classes). So the network has 4 conv + 3 FC layers and z is the output of the
second FC200 (after its ReLU), the penultimate layer.

- Padding: ``'VALID'`` like the references (Keras default in C&W; PyTorch ``padding=0`` in TRADES)
  when the input is at least 16x16 (32x32 -> 5x5x64 = 1600 features into FC1); for smaller inputs
  (8x8 digits) the valid convs would shrink the map to nothing, so ``padding='auto'`` switches to
  ``'SAME'`` there (8x8 -> 2x2x64 = 256). Set ``cnn_padding`` in the model config to force one.
- No BN: the network has none, so ``bn='dual'`` has nothing to split in the trunk (only an
  ``acl_mlp`` head would get dual BN); the ``bn`` argument has no effect on the trunk.
- Dropout(0.5) after FC1 of C&W / TRADES is omitted (the model call contract has no dropout RNG).
- Init as TRADES: convs kaiming normal (fan_in, ReLU gain), zero conv bias; FC layers PyTorch default.
  (TRADES also zero-inits fc3; our classifier uses the PyTorch default like every other arch.)
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ascl_jax.config import CNN_PADDINGS
from ascl_jax.models import layers
from ascl_jax.models.norm import Norm


class SmallCNN(nn.Module):
    """C&W / TRADES small CNN trunk: [B, H, W, C] -> z [B, 200]."""

    conv_widths: tuple[int, int, int, int] = (32, 32, 64, 64)
    fc_width: int = 200
    padding: str = "auto"
    norm: Norm = Norm()  # unused: the network has no BN (kept for a uniform signature)
    conv_init: str = "kaiming_fan_in"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, bn: str) -> jax.Array:
        del train, bn  # no BN, no dropout
        if self.padding not in CNN_PADDINGS:
            raise ValueError(f"cnn_padding must be one of {CNN_PADDINGS}, got {self.padding!r}")
        pad = self.padding
        if pad == "auto":
            pad = "VALID" if min(x.shape[1], x.shape[2]) >= 16 else "SAME"
        for i, w in enumerate(self.conv_widths):
            x = nn.relu(
                layers.conv(x, w, padding=pad, use_bias=True, conv_init=self.conv_init, name=f"conv{i + 1}")
            )
            if i % 2 == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(layers.linear(x, self.fc_width, name="fc1"))
        return nn.relu(layers.linear(x, self.fc_width, name="fc2"))


def cnn(
    norm: Norm, conv_init: str = "kaiming_fan_in", padding: str = "auto", name: str | None = None
) -> SmallCNN:
    return SmallCNN(padding=padding, norm=norm, conv_init=conv_init, name=name)
