"""AutoAttack 'standard' examples/s: ascl_jax against the official PyTorch AutoAttack, one run.

  python bench/autoattack_vs_official.py --workdir runs/default --num_examples 200 [--norms Linf,L2]

The same model (a workdir's checkpoint; the official side attacks its native PyTorch export,
ascl_jax.torchio) and the same first --num_examples test images for both; it is
scripts/crosscheck_autoattack.py with --versions standard and --warm (ascl_jax is timed with and
without compilation; the official code has no compile step), writing
bench/results/autoattack_vs_official_<run>_<backend>.json. examples/s = examples / wall seconds of
the whole evaluation (every component, as each implementation schedules it: both skip examples
already broken). Accepts the crosscheck script's flags.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _crosscheck():
    path = os.path.join(ROOT, "scripts", "crosscheck_autoattack.py")
    spec = importlib.util.spec_from_file_location("crosscheck_autoattack", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    import jax

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--versions" not in argv:
        argv += ["--versions", "standard"]
    if "--warm" not in argv:
        argv.append("--warm")
    out = os.path.join(
        ROOT, "bench", "results", "autoattack_vs_official_{run}_" + jax.default_backend() + ".json"
    )
    return _crosscheck().main(argv, default_out=out)


if __name__ == "__main__":
    sys.exit(main())
