"""PyTorch ``nn.Module`` definitions of the ascl_jax architectures (imports torch; load it lazily).

Each module's ``state_dict`` keys are those of :func:`ascl_jax.torchio.convert.to_state_dict`
(:mod:`ascl_jax.torchio.layout`), so ``module.load_state_dict(to_torch_state_dict(v, model))``
loads an ascl_jax model exactly. Call contract (the same as ascl_jax's, in NCHW):

- ``module(x, bn='clean')`` -> logits [B, C]; x [B, C, H, W] float in [0, 1]. The input
  normalisation ``(x - mean) / std`` is the first op (buffers ``normalize.mean`` / ``normalize.std``,
  shape [C], as ACL's ``NormalizeByChannelMeanStd``), so attacks work in [0, 1] pixel space.
- ``module.features(x, bn)`` -> z [B, h]; ``module.project(z, bn)`` -> the projection head's output
  (z itself for head 'identity'); ``module.forward_all(x, bn)`` -> {'z', 'proj', 'logits'}.
- ``bn``: 'clean' or 'adv', the BN set of a dual-BN model (``bn_list.0`` / ``bn_list.1``); ignored
  for single BN. ``module.train()`` / ``module.eval()`` switch BN between batch and running
  statistics as usual; BN momentum is ``1 - model.bn_momentum`` (PyTorch's convention, 0.1 for
  ascl_jax's 0.9), eps 1e-5; PyTorch always updates ``running_var`` with the unbiased batch
  variance, ascl_jax's ``model.bn_running_var='unbiased'`` (the default).

The CNN has no dropout (ascl_jax's has none; TRADES' Dropout(0.5) is the identity in eval mode).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from ascl_jax.config import BN_BRANCHES


class Normalize(nn.Module):
    """(x - mean) / std per channel of NCHW input; buffers ``mean``, ``std`` [C]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


class DualBN(nn.Module):
    """ACL's ``batch_norm_multiple``: ``bn_list`` of two BNs; ``bn`` picks ``clean`` (0) or ``adv`` (1)."""

    def __init__(self, make):
        super().__init__()
        self.bn_list = nn.ModuleList([make(), make()])

    def forward(self, x, bn):
        return self.bn_list[BN_BRANCHES.index(bn)](x)


def _bn(c: int, dual: bool, momentum: float, dim: int = 2):
    cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    make = lambda: cls(c, eps=1e-5, momentum=momentum)
    return DualBN(make) if dual else make()


def _apply_bn(layer, x, bn):
    return layer(x, bn) if isinstance(layer, DualBN) else layer(x)


def _conv(cin, cout, k=3, stride=1, padding=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride, padding, bias=bias)


class _Net(nn.Module, abc.ABC):
    """Shared top: normalisation, projection head and the call contract (module docstring)."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.normalize = Normalize(spec["mean"], spec["std"])

    def _add_stages(self, block, cin, stages, widths):
        """Registers ``layer{i + 1}``, a Sequential of ``stages[i]`` ``block(cin, widths[i], stride,
        spec)`` (stride 2 for the first block of every stage after the first); returns the last width."""
        for i, (n, w) in enumerate(zip(stages, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1, self.spec))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(stages)
        return cin

    def _run_stages(self, x, bn):
        """x through every block of ``layer1 .. layer{n_stages}`` in order, BN branch ``bn``."""
        for i in range(self.n_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x, bn)
        return x

    def _make_head(self, h):
        s = self.spec
        kind = s["head"]
        if kind == "identity":
            return None
        head = nn.Module()
        if kind == "p1":
            head.fc1 = nn.Linear(h, s["proj_dim"])
        elif kind == "p2":
            head.fc1 = nn.Linear(h, s["proj_hidden"], bias=False)
            head.fc2 = nn.Linear(s["proj_hidden"], s["proj_dim"], bias=False)
        elif kind == "acl_mlp":
            m = s["mlp_dim"] or h
            head.fc1 = nn.Linear(h, m)
            head.bn1 = _bn(m, s["dual"], s["momentum"], dim=1)
            head.fc2 = nn.Linear(m, m, bias=False)
            head.bn2 = _bn(m, s["dual"], s["momentum"], dim=1)
            if s["mlp_layers"] == 3:
                head.fc3 = nn.Linear(m, m, bias=False)
                head.bn3 = _bn(m, s["dual"], s["momentum"], dim=1)
        else:
            raise ValueError(f"no PyTorch head {kind!r}")
        return head

    def project(self, z, bn="clean"):
        head, kind = self.head, self.spec["head"]
        if head is None:
            return z
        if kind == "p1":
            return head.fc1(z)
        if kind == "p2":
            return head.fc2(F.relu(head.fc1(z)))
        h = F.relu(_apply_bn(head.bn1, head.fc1(z), bn))
        h = _apply_bn(head.bn2, head.fc2(h), bn)
        if self.spec["mlp_layers"] == 2:
            return h
        return _apply_bn(head.bn3, head.fc3(F.relu(h)), bn)

    @abc.abstractmethod
    def classify(self, z):
        """Logits [B, K] of the penultimate features z [B, D] (each architecture's classifier)."""

    @abc.abstractmethod
    def encode(self, x, bn):
        """Penultimate features z [B, D] of normalised NCHW images x through BN branch `bn`."""

    def features(self, x, bn="clean"):
        if bn not in BN_BRANCHES:
            raise ValueError(f"bn must be one of {BN_BRANCHES}, got {bn!r}")
        return self.encode(self.normalize(x), bn)

    def forward_all(self, x, bn="clean"):
        z = self.features(x, bn)
        return {"z": z, "proj": self.project(z, bn), "logits": self.classify(z)}

    def forward(self, x, bn="clean"):
        return self.classify(self.features(x, bn))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, spec):
        super().__init__()
        d, m = spec["dual"], spec["momentum"]
        self.conv1, self.bn1 = _conv(cin, cout, stride=stride), _bn(cout, d, m)
        self.conv2, self.bn2 = _conv(cout, cout), _bn(cout, d, m)
        self.downsample = None
        if stride != 1 or cin != cout:
            conv, bn = _conv(cin, cout, 1, stride, 0), _bn(cout, d, m)
            if d:  # ACL Downsample_multiple: .conv / .bn
                self.downsample = nn.Module()
                self.downsample.conv, self.downsample.bn = conv, bn
            else:  # torchvision: Sequential(conv, bn)
                self.downsample = nn.Sequential(conv, bn)

    def forward(self, x, bn):
        y = F.relu(_apply_bn(self.bn1, self.conv1(x), bn))
        y = _apply_bn(self.bn2, self.conv2(y), bn)
        if self.downsample is not None:
            ds = self.downsample
            conv, norm = (ds[0], ds[1]) if isinstance(ds, nn.Sequential) else (ds.conv, ds.bn)
            x = _apply_bn(norm, conv(x), bn)
        return F.relu(y + x)


class ResNet(_Net):
    """CIFAR ResNet (ResNet-18 / ResNet-20): conv1, bn1, layer{i}.{j}, fc (torchvision / ACL names)."""

    def __init__(self, spec, stages, widths):
        super().__init__(spec)
        d, m = spec["dual"], spec["momentum"]
        self.conv1, self.bn1 = _conv(spec["channels"], widths[0]), _bn(widths[0], d, m)
        cin = self._add_stages(BasicBlock, widths[0], stages, widths)
        self.fc = nn.Linear(cin, spec["num_classes"])
        self.head = self._make_head(cin)

    def encode(self, x, bn):
        x = self._run_stages(F.relu(_apply_bn(self.bn1, self.conv1(x), bn)), bn)
        return x.mean(dim=(2, 3))

    def classify(self, z):
        return self.fc(z)


class Tiny(ResNet):
    """The tiny test encoder: conv1 (w), bn1, conv2 (2w, stride 2), bn2, global average pool."""

    def __init__(self, spec, width=8):
        _Net.__init__(self, spec)
        d, m = spec["dual"], spec["momentum"]
        self.conv1, self.bn1 = _conv(spec["channels"], width), _bn(width, d, m)
        self.conv2, self.bn2 = _conv(width, 2 * width, stride=2), _bn(2 * width, d, m)
        self.fc = nn.Linear(2 * width, spec["num_classes"])
        self.head = self._make_head(2 * width)

    def encode(self, x, bn):
        x = F.relu(_apply_bn(self.bn1, self.conv1(x), bn))
        x = F.relu(_apply_bn(self.bn2, self.conv2(x), bn))
        return x.mean(dim=(2, 3))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, spec):
        super().__init__()
        d, m = spec["dual"], spec["momentum"]
        self.bn1, self.conv1 = _bn(cin, d, m), _conv(cin, cout, stride=stride)
        self.bn2, self.conv2 = _bn(cout, d, m), _conv(cout, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride, 0))

    def forward(self, x, bn):
        out = F.relu(_apply_bn(self.bn1, x, bn))
        short = self.shortcut(out) if hasattr(self, "shortcut") else x
        y = self.conv1(out)
        y = self.conv2(F.relu(_apply_bn(self.bn2, y, bn)))
        return y + short


class PreActResNet(_Net):
    """ASCL PreActResNet-18: conv1, layer{i}.{j}, final bn, linear."""

    def __init__(self, spec, stages=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__(spec)
        self.conv1 = _conv(spec["channels"], widths[0])
        cin = self._add_stages(PreActBlock, widths[0], stages, widths)
        self.bn = _bn(cin, spec["dual"], spec["momentum"])
        self.linear = nn.Linear(cin, spec["num_classes"])
        self.head = self._make_head(cin)

    def encode(self, x, bn):
        x = self._run_stages(self.conv1(x), bn)
        return F.relu(_apply_bn(self.bn, x, bn)).mean(dim=(2, 3))

    def classify(self, z):
        return self.linear(z)


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, spec):
        super().__init__()
        d, m = spec["dual"], spec["momentum"]
        self.bn1, self.conv1 = _bn(cin, d, m), _conv(cin, cout, stride=stride)
        self.bn2, self.conv2 = _bn(cout, d, m), _conv(cout, cout)
        self.equal = cin == cout
        if not self.equal:
            self.convShortcut = _conv(cin, cout, 1, stride, 0)

    def forward(self, x, bn):
        act = F.relu(_apply_bn(self.bn1, x, bn))
        y = self.conv2(F.relu(_apply_bn(self.bn2, self.conv1(act), bn)))
        return (x if self.equal else self.convShortcut(act)) + y


class WideResNet(_Net):
    """TRADES WideResNet-depth-widen: conv1, block{g}.layer.{j}, final bn1, fc."""

    def __init__(self, spec, depth=34, widen_factor=10):
        super().__init__(spec)
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv(spec["channels"], 16)
        cin = 16
        for g, (w, s) in enumerate(zip(widths, (1, 2, 2))):
            group = nn.Module()
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(cin, w, s if j == 0 else 1, spec))
                cin = w
            group.layer = nn.Sequential(*blocks)
            setattr(self, f"block{g + 1}", group)
        self.bn1 = _bn(cin, spec["dual"], spec["momentum"])
        self.fc = nn.Linear(cin, spec["num_classes"])
        self.head = self._make_head(cin)

    def encode(self, x, bn):
        x = self.conv1(x)
        for g in range(3):
            for block in getattr(self, f"block{g + 1}").layer:
                x = block(x, bn)
        return F.relu(_apply_bn(self.bn1, x, bn)).mean(dim=(2, 3))

    def classify(self, z):
        return self.fc(z)


class SmallCNN(_Net):
    """TRADES SmallCNN: feature_extractor.conv1-4 (2x2 max-pool after conv2 and conv4),
    classifier.fc1, fc2 (z, 200) and fc3 (the classifier). Flattens NCHW, as TRADES."""

    def __init__(self, spec, flat_hw):
        super().__init__(spec)
        pad = 1 if spec["cnn_padding"] == "SAME" else 0
        fe, cin = nn.Module(), spec["channels"]
        for i, w in enumerate((32, 32, 64, 64)):
            setattr(fe, f"conv{i + 1}", _conv(cin, w, 3, 1, pad, bias=True))
            cin = w
        self.feature_extractor = fe
        clf = nn.Module()
        clf.fc1 = nn.Linear(64 * flat_hw[0] * flat_hw[1], 200)
        clf.fc2 = nn.Linear(200, 200)
        clf.fc3 = nn.Linear(200, spec["num_classes"])
        self.classifier = clf
        self.head = self._make_head(200)

    def encode(self, x, bn):
        fe = self.feature_extractor
        for i in range(4):
            x = F.relu(getattr(fe, f"conv{i + 1}")(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.classifier.fc1(x.flatten(1)))
        return F.relu(self.classifier.fc2(x))

    def classify(self, z):
        return self.classifier.fc3(z)


def build(spec: dict, *, flat_hw=None, wrn_depth: int = 34, wrn_widen: int = 10) -> _Net:
    """The module of ``spec`` (keys: arch, num_classes, channels, head, proj_dim, proj_hidden,
    mlp_dim, mlp_layers, dual, momentum, mean, std, cnn_padding ('SAME' / 'VALID'))."""
    arch = spec["arch"]
    if arch == "resnet18":
        return ResNet(spec, (2, 2, 2, 2), (64, 128, 256, 512))
    if arch == "resnet20":
        return ResNet(spec, (3, 3, 3), (16, 32, 64))
    if arch == "tiny":
        return Tiny(spec)
    if arch == "preact_resnet18":
        return PreActResNet(spec)
    if arch == "wrn34_10":
        return WideResNet(spec, wrn_depth, wrn_widen)
    if arch == "cnn":
        return SmallCNN(spec, flat_hw)
    raise ValueError(f"no PyTorch module for arch {arch!r}")
