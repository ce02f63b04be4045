"""The README's protocol table, generated from the configs (so it cannot go stale).

  .venv/bin/python scripts/protocol_table.py            # prints the markdown table
  .venv/bin/python scripts/protocol_table.py --write    # rewrites README.md between the markers

One row per config and per group of documented `:arg` values whose protocol columns are equal (a
group shows the values it merges as `key=a|b`): training (method, arch, optimizer, lr schedule,
epochs, batch, attack) and evaluation (attacks, steps k, eps, step, examples, AutoAttack version
and subset, checkpoint rule). `--write` replaces only the lines between `START` and `END` in
README.md; it fails if either marker is missing.
"""

from __future__ import annotations

import argparse
import fractions
import itertools
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ascl_jax import config  # noqa: E402

START = "<!-- protocol-table:start -->"
END = "<!-- protocol-table:end -->"

# The documented `:arg` values of each config (rows whose columns agree are merged).
ARGS = {
    "default": {},
    "ascl_table2": dict(row=("adv", "trades", "ours"), dataset=("cifar10", "cifar100")),
    "ascl_table3": dict(arch=("resnet18", "wrn34_10")),
    "ascl_table4": dict(strategy=("global", "hard", "soft", "leaked")),
    "ascl_table5": dict(head=("identity", "p1", "p2"), strategy=("global", "leaked")),
    "ascl_table6": dict(row=("orgscl", "orgscl_ce", "adv", "adv_scl", "adv_vat", "adv_vat_scl")),
    "ascl_table7": {},
    "ascl_released": dict(arch=("resnet18", "wrn34_10")),
    "acl_pretrain": dict(variant=("s2s", "a2a", "a2s", "ds"), dataset=("cifar10", "cifar100")),
    "acl_finetune": dict(dataset=("cifar10", "cifar100"), epochs=(25, 100, 20)),
    "acl_linear": dict(mode=("standard", "adversarial")),
    "acl_semisup": dict(fraction=(0.01, 0.1)),
}
COLUMNS = (
    "config (`:arg`)",
    "method",
    "arch",
    "optimizer",
    "lr schedule",
    "epochs",
    "batch",
    "training attack",
    "eval attacks",
    "k",
    "eps",
    "step",
    "examples",
    "AA",
    "checkpoint",
)


def _num(x: float) -> str:
    """8/255 for multiples of 1/255, else the shortest decimal."""
    f = fractions.Fraction(float(x)).limit_denominator(255)
    if f.denominator == 255 and abs(float(f) - float(x)) < 1e-12:
        return f"{f.numerator}/255"
    return f"{float(x):g}"


def _schedule(o) -> str:
    if o.schedule == "constant":
        return "constant"
    if o.schedule == "warmup_cosine":
        return f"warm-up {o.warmup_epochs} ep, cosine to {o.final_lr:g}"
    if not o.decay_epochs:
        return "constant"
    steps = ", ".join(f"x{f:g} from ep {e}" for e, f in zip(o.decay_epochs, o.decay_factors))
    return steps


def _attack(c) -> str:
    a = c.attack
    if c.method in ("nat", "supcon") or (c.method == "linear_eval" and c.init.linear_mode == "standard"):
        return "none"
    start = "x+0.001N" if a.init == "normal" else "U(-eps,eps)"
    clip = "clipped" if a.clip_start else "unclipped"
    return f"PGD-{a.num_steps} (eps {_num(a.eps)}, step {_num(a.step_size)}), BN {a.bn_mode}, {start} {clip}"


def _eval_steps(e) -> str:
    k = []
    if "pgd" in e.attacks:
        k.append(f"PGD-{e.pgd_steps}")
    if "mpgd" in e.attacks:
        k.append(f"mPGD-{e.mpgd_steps}")
    return ", ".join(k) or "—"


def _examples(c) -> str:
    e, d = c.eval, c.data
    n = "all test" if e.num_examples <= 0 else f"first {e.num_examples} test"
    if "autoattack" in e.attacks and e.autoattack != "none":
        aa = "all" if e.autoattack_examples >= 10_000 else f"first {e.autoattack_examples}"
        n += f"; AA {aa}"
    return n + (" (CIFAR order)" if d.get("test_order", "tfds") == "original" else "")


def _checkpoint(c) -> str:
    e, d = c.eval, c.data
    if e.get("checkpoint", "last") == "last":
        return "last"
    where = "test" if e.select_on == "test" else f"val ({d.val_examples} held out)"
    metric = "PGD robust" if e.get("select_metric", "robust") == "robust" else "natural"
    return f"best {metric} acc. on {where}, every {e.select_every} ep ({e.select_examples} ex.)"


def _aa_version(e) -> str:
    if e.autoattack == "custom":
        return "custom: " + " + ".join(e.get("autoattack_attacks", ()))
    return e.autoattack


def _optimizer(o) -> str:
    wd = f", wd {o.weight_decay:g}" if o.weight_decay else ""
    return f"{o.name} {o.learning_rate:g}{wd}"


def columns(c) -> tuple[str, ...]:
    """The protocol columns (after the first) of one run config."""
    e = c.eval
    attacks = [a for a in e.attacks if not (a == "autoattack" and e.autoattack == "none")]
    return (
        c.method,
        c.model.arch,
        _optimizer(c.optim),
        _schedule(c.optim),
        str(c.optim.num_epochs),
        str(c.data.batch_size),
        _attack(c),
        ", ".join(attacks) or "—",
        _eval_steps(e),
        _num(e.eps) if set(attacks) - {"clean"} else "—",
        _num(e.step_size) if ("pgd" in attacks or "mpgd" in attacks) else "—",
        _examples(c) if attacks else "—",
        _aa_version(e) if "autoattack" in attacks else "—",
        _checkpoint(c) if attacks else e.get("checkpoint", "last"),
    )


def _runs(c) -> list[tuple[str, object]]:
    """(stage label, run config): the stages of a multi-stage config, else the config itself."""
    if "stages" in c:
        order = ("pretrain", "teacher", "student")
        names = sorted(c.stages, key=lambda n: order.index(n) if n in order else len(order))
        return [(f" {name}", c.stages[name]) for name in names]
    return [("", c)]


def _label(name: str, args: list[dict]) -> str:
    keys = list(args[0])
    parts = []
    for k in keys:
        values = list(dict.fromkeys(str(a[k]) for a in args))
        parts.append(f"{k}={'|'.join(values)}")
    return f"`{name}`" + (f" `{','.join(parts)}`" if parts else "")


def rows() -> list[tuple[str, ...]]:
    """Every table row: the label, then `columns` (documented args merged where columns agree)."""
    out = []
    for name, axes in ARGS.items():
        combos = [dict(zip(axes, v)) for v in itertools.product(*axes.values())] or [{}]
        groups: dict[tuple, list[dict]] = {}
        for a in combos:
            arg = ",".join(f"{k}={v}" for k, v in a.items())
            for stage, run in _runs(config.load(name, arg)):
                groups.setdefault((stage, columns(run)), []).append(a)
        for (stage, cols), args in groups.items():
            out.append((_label(name, args) + (f" ({stage.strip()})" if stage else ""), *cols))
    return out


def table() -> str:
    """The markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows():
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |")
    return "\n".join(lines)


def block(text: str) -> str:
    """The lines strictly between the markers of `text`; ValueError when a marker is missing."""
    lines = text.split("\n")
    if START not in lines or END not in lines or lines.index(START) > lines.index(END):
        raise ValueError(f"README.md needs the marker lines {START!r} and {END!r}, in that order")
    return "\n".join(lines[lines.index(START) + 1 : lines.index(END)])


def rewrite(text: str, new_table: str) -> str:
    """`text` with the lines between the markers replaced by `new_table`; the rest unchanged."""
    block(text)
    lines = text.split("\n")
    i, j = lines.index(START), lines.index(END)
    return "\n".join(lines[: i + 1] + new_table.split("\n") + lines[j:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite README.md between the markers")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    args = ap.parse_args()
    t = table()
    if not args.write:
        print(t)
        return
    path = pathlib.Path(args.readme)
    path.write_text(rewrite(path.read_text(), t))


if __name__ == "__main__":
    main()
