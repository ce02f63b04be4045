"""PyTorch ``state_dict`` names and tensor layouts of each ascl_jax architecture (numpy only).

Every leaf of an ascl_jax variable tree (``params`` and ``batch_stats``) maps to one PyTorch key:

- module path: encoder children follow the reference code of each architecture (table below); the
  projection head is ``head.<fc1|fc2|fc3|bn1|bn2|bn3>`` and the classifier the reference's final
  linear layer.
- leaf: conv ``kernel`` [kh, kw, I, O] (HWIO) <-> ``weight`` [O, I, kh, kw] (OIHW); dense
  ``kernel`` [I, O] <-> ``weight`` [O, I]; BN ``scale``/``bias`` <-> ``weight``/``bias``;
  ``batch_stats`` ``mean``/``var`` <-> ``running_mean``/``running_var`` (values copied as they are:
  with ``model.bn_running_var='unbiased'``, the default, both frameworks keep the same statistic).
- dual BN (ACL ``models/resnet_multi_bn.py::batch_norm_multiple``): ``<bn>.bn_list.0.*`` is the
  ``clean`` branch (ACL's ``'normal'``) and ``<bn>.bn_list.1.*`` the ``adv`` branch (``'pgd'``).
- the CNN's first FC: PyTorch flattens NCHW (index ``c*H*W + h*W + w``), ascl_jax NHWC
  (``(h*W + w)*C + c``); the converter permutes the 64*H'*W' input columns accordingly.

Per architecture (encoder names; classifier; 1x1 shortcut conv and BN):

- resnet18, resnet20, tiny: torchvision / ACL ``models/resnet.py``: ``conv1, bn1,
  layer{i}.{j}.{conv1,bn1,conv2,bn2}``; ``fc``; ``layer{i}.0.downsample.0`` / ``.downsample.1``
  (dual BN: ACL ``resnet_multi_bn.py``'s ``downsample.conv`` / ``downsample.bn``).
- preact_resnet18: ASCL ``preactresnet.py``: ``conv1, layer{i}.{j}.{bn1,conv1,bn2,conv2}``, final
  ``bn``; ``linear``; ``layer{i}.0.shortcut.0``.
- wrn34_10: TRADES ``wideresnet.py``: ``conv1, block{g}.layer.{j}.{bn1,conv1,bn2,conv2}``, final
  ``bn1``; ``fc``; ``block{g}.layer.0.convShortcut``.
- cnn: TRADES ``small_cnn.py``: ``feature_extractor.conv{1-4}``, ``classifier.fc1``,
  ``classifier.fc2``; ``classifier.fc3``.

Loading also accepts the other spellings of the same networks: ``shortcut.0/1`` (Kuang-Liu ResNet-18,
ASCL), ``linear`` / ``fc`` for the classifier, ACL's ``fc.<fc1..bn3>`` projection head,
``<bn>.bn_list.<p>`` (ACL's single-BN ``batch_norm_multiple``), and for a single-BN model a dual-BN
checkpoint's ``bn_list.<i>`` set chosen by ``bn_branch``. Keys never read: ``num_batches_tracked``,
``normalize.mean``/``normalize.std`` (checked against the model's normalisation instead), the
TRADES WideResNet's unused ``sub_block1.*``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ascl_jax.config import ARCHS, BN_BRANCHES

# Index of each ascl_jax BN branch in ACL's ``bn_names = ['normal', 'pgd']``.
BRANCH_INDEX = {"clean": 0, "adv": 1}
PARTS = ("encoder", "head", "classifier")
# Keys a checkpoint may hold that carry no variable (suffixes / prefixes, after 'module.' removal).
IGNORED_SUFFIXES = ("num_batches_tracked",)
IGNORED_KEYS = ("normalize.mean", "normalize.std")
IGNORED_PREFIXES = {"wrn34_10": ("sub_block1.",)}
# Containers a checkpoint file may wrap its state_dict in (first found wins).
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "P_state", "state")

# Leaves in PyTorch's parameter order (weight, bias, running_mean, running_var).
_LEAF_ORDER = {"kernel": 1, "scale": 1, "bias": 2, "mean": 3, "var": 4}
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class TorchCheckpointError(ValueError):
    """A PyTorch checkpoint that does not fit the chosen architecture (names the key and shapes)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One variable leaf: its path in the ascl_jax tree, PyTorch key candidates (canonical first),
    the layout kind ('conv', 'dense', 'cnn_fc1', 'vector') and the JAX shape."""

    path: tuple[str, ...]
    keys: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    siblings: tuple[str, ...] = ()  # keys consumed with keys[i] (the other BN branch of a dual checkpoint)

    @property
    def key(self) -> str:
        return self.keys[0]


def _encoder_prefixes(arch: str, mod: Sequence[str], dual: bool) -> list[str]:
    """PyTorch module-name spellings (canonical first) of encoder module path ``mod``."""
    name = mod[-1]
    block = None
    if len(mod) == 2:
        m = re.fullmatch(r"(layer|block)(\d+)_(\d+)", mod[0])
        if m is None:
            raise TorchCheckpointError(f"no PyTorch name for encoder module {'/'.join(mod)} ({arch})")
        kind, i, j = m.groups()
        block = f"{kind}{i}.layer.{j}" if arch == "wrn34_10" else f"{kind}{i}.{j}"
    elif len(mod) != 1:
        raise TorchCheckpointError(f"no PyTorch name for encoder module {'/'.join(mod)} ({arch})")
    if arch == "cnn":
        return [f"feature_extractor.{name}"] if name.startswith("conv") else [f"classifier.{name}"]
    if block is None:
        if name == "bn_final":
            return ["bn1"] if arch == "wrn34_10" else ["bn"]
        return [name]
    if name == "shortcut_conv":
        if arch == "wrn34_10":
            return [f"{block}.convShortcut"]
        if arch == "preact_resnet18":
            return [f"{block}.shortcut.0"]
        spell = ["downsample.conv", "downsample.0"] if dual else ["downsample.0", "downsample.conv"]
        return [f"{block}.{s}" for s in spell + ["shortcut.0"]]
    if name == "shortcut_bn":
        spell = ["downsample.bn", "downsample.1"] if dual else ["downsample.1", "downsample.bn"]
        return [f"{block}.{s}" for s in spell + ["shortcut.1"]]
    return [f"{block}.{name}"]


def _module_prefixes(arch: str, part: str, mod: Sequence[str], dual: bool) -> list[str]:
    if part == "classifier":
        return {"cnn": ["classifier.fc3"], "preact_resnet18": ["linear", "fc"]}.get(arch, ["fc", "linear"])
    if part == "head":
        alts = [f"head.{'.'.join(mod)}", f"fc.{'.'.join(mod)}"]
        if mod == ("fc1",):
            alts.append("ProjLayer.head.0")  # ASCL models.py::ProjHead (p1)
        return alts
    return _encoder_prefixes(arch, mod, dual)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for k, v in sorted(tree.items(), key=lambda kv: (_LEAF_ORDER.get(kv[0], 0), kv[0])):
        if isinstance(v, Mapping):
            out.extend(_flatten(v, prefix + (k,)))
        else:
            out.append((prefix + (k,), v))
    return out


def entries(
    template: Mapping[str, Any], arch: str, *, bn_branch: str | None = None, dual_checkpoint: bool = False
) -> list[Entry]:
    """The :class:`Entry` of every leaf of ``template`` ({'params', 'batch_stats'?} of arrays or
    ShapeDtypeStructs), for architecture ``arch``. ``bn_branch``/``dual_checkpoint``: a single-BN
    template read from a dual-BN checkpoint takes the ``bn_list.<BRANCH_INDEX[bn_branch]>`` set."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")
    flat = _flatten(template)
    dual = any(len(p) > 2 and p[-2] in BN_BRANCHES for p, _ in flat)
    out = []
    for path, leaf in flat:
        col, part, rest = path[0], path[1], path[2:-1]
        name = path[-1]
        shape = tuple(int(d) for d in leaf.shape)
        if part not in PARTS:
            raise TorchCheckpointError(f"variable {'/'.join(path)} is outside {PARTS}")
        branch = rest[-1] if rest and rest[-1] in BN_BRANCHES else None
        mod = rest[:-1] if branch else rest
        # A 'bias' next to a 'scale' is a BN's; next to a 'kernel' it is a conv / dense bias.
        is_bn = col == "batch_stats" or name == "scale" or branch is not None
        is_bn = is_bn or (name == "bias" and "scale" in _siblings(template, path))
        prefixes = _module_prefixes(arch, part, mod, dual=dual)
        if is_bn:
            leaf_name = _BN_LEAVES[name]
            siblings = ()
            if branch is not None:
                infixes = [f".bn_list.{BRANCH_INDEX[branch]}"]
            else:
                infixes = ["", ".bn_list"]
                if dual_checkpoint and bn_branch is not None:
                    infixes.insert(0, f".bn_list.{BRANCH_INDEX[bn_branch]}")
                    other = 1 - BRANCH_INDEX[bn_branch]
                    siblings = tuple(f"{p}.bn_list.{other}.{leaf_name}" for p in prefixes)
            keys = tuple(f"{p}{i}.{leaf_name}" for i in infixes for p in prefixes)
            out.append(Entry(path, keys, "vector", shape, siblings))
            continue
        kind = "vector"
        if name == "kernel":
            kind = "conv" if len(shape) == 4 else "dense"
            if arch == "cnn" and part == "encoder" and mod == ("fc1",):
                kind = "cnn_fc1"
        torch_leaf = "weight" if name == "kernel" else name
        out.append(Entry(path, tuple(f"{p}.{torch_leaf}" for p in prefixes), kind, shape))
    return out


def _siblings(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    node = tree
    for k in path[:-1]:
        node = node[k]
    return node


def torch_shape(entry: Entry) -> tuple[int, ...]:
    """The PyTorch shape of ``entry``'s tensor."""
    s = entry.shape
    if entry.kind == "conv":
        return (s[3], s[2], s[0], s[1])
    if entry.kind in ("dense", "cnn_fc1"):
        return (s[1], s[0])
    return s


def to_torch_layout(entry: Entry, a: np.ndarray, flat_hw: tuple[int, int] | None = None) -> np.ndarray:
    """ascl_jax array -> PyTorch layout (numpy, contiguous)."""
    a = np.asarray(a)
    if entry.kind == "conv":
        a = a.transpose(3, 2, 0, 1)
    elif entry.kind == "dense":
        a = a.T
    elif entry.kind == "cnn_fc1":
        h, w = flat_hw
        n, o = a.shape
        a = a.reshape(h, w, n // (h * w), o).transpose(3, 2, 0, 1).reshape(o, n)
    return np.ascontiguousarray(a)


def from_torch_layout(entry: Entry, t: np.ndarray, flat_hw: tuple[int, int] | None = None) -> np.ndarray:
    """PyTorch-layout array -> ascl_jax layout (numpy, contiguous)."""
    t = np.asarray(t)
    if entry.kind == "conv":
        t = t.transpose(2, 3, 1, 0)
    elif entry.kind == "dense":
        t = t.T
    elif entry.kind == "cnn_fc1":
        h, w = flat_hw
        o, n = t.shape
        t = t.reshape(o, n // (h * w), h, w).transpose(2, 3, 1, 0).reshape(n, o)
    return np.ascontiguousarray(t)


def bn_prefixes(template: Mapping[str, Any], arch: str) -> list[str]:
    """The canonical PyTorch BN module names of ``template`` (one per BN, per branch for dual BN),
    i.e. the modules that carry a ``num_batches_tracked`` buffer."""
    out = []
    for e in entries(template, arch):
        if e.path[0] == "batch_stats" and e.path[-1] == "mean":
            out.append(e.key[: -len(".running_mean")])
    return out
