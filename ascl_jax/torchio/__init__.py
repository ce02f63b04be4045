"""PyTorch weights in and out (docs/torch.md). torch is the optional extra ``ascl_jax[torch]``,
imported only by the functions that need it.

- ``from_state_dict(state_dict, model, *, bn_branch=None, parts=PARTS, strict=True)`` ->
  (variables, unused keys); ``to_state_dict(variables, model)`` -> {key: np.ndarray};
  ``to_torch_state_dict`` (torch tensors). Names and layouts: :mod:`ascl_jax.torchio.layout`.
- ``read_checkpoint(path)`` -> state_dict of a ``.pt`` / ``.pth`` file (a state_dict, or a dict
  holding one under 'state_dict', 'model', ...); ``load_variables(path, model, ...)`` = read +
  ``from_state_dict``.
- ``build_module(model, *, wrn_depth=34, wrn_widen=10)`` -> the ``torch.nn.Module`` of ``model``'s
  architecture (:mod:`ascl_jax.torchio.modules`); ``to_module(variables, model)`` -> that module
  with the variables loaded, in eval mode.
- ``save_export(path, variables, model)``: a file holding {'state_dict', 'ascl_jax': the
  architecture fields build_module needs}; ``module_from_export(path)`` rebuilds the module.
- ``TorchCheckpointError`` (a ValueError): a checkpoint that does not fit the architecture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ascl_jax.torchio.convert import (
    clean_keys,
    cnn_flat_hw,
    from_state_dict,
    is_dual,
    template,
    to_state_dict,
    to_torch_state_dict,
    unwrap,
)
from ascl_jax.torchio.layout import PARTS, TorchCheckpointError

EXPORT_FORMAT = "ascl_jax.torchio/1"


def module_spec(model) -> dict:
    """The architecture fields of an ``ASCLModel`` that :func:`build_module` needs (JSON-able)."""
    padding = model.cnn_padding
    if model.arch == "cnn" and padding == "auto":
        padding = "VALID" if min(model.image_shape[:2]) >= 16 else "SAME"
    c = model.image_shape[-1]
    mean = [float(v) for v in model.mean] * (c if len(model.mean) == 1 else 1)
    std = [float(v) for v in model.std] * (c if len(model.std) == 1 else 1)
    return dict(
        arch=model.arch,
        num_classes=int(model.num_classes),
        channels=int(c),
        image_shape=[int(d) for d in model.image_shape],
        head=model.head,
        proj_dim=int(model.proj_dim),
        proj_hidden=int(model.proj_hidden),
        mlp_dim=model.mlp_dim,
        mlp_layers=int(model.mlp_layers),
        dual=model.bn_type == "dual",
        momentum=1.0 - float(model.bn_momentum),
        mean=mean,
        std=std,
        cnn_padding=padding,
    )


def build_module(model, *, wrn_depth: int = 34, wrn_widen: int = 10):
    """A fresh ``torch.nn.Module`` of ``model``'s architecture (random PyTorch init), whose
    state_dict keys are :func:`to_state_dict`'s. ``model``: an ``ASCLModel`` or a
    :func:`module_spec` dict. ``wrn_depth`` / ``wrn_widen``: the WideResNet's depth and width."""
    from ascl_jax.torchio import modules

    spec = dict(model) if isinstance(model, Mapping) else module_spec(model)
    flat = cnn_flat_hw(spec["image_shape"], spec["cnn_padding"]) if spec["arch"] == "cnn" else None
    return modules.build(spec, flat_hw=flat, wrn_depth=wrn_depth, wrn_widen=wrn_widen)


def to_module(variables: Mapping[str, Any], model, **kw):
    """``build_module(model, **kw)`` with ``variables`` loaded (strict), in eval mode."""
    module = build_module(model, **kw)
    module.load_state_dict(to_torch_state_dict(variables, model), strict=True)
    return module.eval()


def read_checkpoint(path: str) -> dict:
    """The state_dict (keys cleaned of 'module.' / 'CoreModel.') of a PyTorch checkpoint file (a
    local path or a gs:// / s3:// URL, read through etils.epath).

    Loaded with ``torch.load(weights_only=True)`` (tensors and plain containers only; no code is
    run). Raises FileNotFoundError, or TorchCheckpointError when the file holds no state_dict."""
    import torch
    from etils import epath

    p = epath.Path(path)  # a local path, or a gs:// / s3:// URL (fsspec)
    if not p.is_file():
        raise FileNotFoundError(f"torch checkpoint {path!r} does not exist")
    try:
        with p.open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError subclasses
        raise TorchCheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); re-save its state_dict with torch.save"
        ) from e
    return clean_keys(unwrap(obj))


def load_variables(path: str, model, **kw) -> tuple[dict, list[str]]:
    """``from_state_dict(read_checkpoint(path), model, **kw)``."""
    return from_state_dict(read_checkpoint(path), model, **kw)


def save_export(path: str, variables: Mapping[str, Any], model, *, overwrite: bool = False) -> dict:
    """Writes ``{'state_dict': to_torch_state_dict(...), 'ascl_jax': module_spec(model) +
    {'format'}}`` to ``path`` with ``torch.save``; refuses to replace an existing file unless
    ``overwrite``. Returns the spec written."""
    import torch

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output file or pass overwrite")
    spec = dict(module_spec(model), format=EXPORT_FORMAT)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state_dict": to_torch_state_dict(variables, model), "ascl_jax": spec}, path)
    return spec


def module_from_export(path: str, **kw):
    """The eval-mode ``nn.Module`` of a :func:`save_export` file, weights loaded (strict)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or obj.get("ascl_jax", {}).get("format") != EXPORT_FORMAT:
        raise TorchCheckpointError(f"{path} is not an ascl_jax export ({EXPORT_FORMAT})")
    module = build_module(obj["ascl_jax"], **kw)
    module.load_state_dict(obj["state_dict"], strict=True)
    return module.eval()


__all__ = [
    "EXPORT_FORMAT",
    "PARTS",
    "TorchCheckpointError",
    "build_module",
    "clean_keys",
    "cnn_flat_hw",
    "from_state_dict",
    "is_dual",
    "load_variables",
    "module_from_export",
    "module_spec",
    "read_checkpoint",
    "save_export",
    "template",
    "to_module",
    "to_state_dict",
    "to_torch_state_dict",
    "unwrap",
]
