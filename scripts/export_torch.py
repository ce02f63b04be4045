"""Exports the latest checkpoint of an ascl_jax workdir to a PyTorch file (docs/torch.md).

  python scripts/export_torch.py --workdir runs/default --torch_out runs/default/model.pt

The file holds {'state_dict': the weights in the reference layout of model.arch
(ascl_jax.torchio.layout), 'ascl_jax': the architecture fields}; rebuild the module with
``ascl_jax.torchio.module_from_export(path)`` (an ``nn.Module`` taking NCHW images in [0, 1]) or load
the state_dict into your own module of that layout. --check compares the exported module's logits
with the JAX model's on a few test images and prints the largest difference. An existing output
file is not replaced unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--torch_out", required=True)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--check", type=int, default=8, help="test images to compare (0: none)")
    args = ap.parse_args(argv)

    from ascl_jax import data, torchio, train, workdir

    try:
        config, model, state = train.restore_run(args.workdir)
    except (workdir.WorkdirError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    try:
        spec = torchio.save_export(args.torch_out, variables, model, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"torch_out": args.torch_out, "arch": spec["arch"], "bn_dual": spec["dual"]}
    if args.check > 0:
        import torch

        images, _ = data.load_eval_arrays(config.data, "test", args.check)
        module = torchio.module_from_export(args.torch_out)
        want = np.asarray(model.apply(variables, images, train=False)["logits"])
        with torch.no_grad():
            got = module(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
        out["max_abs_logit_diff"] = float(np.max(np.abs(got - want)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
