"""Regenerates REPRODUCTION.md: the papers' comparisons at the scale a 2-core CPU allows.

  .venv/bin/python scripts/reproduce.py [--workdir runs/repro] [--epochs 25] [--out REPRODUCTION.md]

Runs, on the embedded digits dataset with the small CNN (configs/default.py's setting), with one
seed and one budget: NAT, ADV, TRADES, ASCL Global / Hard / Soft / Leaked, and ACL(DS)
pre-training + TRADES fine-tuning (and TRADES from random init, ACL's RI column). Each run is an
ordinary workdir under --workdir (so a second call resumes / reuses finished runs). Then writes
the report: a table of clean, PGD-20, AA-custom (APGD-CE + APGD-T) accuracy, R-DIV and the final mean
positives / negatives per anchor, which of the papers' orderings hold here, and for every table of
the papers the GPU/TPU command, the paper's numbers and the expected time per epoch from bench/.
"""

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ascl_jax import config  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--workdir", default=str(ROOT / "runs" / "repro"))
ap.add_argument("--epochs", type=int, default=25)
ap.add_argument("--out", default=str(ROOT / "REPRODUCTION.md"))
ap.add_argument("--bench-json", default="", help="bench/train_step.py JSON line (optional)")
args = ap.parse_args()


def digits_base(name, method):
    c = config.load("default", "")
    c.name = f"repro:{name}"
    c.method = method
    c.optim.num_epochs = args.epochs
    c.optim.decay_epochs = (int(args.epochs * 0.75),)
    c.eval.attacks = ("clean", "pgd", "autoattack")
    c.eval.sanity = False
    c.eval.eps_sweep = ()
    c.analysis.enabled = True
    c.analysis.tsne_points = 200
    c.progress_bar = False
    return c


def runs():
    out = {}
    c = digits_base("nat", "nat")
    out["NAT"] = c
    c = digits_base("adv", "adv")
    c.loss.nat_ce_weight = 0.0
    out["ADV"] = c
    c = digits_base("trades", "trades")
    c.attack.init, c.attack.bn_mode = "normal", "eval"
    out["TRADES"] = c
    for s in ("global", "hard", "soft", "leaked"):
        c = digits_base(f"ascl_{s}", "ascl")
        c.loss.strategy = s
        out[f"ASCL {s.capitalize()}"] = c
    # ACL(DS): pre-training (dual BN, NT-Xent, PGD-5 on the contrastive loss), then TRADES
    # fine-tuning from the adversarial BN set; and TRADES from random init (ACL's RI column).
    c = digits_base("acl_ds_pretrain", "acl_pretrain")
    c.data.num_views, c.model.bn, c.model.head = 2, "dual", "acl_mlp"
    c.loss.acl_variant = "ds"
    c.attack.update(dict(num_steps=5, bn_mode="eval", clip_start=False))
    c.optim.update(dict(name="adam", learning_rate=1e-3))
    c.eval.attacks, c.analysis.enabled = (), False
    out["ACL(DS) pretrain"] = c
    c = digits_base("acl_ds_finetune", "trades_finetune")
    c.attack.init, c.attack.bn_mode = "normal", "eval"
    c.init.update(dict(workdir=os.path.join(args.workdir, "acl_ds_pretrain"), bn_branch="adv"))
    out["ACL(DS) + TRADES"] = c
    return out


def run_all():
    from ascl_jax import train

    reports = {}
    for label, c in runs().items():
        wd = os.path.join(args.workdir, c.name.split(":")[1])
        t = time.time()
        prev = os.path.join(wd, "report.json")
        if (
            os.path.exists(prev)
            and json.load(open(prev)).get("steps")
            and "wall_seconds" in json.load(open(prev))
        ):
            reports[label] = json.load(open(prev))
            print(f"{label}: reused {wd}", flush=True)
            continue
        reports[label] = train.run(c, wd)
        print(f"{label}: {time.time() - t:.0f} s", flush=True)
    return reports


def fmt(v, pct=True):
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def rob(r, name):
    ra = r.get("robust_accuracy") or {}
    for k, v in ra.items():
        if k.startswith(name):
            return v
    return None


def orderings(rep):
    """The papers' orderings, checked on this run."""
    g = lambda k, f: f(rep[k]) if k in rep else None  # noqa: E731
    pgd = lambda k: g(k, lambda r: rob(r, "pgd"))  # noqa: E731
    aa = lambda k: g(k, lambda r: rob(r, "autoattack"))  # noqa: E731
    rdiv = lambda k: g(k, lambda r: (r.get("r_div") or {}).get("ratio"))  # noqa: E731
    pos = lambda k: g(k, lambda r: r.get("num_positives"))  # noqa: E731
    neg = lambda k: g(k, lambda r: r.get("num_negatives"))  # noqa: E731
    checks = [
        ("ASCL Table 2: Leaked-ASCL more robust (PGD) than ADV", pgd("ASCL Leaked"), ">", pgd("ADV")),
        ("ASCL Table 2: Leaked-ASCL more robust (AA) than ADV", aa("ASCL Leaked"), ">", aa("ADV")),
        ("ASCL Table 2: Leaked-ASCL more robust (AA) than TRADES", aa("ASCL Leaked"), ">", aa("TRADES")),
        ("ASCL Table 4: Leaked >= Global under AA", aa("ASCL Leaked"), ">=", aa("ASCL Global")),
        ("ASCL Table 4: Hard >= Global under AA", aa("ASCL Hard"), ">=", aa("ASCL Global")),
        ("ASCL §2: Leaked-ASCL has a lower R-DIV than ADV", rdiv("ASCL Leaked"), "<", rdiv("ADV")),
        ("ASCL §2: ADV has a lower R-DIV than NAT", rdiv("ADV"), "<", rdiv("NAT")),
        (
            "ASCL Fig. 4: Leaked selects fewer positives than Global",
            pos("ASCL Leaked"),
            "<",
            pos("ASCL Global"),
        ),
        (
            "ASCL Fig. 4: Leaked selects far fewer negatives than Global",
            neg("ASCL Leaked"),
            "<",
            neg("ASCL Global"),
        ),
        (
            "ACL Table 3: ACL(DS)+TRADES more robust (PGD) than TRADES from random init",
            pgd("ACL(DS) + TRADES"),
            ">",
            pgd("TRADES"),
        ),
    ]
    rows = []
    for text, a, op, b in checks:
        if a is None or b is None:
            verdict = "not measured"
        else:
            ok = {">": a > b, ">=": a >= b, "<": a < b}[op]
            verdict = "holds" if ok else "does not hold"
        rows.append((text, a, op, b, verdict))
    return rows


PAPER_TABLES = [
    (
        "ASCL Table 2 (CIFAR-10/100, ResNet-20)",
        "configs/ascl_table2.py:row=ours,dataset=cifar10",
        "rows adv / trades / ours; nat/PGD/mPGD/AA CIFAR-10: ADV 78.8/48.1/36.4/36.1, "
        "TRADES 76.1/51.9/38.2/36.3, "
        "ours 75.5/53.7/41.0/42.0; CIFAR-100 ours 59.0/42.5/31.1/31.9",
        "resnet20",
        200,
    ),
    (
        "ASCL Table 3 Ours* (CIFAR-10)",
        "configs/ascl_table3.py:arch=wrn34_10",
        "nat/AA: WRN-34-10 87.70/52.80, ResNet-18 85.02/50.31",
        "wrn34_10",
        200,
    ),
    (
        "ASCL Table 4 (selection strategies)",
        "configs/ascl_table4.py:strategy=hard",
        "nat/PGD/mPGD/AA: Global 76.4/52.7/40.4/40.9, Hard 75.5/53.1/41.0/41.3, Soft 75.5/53.4/40.6/40.4, "
        "Leaked 75.5/53.7/41.0/42.0",
        "resnet20",
        200,
    ),
    (
        "ASCL Table 5 (projection heads)",
        "configs/ascl_table5.py:head=p1,strategy=leaked",
        "nat: Global 76.4/77.3/76.6, Leaked 75.5/76.5/75.7 (none/p1/p2)",
        "resnet20",
        200,
    ),
    (
        "ASCL Table 6 (components)",
        "configs/ascl_table6.py:row=adv_vat_scl,arch=resnet18",
        "ResNet-18 ADV+SCL 85.02 nat / 50.31 AA (= Table 3)",
        "resnet18",
        200,
    ),
    (
        "ASCL Table 7 (loss weights)",
        "configs/ascl_table7.py:scl=1.0,vat=2.0",
        "see the paper",
        "resnet20",
        200,
    ),
    (
        "ASCL released setting",
        "configs/ascl_released.py:arch=resnet18",
        "RobustBench-style run",
        "resnet18",
        120,
    ),
    (
        "ACL Tables 1/3/4 (pre-train, then fine-tune)",
        "configs/acl_pretrain.py:variant=ds  then  configs/acl_finetune.py:pretrained=DIR,branch=adv",
        "TA/RA CIFAR-10: RI 79.90/49.36, S2S 81.57/49.97, A2A 78.68/50.12, A2S 80.82/52.11, DS 82.19/52.82",
        "resnet18",
        1000,
    ),
    (
        "ACL Table 5 (linear evaluation)",
        "configs/acl_linear.py:pretrained=DIR,branch=adv,mode=adversarial",
        "TA/RA: standard bn 91.02/0.20, bn_adv 79.76/30.31; adversarial bn 82.63/0.28, bn_adv 74.22/44.22",
        "resnet18",
        25,
    ),
    (
        "ACL Table 2 (semi-supervised)",
        "configs/acl_semisup.py:fraction=0.01",
        "TA/RA: 10% labels 76.66/51.09, 1% labels 75.66/50.67",
        "resnet18",
        130,
    ),
]


def write_report(reports):
    from ascl_jax import data

    spe = data.steps_per_epoch(digits_base("ascl_leaked", "ascl").data)
    lines = [
        "# Reproduction report",
        "",
        "Generated by `scripts/reproduce.py` (do not edit by hand). Scale: the embedded digits "
        "dataset (sklearn, 1437 train / 360 test 8x8 images), the small CNN of `configs/default.py`, "
        f"seed 0, {args.epochs} epochs of {spe} steps (the last batch of an epoch kept), "
        "PGD-10 training at eps 0.1 (step 0.025); evaluation "
        "on the 360 test images: PGD-20 and AA-custom (APGD-CE + APGD-T) at eps 0.1; R-DIV on the "
        "first 360 test images (PGD-20 latents). These are small-scale checks of the papers' orderings, "
        "not their numbers.",
        "",
        "| run | clean | PGD-20 | AA-custom | R-DIV | positives/anchor | negatives/anchor | train img/s "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in reports.items():
        rd = (r.get("r_div") or {}).get("ratio")
        lines.append(
            f"| {label} | {fmt(r.get('clean_accuracy'))} | {fmt(rob(r, 'pgd'))} | "
            f"{fmt(rob(r, 'autoattack'))} | {fmt(rd, False)} | "
            f"{fmt(r.get('num_positives'), False)} | {fmt(r.get('num_negatives'), False)} | "
            f"{r.get('train_images_per_second') or 0:.0f} | {r.get('wall_seconds') or 0:.0f} |"
        )
    lines += [
        "",
        "## The papers' orderings at this scale",
        "",
        "| claim | this run | verdict |",
        "|---|---|---|",
    ]
    for text, a, op, b, verdict in orderings(reports):
        shown = "–" if a is None or b is None else f"{a:.4g} {op} {b:.4g}?"
        lines.append(f"| {text} | {shown} | **{verdict}** |")
    bench = {}
    if args.bench_json and os.path.exists(args.bench_json):
        bench = json.load(open(args.bench_json))
    step_ms = (bench.get("jax") or {}).get("ascl_step_ms")
    lines += [
        "",
        "## Full-scale commands (GPU / TPU)",
        "",
        "Each command runs one row: `python -m ascl_jax.main --config <config> --workdir DIR` "
        "(or `launch/tpu_pod.sh TPU ZONE <config> gs://.../DIR` on a pod). CIFAR needs "
        "`tfds build cifar10` (cifar100) once with network access.",
        "",
    ]
    if step_ms:
        lines.append(
            f"Measured here (bench/train_step.py, 2 CPU cores): ResNet-20 ASCL PGD-10 step "
            f"{step_ms:.0f} ms at batch 128, i.e. {390 * step_ms / 60000:.0f} min per CIFAR-10 epoch "
            "on this CPU. The last column scales that measurement by the architecture's "
            "FLOPs relative to ResNet-20 (ResNet-18 x13.6, WRN-34-10 x160): an estimate for "
            "this CPU. No GPU or TPU was available to this project's sessions, so accelerator "
            "times are not given; the commands are the ones to run there."
        )
        lines.append("")
    flops = {"resnet20": 1.0, "resnet18": 13.6, "wrn34_10": 160.0}
    lines += ["| table | command | paper's numbers | epochs | est. CPU min/epoch |", "|---|---|---|---|---|"]
    for title, cmd, paper, arch, epochs in PAPER_TABLES:
        est = f"{390 * step_ms * flops[arch] / 60000:.0f}" if step_ms else "–"
        lines.append(f"| {title} | `{cmd}` | {paper} | {epochs} | {est} |")
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    write_report(run_all())
