"""PyTorch ``state_dict`` <-> ascl_jax variables ({'params', 'batch_stats'}), per architecture.

Names and layouts: :mod:`ascl_jax.torchio.layout`. Both directions are exact (a copy with a
transpose / permutation; float32 kept), so ``from_state_dict(to_state_dict(v)) == v`` bit for bit.

- :func:`to_state_dict` (variables, model) -> ``{key: np.ndarray}``: every variable in its canonical
  PyTorch name, ``num_batches_tracked`` = 0 for every BN, and ``normalize.mean`` /
  ``normalize.std`` [C] (the model's input normalisation, applied first by the exported module,
  :mod:`ascl_jax.torchio.modules`).
- :func:`from_state_dict` (state_dict, model) -> variables of ``model``'s structure. Raises
  :class:`TorchCheckpointError` naming the first missing key (and the shape it needs), the first
  key whose shape does not fit (checkpoint shape and needed shape), or (``strict=True``) the first
  key that belongs to nothing.

``state_dict`` values may be numpy arrays or torch tensors (read with ``.numpy()``); a
``'module.'`` prefix (DataParallel) and ASCL's ``Wrapper`` prefix ``'CoreModel.'`` are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ascl_jax.config import BN_BRANCHES
from ascl_jax.torchio import layout
from ascl_jax.torchio.layout import PARTS, TorchCheckpointError


def template(model) -> dict:
    """Shapes ({'params', 'batch_stats'} of ShapeDtypeStruct) of ``model``'s variables."""
    shape = (1, *model.image_shape)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))
    return {"params": dict(shapes["params"]), "batch_stats": dict(shapes.get("batch_stats", {}))}


def cnn_flat_hw(image_shape: Sequence[int], padding: str = "auto") -> tuple[int, int]:
    """(H', W') of the CNN's last feature map (``models/cnn.py``: two blocks of two 3x3 convs
    then a 2x2 max-pool; 'VALID' convs shrink by 2, 'SAME' keep, 'auto' = VALID from 16x16 up)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if padding == "auto":
        padding = "VALID" if min(h, w) >= 16 else "SAME"
    shrink = 4 if padding == "VALID" else 0
    for _ in range(2):
        h, w = (h - shrink) // 2, (w - shrink) // 2
    return h, w


def _flat_hw(model) -> tuple[int, int] | None:
    return cnn_flat_hw(model.image_shape, model.cnn_padding) if model.arch == "cnn" else None


def _normalization(model) -> tuple[np.ndarray, np.ndarray]:
    c = model.image_shape[-1]
    mean = np.broadcast_to(np.asarray(model.mean, np.float32), (c,)).copy()
    std = np.broadcast_to(np.asarray(model.std, np.float32), (c,)).copy()
    return mean, std


def to_numpy(v: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array -> numpy array."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def clean_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes 'module.' prefixes (DataParallel / DistributedDataParallel, repeated) and ASCL's
    ``Wrapper`` prefix 'CoreModel.' from every key."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith("CoreModel."):
            k = k[len("CoreModel.") :]
        out[k] = v
    return out


def unwrap(obj: Any) -> Mapping[str, Any]:
    """The state_dict inside a loaded checkpoint object: the object itself when its values are
    tensors / arrays, else the first of ``layout.CONTAINER_KEYS`` it holds."""
    if not isinstance(obj, Mapping):
        raise TorchCheckpointError(f"a checkpoint must hold a dict (a state_dict), got {type(obj).__name__}")
    if obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj
    for k in layout.CONTAINER_KEYS:
        if isinstance(obj.get(k), Mapping):
            return unwrap(obj[k])
    raise TorchCheckpointError(
        f"the checkpoint holds no state_dict: its keys are {sorted(obj)[:12]}; expected tensors, or "
        f"a state_dict under one of {layout.CONTAINER_KEYS}"
    )


def is_dual(state_dict: Mapping[str, Any]) -> bool:
    """True when the (cleaned) state_dict holds ACL dual-BN sets (``bn_list.0`` and ``bn_list.1``)."""
    return any(".bn_list.1." in k for k in state_dict)


def _ignored(key: str, arch: str) -> bool:
    return (
        key.endswith(layout.IGNORED_SUFFIXES)
        or key in layout.IGNORED_KEYS
        or key.startswith(layout.IGNORED_PREFIXES.get(arch, ()))
    )


def _describe(model) -> str:
    return f"model.arch={model.arch!r}, model.bn={model.bn_type!r}, model.head={model.head!r}"


def check_normalization(state_dict: Mapping[str, Any], model) -> None:
    """A checkpoint's ``normalize.mean`` / ``normalize.std`` buffers (ACL, exported modules) must
    equal the model's (``model.normalization``): raises TorchCheckpointError otherwise."""
    mean, std = _normalization(model)
    for name, want in (("normalize.mean", mean), ("normalize.std", std)):
        if name in state_dict:
            got = to_numpy(state_dict[name]).astype(np.float32).reshape(-1)
            got = np.broadcast_to(got, want.shape) if got.size == 1 else got
            if got.shape != want.shape or not np.allclose(got, want, atol=1e-4):
                raise TorchCheckpointError(
                    f"checkpoint key {name!r} = {got.tolist()} differs from the model's input "
                    f"normalisation {want.tolist()}: set config model.normalization to the one the "
                    "checkpoint was trained with"
                )


def from_state_dict(
    state_dict: Mapping[str, Any],
    model,
    *,
    bn_branch: str | None = None,
    parts: Sequence[str] = PARTS,
    strict: bool = True,
) -> tuple[dict, list[str]]:
    """PyTorch state_dict -> (variables of ``model`` restricted to ``parts``, unused keys).

    model: an ``ascl_jax.models.ASCLModel`` (its arch, bn type, head, classes, image shape).
    bn_branch: for a single-BN model and a dual-BN (ACL) checkpoint, the BN set to read
    ('clean' = ``bn_list.0``, 'adv' = ``bn_list.1``); required then, ignored otherwise.
    parts: which of 'encoder', 'head', 'classifier' to read (e.g. ('encoder',) for fine-tuning from
    an ACL pre-training checkpoint, which has no classifier).
    strict: a key that maps to no variable of ``parts`` (other than ``layout``'s ignored keys) is
    an error; otherwise it is returned in the unused list.
    Returns plain dicts of float32 numpy arrays.
    """
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"parts must be a subset of {PARTS}, got {tuple(parts)}")
    if bn_branch is not None and bn_branch not in BN_BRANCHES:
        raise ValueError(f"bn_branch must be one of {BN_BRANCHES} or None, got {bn_branch!r}")
    sd = clean_keys(state_dict)
    tmpl = template(model)
    dual_ckpt = is_dual(sd)
    if dual_ckpt and model.bn_type == "single" and bn_branch is None:
        raise TorchCheckpointError(
            "the checkpoint has dual BN (ACL bn_list.0 / bn_list.1) but model.bn='single': choose the "
            "BN set with bn_branch (config init.bn_branch / eval.bn_branch: 'clean' or 'adv'), or "
            "set model.bn='dual'"
        )
    check_normalization(sd, model)
    flat_hw = _flat_hw(model)
    found = []
    for e in layout.entries(tmpl, model.arch, bn_branch=bn_branch, dual_checkpoint=dual_ckpt):
        if e.path[1] not in parts:
            continue
        key = next((k for k in e.keys if k in sd), None)
        if key is None:
            raise TorchCheckpointError(
                f"checkpoint key {e.key!r} is missing (shape {layout.torch_shape(e)}, for ascl_jax "
                f"{'/'.join(e.path)} of {_describe(model)}); the checkpoint has "
                f"{len(sd)} keys, e.g. {sorted(sd)[:6]}"
            )
        found.append((key, e))
    order = {k: i for i, k in enumerate(sd)}
    used, out = set(), {"params": {}, "batch_stats": {}}
    for key, e in sorted(found, key=lambda ke: order[ke[0]]):  # shapes checked in the file's order
        t = to_numpy(sd[key])
        want = layout.torch_shape(e)
        if tuple(t.shape) != want:
            raise TorchCheckpointError(
                f"checkpoint key {key!r} has shape {tuple(t.shape)} but {_describe(model)} needs "
                f"{want} (ascl_jax {'/'.join(e.path)} {e.shape})"
            )
        used.add(key)
        used.update(s for s in e.siblings if s in sd)
        node = out
        for k in e.path[:-1]:
            node = node.setdefault(k, {})
        node[e.path[-1]] = layout.from_torch_layout(e, t.astype(np.float32), flat_hw)
    unused = [k for k in sd if k not in used and not _ignored(k, model.arch)]
    if strict and unused:
        raise TorchCheckpointError(
            f"checkpoint key {unused[0]!r} (shape {tuple(to_numpy(sd[unused[0]]).shape)}) belongs to no "
            f"variable of {_describe(model)} (parts {tuple(parts)}); {len(unused)} such keys"
        )
    if not out["batch_stats"]:
        out["batch_stats"] = {}
    return out, unused


def to_state_dict(variables: Mapping[str, Any], model) -> dict[str, np.ndarray]:
    """ascl_jax variables of ``model`` -> PyTorch state_dict (numpy values, canonical names)."""
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    tree = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)
    flat_hw = _flat_hw(model)
    sd = {}
    for e in layout.entries(tree, model.arch):
        leaf = tree
        for k in e.path:
            leaf = leaf[k]
        sd[e.key] = layout.to_torch_layout(e, leaf.astype(np.float32), flat_hw)
    for p in layout.bn_prefixes(tree, model.arch):
        sd[f"{p}.num_batches_tracked"] = np.zeros((), np.int64)
    sd["normalize.mean"], sd["normalize.std"] = _normalization(model)
    return sd


def to_torch_state_dict(variables: Mapping[str, Any], model) -> dict:
    """:func:`to_state_dict` with torch tensors as values (imports torch)."""
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in to_state_dict(variables, model).items()}
