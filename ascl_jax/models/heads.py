"""Projection heads (ASCL Table 5, SPEC §1.7; ACL SPEC §3.2).

All heads map the penultimate features z [B, h] to the contrastive space [B, p]:

- ``'identity'``: p = z (ASCL main results, ``feat_dim <= 0`` in ``models.py::get_projection``).
- ``'p1'``: ``Linear(h, proj_dim)`` with bias (ASCL ``models.py::ProjHead``; paper p1).
- ``'p2'``: ``Linear(h, 200, no bias) -> ReLU -> Linear(200, proj_dim, no bias)`` (paper p2, not in
  the released code; hidden width 200 per the paper).
- ``'acl_mlp'``: ``fc1(h->m, bias) -> BN -> ReLU -> fc2(m->m, no bias) -> BN -> ReLU ->
  fc3(m->m, no bias) -> BN``, no final ReLU; m defaults to h (512 for ResNet-18). Every BN is the
  network's norm (dual BN when the model is dual). ``layers=2`` gives ACL's ``--twoLayerProj``
  variant (``fc1 -> BN -> ReLU -> fc2 -> BN``).

Linear layers use PyTorch's default init (references set none).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ascl_jax.config import HEADS
from ascl_jax.models import layers
from ascl_jax.models.norm import Norm


class ProjectionHead(nn.Module):
    """z [B, h] -> proj [B, p]; see module docstring for the four kinds."""

    kind: str = "identity"
    proj_dim: int = 128
    hidden_dim: int = 200  # p2 hidden width
    mlp_dim: int | None = None  # acl_mlp width (None -> h)
    mlp_layers: int = 3  # acl_mlp: 3 (default) or 2 (--twoLayerProj)
    norm: Norm = Norm()

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool, bn: str) -> jax.Array:
        if self.kind == "identity":
            return z
        if self.kind == "p1":
            return layers.linear(z, self.proj_dim, use_bias=True, name="fc1")
        if self.kind == "p2":
            h = nn.relu(layers.linear(z, self.hidden_dim, use_bias=False, name="fc1"))
            return layers.linear(h, self.proj_dim, use_bias=False, name="fc2")
        if self.kind == "acl_mlp":
            m = self.mlp_dim or z.shape[-1]
            h = layers.linear(z, m, use_bias=True, name="fc1")
            h = nn.relu(self.norm(h, train=train, bn=bn, name="bn1"))
            h = layers.linear(h, m, use_bias=False, name="fc2")
            h = self.norm(h, train=train, bn=bn, name="bn2")
            if self.mlp_layers == 2:
                return h
            h = layers.linear(nn.relu(h), m, use_bias=False, name="fc3")
            return self.norm(h, train=train, bn=bn, name="bn3")
        raise ValueError(f"head must be one of {HEADS}, got {self.kind!r}")
