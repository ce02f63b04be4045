"""Cross-check ascl_jax's AutoAttack against the official PyTorch AutoAttack on the same model.

  python scripts/crosscheck_autoattack.py --workdir runs/default --norms Linf,L2 --versions standard \\
      --eps 0.1 --eps_l2 0.5 --num_examples 200

The headline checkpoint of --workdir (the one its eval.checkpoint names, last or best) is exported
to a native PyTorch module (ascl_jax.torchio: the weights copied into an ``nn.Module`` of the same
architecture, no JAX call inside), which the
official AutoAttack (fra31/auto-attack, PyPI ``pyautoattack``; ``pip install 'ascl_jax[autoattack]'``)
attacks; ascl_jax's ``evaluation.autoattack_callable`` attacks the JAX model. Both get the same first
--num_examples test images. For each (norm, version) it prints both robust accuracies, the
per-example agreement of the robust / broken verdicts, and each side's wall time (ascl_jax's
includes compilation; with --warm a second, compiled run is timed too), and writes every figure
to --out (default bench/results/crosscheck_<run name>.json; an existing file is not replaced unless
--overwrite). eps: --eps for Linf (default: the run's eval.eps), --eps_l2 / --eps_l1 for L2 / L1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def official_autoattack(module, images, labels, *, norm, eps, version, seed, batch_size):
    """The official AutoAttack on a torch module: (robust bool [N], clean bool [N], seconds)."""
    import torch
    from pyautoattack import AutoAttack

    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))
    adversary = AutoAttack(module, norm=norm, eps=eps, version=version, device="cpu", seed=seed)
    t = time.perf_counter()
    out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    x_adv = out[0] if isinstance(out, tuple) else out  # pyautoattack 0.2 returns (x_adv, y_adv)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        clean = np.concatenate([module(xb).argmax(1).numpy() for xb in x.split(batch_size)]) == labels
        adv = np.concatenate([module(xb).argmax(1).numpy() for xb in x_adv.split(batch_size)]) == labels
    return adv & clean, clean, seconds


def crosscheck(
    workdir, *, norms, versions, eps, num_examples, batch_size, seed, warm, threads, partial_out=None
) -> dict:
    """Runs both AutoAttacks per (norm, version); returns the record written by main().
    partial_out: a path where the rows so far are written after each (norm, version)."""
    import jax
    import torch

    from ascl_jax import data, evaluation, torchio, train

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)  # the official per-attack lines
    config, model, state = train.restore_run(workdir)
    variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    images, labels = data.load_eval_arrays(config.data, "test", num_examples)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    module = torchio.to_module(variables, model)
    bn = config.eval.bn_branch
    predict = lambda x: model.apply(variables, x, train=False, bn=bn)["logits"]
    with torch.no_grad():
        t_logits = module(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
    j_logits = np.asarray(predict(images))
    rows = []
    for norm in norms:
        for version in versions:
            e = eps[norm]
            off_robust, off_clean, off_s = official_autoattack(
                module, images, labels, norm=norm, eps=e, version=version, seed=seed, batch_size=batch_size
            )
            t = time.perf_counter()
            res = evaluation.autoattack_callable(
                predict, images, labels, eps=e, norm=norm, version=version, seed=seed, batch_size=batch_size
            )
            jax_s = time.perf_counter() - t
            warm_s = None
            if warm:
                t = time.perf_counter()
                evaluation.autoattack_callable(
                    predict,
                    images,
                    labels,
                    eps=e,
                    norm=norm,
                    version=version,
                    seed=seed,
                    batch_size=batch_size,
                )
                warm_s = time.perf_counter() - t
            ours = np.asarray(res.robust, bool)
            n = len(labels)
            row = dict(
                norm=norm,
                version=version,
                eps=e,
                attacks=list(res.attacks),
                num_examples=n,
                clean_accuracy_official=float(off_clean.mean()),
                clean_accuracy_ascl_jax=float(np.asarray(res.clean).mean()),
                robust_accuracy_official=float(off_robust.mean()),
                robust_accuracy_ascl_jax=float(ours.mean()),
                agreement=float((ours == off_robust).mean()),
                robust_both=int((ours & off_robust).sum()),
                robust_only_official=int((off_robust & ~ours).sum()),
                robust_only_ascl_jax=int((ours & ~off_robust).sum()),
                seconds_official=off_s,
                seconds_ascl_jax=jax_s,
                seconds_ascl_jax_warm=warm_s,
                examples_per_s_official=n / off_s,
                examples_per_s_ascl_jax=n / jax_s,
                examples_per_s_ascl_jax_warm=(n / warm_s) if warm_s else None,
                broken_by_counts_ascl_jax=res.summary()["broken_by_counts"],
            )
            rows.append(row)
            if partial_out:
                with open(partial_out, "w") as f:
                    json.dump({"workdir": workdir, "partial": True, "results": rows}, f, indent=2)
            print(
                f"{norm} {version} eps={e:g} n={n}: robust accuracy official "
                f"{row['robust_accuracy_official']:.4f} ascl_jax {row['robust_accuracy_ascl_jax']:.4f}; "
                f"per-example agreement {row['agreement']:.4f}"
                f" (robust only under official: {row['robust_only_official']}, only under ascl_jax:"
                f" {row['robust_only_ascl_jax']}); time official {off_s:.1f} s, ascl_jax {jax_s:.1f} s"
                + (f" ({warm_s:.1f} s compiled)" if warm_s else ""),
                flush=True,
            )
    import pyautoattack

    return dict(
        workdir=workdir,
        run=config.name,
        arch=config.model.arch,
        dataset=config.data.name,
        seed=seed,
        batch_size=batch_size,
        max_abs_logit_diff_torch_vs_jax=float(np.max(np.abs(t_logits - j_logits))),
        machine=dict(
            platform=platform.platform(),
            cpus=os.cpu_count(),
            jax_devices=[str(d) for d in jax.devices()],
            torch=torch.__version__,
            torch_threads=threads,
            pyautoattack=getattr(pyautoattack, "__version__", "?"),
            jax=jax.__version__,
        ),
        results=rows,
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--norms", default="Linf", help="comma-separated: Linf, L2, L1")
    ap.add_argument("--versions", default="standard", help="comma-separated: standard, plus, rand")
    ap.add_argument("--eps", type=float, default=None, help="Linf radius (default: the run's eval.eps)")
    ap.add_argument("--eps_l2", type=float, default=0.5)
    ap.add_argument("--eps_l1", type=float, default=12.0)
    ap.add_argument("--num_examples", type=int, default=200)
    ap.add_argument("--batch_size", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--warm", action="store_true", help="also time a second (compiled) ascl_jax run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def main(argv=None, default_out=None) -> int:
    args = parse_args(argv)
    norms = [s for s in args.norms.split(",") if s]
    versions = [s for s in args.versions.split(",") if s]
    bad = [n for n in norms if n not in ("Linf", "L2", "L1")]
    if bad:
        print(f"error: --norms must be from Linf, L2, L1; got {bad}", file=sys.stderr)
        return 2
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        print(
            "error: the official AutoAttack is missing: pip install 'ascl_jax[autoattack]'", file=sys.stderr
        )
        return 2
    from ascl_jax import workdir as workdir_lib

    try:
        config = workdir_lib.load_config(args.workdir)
    except workdir_lib.WorkdirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or (default_out or os.path.join(ROOT, "bench", "results", "crosscheck_{run}.json")).format(
        run=config.name
    )
    if os.path.exists(out) and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite or choose --out", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    eps = {"Linf": args.eps if args.eps is not None else float(config.eval.eps), "L2": args.eps_l2}
    eps["L1"] = args.eps_l1
    record = crosscheck(
        args.workdir,
        norms=norms,
        versions=versions,
        eps=eps,
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        seed=args.seed,
        warm=args.warm,
        threads=args.threads,
        partial_out=out,
    )
    record["command"] = "python " + " ".join(
        [os.path.relpath(sys.argv[0], ROOT)] + list(argv or sys.argv[1:])
    )
    with open(out, "w") as f:  # replaces this run's own partial record
        json.dump(record, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
