"""Regenerates REPRODUCTION.md: the papers' comparisons at the scale a 2-core CPU allows.

  .venv/bin/python scripts/reproduce.py --dataset fashion_mnist   (make reproduce)
  .venv/bin/python scripts/reproduce.py --dataset fashion_mnist --report-only
  .venv/bin/python scripts/reproduce.py --dataset digits [--workdir runs/repro] [--epochs 25]

fashion_mnist (issue 15; the protocol and budget are configs/fmnist.py's): the runs of FMNIST_RUNS
(NAT, ADV x2 seeds, TRADES x2, ASCL Global / Hard / Soft, Leaked x2, ACL(DS) pre-training then TRADES
fine-tuning). Each run trains in its workdir <workdir>/<run> (default runs/fashion_mnist, gitignored;
an interrupted run resumes from its last checkpoint) and its result files (report.json, eval.json,
metrics.jsonl, plots/ and reproduce.json: the config argument and each sitting's wall time) are
copied to <results>/<run> (default results/fashion_mnist, committed; never checkpoints). A run whose
results are there is skipped, so the set can be completed over several sittings; results made with a
different config argument are refused, not overwritten. A sitting that ends by an exception, Ctrl-C or
SIGTERM (exit code 143; in training the train loop's own handler checkpoints first) is recorded with
its wall time before the process ends. Then the Fashion-MNIST section of
REPRODUCTION.md is written from the result files alone (`fmnist_report`): per run clean / PGD-20 /
mPGD / AutoAttack accuracy with 95% Wilson intervals, R-DIV, positives / negatives per anchor, the
seed spread, and a verdict on each of the papers' orderings (`verdict` states the rule).

digits: runs, on the embedded digits dataset with the small CNN (configs/default.py's setting), with one
seed and one budget: NAT, ADV, TRADES, ASCL Global / Hard / Soft / Leaked, and ACL(DS)
pre-training + TRADES fine-tuning (and TRADES from random init, ACL's RI column). Each run is an
ordinary workdir under --workdir (so a second call resumes / reuses finished runs). Then writes
the report: a table of clean, PGD-20, AA-custom (APGD-CE + APGD-T) accuracy, R-DIV and the final mean
positives / negatives per anchor, which of the papers' orderings hold here, and for every table of
the papers the GPU/TPU command, the paper's numbers and the expected time per epoch from bench/.
It writes the digits section of REPRODUCTION.md. Each section of the file sits
between its own markers and is replaced alone.
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ascl_jax.xla_cpu import flags as xla_flags  # noqa: E402

xla_flags.tune_cpu_flags()  # the XLA:CPU options `python -m ascl_jax.main` sets, before JAX computes
from ascl_jax import config  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from timing import cpu_name  # noqa: E402 (bench/timing.py: the CPU's name, shared with the bench scripts)

args = argparse.Namespace(workdir=str(ROOT / "runs" / "repro"), epochs=25, bench_json="", out="")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("fashion_mnist", "digits"), default="fashion_mnist")
    ap.add_argument("--workdir", default="", help="root of the run workdirs (default runs/<dataset>)")
    ap.add_argument(
        "--results", default="", help="fashion_mnist: results root (default results/fashion_mnist)"
    )
    ap.add_argument("--only", default="", help="fashion_mnist: comma-separated run names (default all)")
    ap.add_argument("--report-only", action="store_true", help="fashion_mnist: write the report, run nothing")
    ap.add_argument(
        "--smoke", action="store_true", help="fashion_mnist: the configs' smoke variants (wiring)"
    )
    ap.add_argument("--epochs", type=int, default=25, help="digits: epochs")
    ap.add_argument("--out", default=str(ROOT / "REPRODUCTION.md"))
    ap.add_argument("--bench-json", default="", help="digits: bench/train_step.py JSON line (optional)")
    a = ap.parse_args(argv)
    a.workdir = a.workdir or str(ROOT / "runs" / ("repro" if a.dataset == "digits" else a.dataset))
    a.results = a.results or str(ROOT / "results" / "fashion_mnist")
    return a


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


GPU_CHECK_JSON = ROOT / "bench" / "results" / "gpu_check_h200.json"


def gpu_sentence() -> str:
    """The accelerator sentence of the full-scale section: the ASCL step times of the GPU check's
    JSON (``GPU_CHECK_JSON``, bench/gpu_check.sh on one GPU) when it is there."""
    none = "No accelerator time was measured; the commands are the ones to run there."
    if not GPU_CHECK_JSON.exists():
        return none
    report = json.loads(GPU_CHECK_JSON.read_text())
    ok = [s for s in report.get("jax_step", []) if s.get("dtype") == "float32" and s.get("status") == "ok"]
    steps = {s["arch"]: s for s in ok}
    names = {"resnet20": "ResNet-20", "resnet18": "ResNet-18"}
    timed = [(names[a], steps[a]["ascl_step_ms"]) for a in names if a in steps]
    device = report.get("env", {}).get("device_kind")
    if not timed or not device:
        return none
    return (
        f"On one {device} (bench/gpu_check.sh, float32, batch 128) the same step "
        f"took {', '.join(f'{n} {ms:.1f} ms' for n, ms in timed)} "
        f"({' and '.join(f'{390 * ms / 1000:.0f} s' for _, ms in timed)} per CIFAR-10 epoch of 390 steps); "
        "nothing was trained on an accelerator."
    )


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
            "this CPU. " + gpu_sentence()
        )
        lines.append("")
    flops = {"resnet20": 1.0, "resnet18": 13.6, "wrn34_10": 160.0}
    lines += ["| table | command | paper's numbers | epochs | est. CPU min/epoch |", "|---|---|---|---|---|"]
    for title, cmd, paper, arch, epochs in PAPER_TABLES:
        est = f"{390 * step_ms * flops[arch] / 60000:.0f}" if step_ms else "–"
        lines.append(f"| {title} | `{cmd}` | {paper} | {epochs} | {est} |")
    lines[0] = "## Digits (the embedded 8x8 dataset)"
    write_section(args.out, "digits", "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


# --------------------------------------------------------------------------------------------------
# Sections of REPRODUCTION.md: each between its markers, replaced alone.

TITLE = "# Reproduction report"


def _markers(name):
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path, name, body):
    """Writes `body` as section `name` of the markdown file `path` (between its markers), keeping
    the other sections. A file without markers is one unmarked legacy digits section."""
    path = pathlib.Path(path)
    text = path.read_text() if path.exists() else ""
    sections = {}
    for other in ("fashion_mnist", "digits"):
        begin, end = _markers(other)
        if begin in text and end in text:
            sections[other] = text[text.index(begin) + len(begin) : text.index(end)].strip("\n") + "\n"
    if not sections and text.strip():  # the earlier, unmarked digits-only file
        legacy = text.replace(TITLE, "## Digits (the embedded 8x8 dataset)", 1)
        sections["digits"] = legacy.strip("\n") + "\n"
    sections[name] = body.strip("\n") + "\n"
    out = [TITLE, ""]
    for other in ("fashion_mnist", "digits"):  # Fashion-MNIST first, the digits below
        if other in sections:
            begin, end = _markers(other)
            out += [begin, sections[other].rstrip("\n"), end, ""]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(out))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST: the runs, skipped when their results exist, resumed from their checkpoints.

# run name -> (configs/fmnist.py argument, label, run whose workdir it fine-tunes or None)
# The training budget of every run, written into each run's config argument (so a results folder
# records it, and results of another budget are refused): configs/fmnist.py gives the measurements.
FMNIST_EPOCHS = 3
FMNIST_RUNS = {
    "nat_s0": (f"method=nat,seed=0,epochs={FMNIST_EPOCHS}", "NAT", None),
    "adv_s0": (f"method=adv,seed=0,epochs={FMNIST_EPOCHS}", "ADV", None),
    "adv_s1": (f"method=adv,seed=1,epochs={FMNIST_EPOCHS}", "ADV", None),
    "trades_s0": (f"method=trades,seed=0,epochs={FMNIST_EPOCHS}", "TRADES", None),
    "trades_s1": (f"method=trades,seed=1,epochs={FMNIST_EPOCHS}", "TRADES", None),
    "ascl_global_s0": (f"method=ascl_global,seed=0,epochs={FMNIST_EPOCHS}", "ASCL Global", None),
    "ascl_hard_s0": (f"method=ascl_hard,seed=0,epochs={FMNIST_EPOCHS}", "ASCL Hard", None),
    "ascl_soft_s0": (f"method=ascl_soft,seed=0,epochs={FMNIST_EPOCHS}", "ASCL Soft", None),
    "ascl_leaked_s0": (f"method=ascl_leaked,seed=0,epochs={FMNIST_EPOCHS}", "ASCL Leaked", None),
    "ascl_leaked_s1": (f"method=ascl_leaked,seed=1,epochs={FMNIST_EPOCHS}", "ASCL Leaked", None),
    "acl_ds_s0": (f"method=acl_ds,seed=0,epochs={FMNIST_EPOCHS}", "ACL(DS) pre-training", None),
    "acl_ds_trades_s0": (
        f"method=acl_ds_trades,seed=0,epochs={FMNIST_EPOCHS}",
        "ACL(DS) + TRADES",
        "acl_ds_s0",
    ),
}
RESULT_FILES = ("report.json", "eval.json", "metrics.jsonl")
RESULT_DIRS = ("plots",)
META = "reproduce.json"


def run_arg(name, workdir_root, smoke=False):
    """The configs/fmnist.py argument of run `name` (the fine-tuning's pretrained workdir added)."""
    arg, _, parent = FMNIST_RUNS[name]
    if parent:
        arg += f",pretrained={os.path.join(workdir_root, parent)}"
    return arg + (",smoke" if smoke else "")


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(run_dir):
    """Whether `run_dir` (a results or work directory) holds a finished run: report.json with the
    training keys and wall_seconds, and, for a run with an evaluation, eval.json and its accuracy."""
    rep = _read(os.path.join(run_dir, "report.json"))
    if not rep or not rep.get("steps") or "wall_seconds" not in rep:
        return False
    if rep.get("method") == "acl_pretrain":
        return True
    return "clean_accuracy" in rep and os.path.exists(os.path.join(run_dir, "eval.json"))


def copy_results(workdir, dest, meta):
    """Copies the result files of `workdir` (no checkpoints) to `dest` via a temporary folder."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for f in RESULT_FILES:
        if os.path.exists(os.path.join(workdir, f)):
            shutil.copy2(os.path.join(workdir, f), os.path.join(tmp, f))
    for d in RESULT_DIRS:
        if os.path.isdir(os.path.join(workdir, d)):
            shutil.copytree(os.path.join(workdir, d), os.path.join(tmp, d))
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _sittings(workdir):
    return (_read(os.path.join(workdir, "reproduce_sittings.json")) or {}).get("sittings", [])


def _note_source(workdir, source):
    """Records which Fashion-MNIST source (tfds / IDX files: their example orders differ) the run
    reads, at its first sitting; a later sitting whose source differs is refused (SystemExit naming
    both), since resuming on the other source would change the data mid-run."""
    os.makedirs(workdir, exist_ok=True)
    state = _read(os.path.join(workdir, "reproduce_sittings.json")) or {}
    first = state.get("data_source")
    if first is not None and first != source:
        raise SystemExit(
            f"{workdir} was started on Fashion-MNIST source {first!r}, but this sitting reads "
            f"{source!r} (tfds and the IDX files order the examples differently): make {first!r} "
            "the source again (tfds' fashion_mnist prepared in data_dir, or not, for 'idx'), or move "
            "the workdir away to start the run afresh"
        )
    if first is not None:
        return
    state["data_source"] = source
    with open(os.path.join(workdir, "reproduce_sittings.json"), "w") as f:
        json.dump(state, f, indent=2)


def _record_sitting(workdir, seconds, finished, cpu_seconds=None):
    """Appends one sitting: wall seconds, this process's CPU seconds (all threads; on a shared
    machine wall time grows with the others' load, CPU time much less), the machine's CPU (name,
    count) and 1-minute load average at the end."""
    os.makedirs(workdir, exist_ok=True)
    state = _read(os.path.join(workdir, "reproduce_sittings.json")) or {}
    sittings = _sittings(workdir) + [
        dict(
            wall_seconds=round(seconds, 1),
            cpu_seconds=None if cpu_seconds is None else round(cpu_seconds, 1),
            finished=finished,
            cpus=os.cpu_count(),
            cpu=cpu_name(),
            load_1min=round(os.getloadavg()[0], 2),
            at=time.strftime("%F %T"),
        )
    ]
    with open(os.path.join(workdir, "reproduce_sittings.json"), "w") as f:
        json.dump({**state, "sittings": sittings}, f, indent=2)


class SittingTerminated(SystemExit):
    """SIGTERM outside the train loop (setup, evaluation): ends the sitting with exit code 143."""


@contextlib.contextmanager
def _sigterm_ends_sitting():
    """SIGTERM raises SittingTerminated in the main thread, so the sitting is recorded (the caller's
    `finally`) before the process ends. The train loop replaces this handler with its own while it
    trains (`ascl_jax.train.preemption`: finish the step, checkpoint, raise `Preempted`) and puts
    it back after. Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ascl_jax.train.preemption import PREEMPTED_EXIT_CODE

    def on_sigterm(signum, frame):
        del signum, frame
        raise SittingTerminated(PREEMPTED_EXIT_CODE)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_fmnist(results_root, workdir_root, *, only=(), smoke=False, train_fn=None, source_fn=None, log=print):
    """Runs each run of FMNIST_RUNS (or `only`) whose results are missing; returns {run: status}
    with status 'skipped' (results present), 'copied' (finished in its workdir) or 'ran'.
    train_fn(config, workdir) trains + evaluates (default ascl_jax.train.run; tests pass a fake);
    source_fn(data_cfg) names the data source (default ascl_jax.data.fashion_mnist_source)."""
    if train_fn is None:
        from ascl_jax import train

        train_fn = train.run
    if source_fn is None:
        from ascl_jax import data

        source_fn = data.fashion_mnist_source
    unknown = sorted(set(only) - set(FMNIST_RUNS))
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; known: {list(FMNIST_RUNS)}")
    status = {}
    for name in FMNIST_RUNS:
        if only and name not in only:
            continue
        arg = run_arg(name, workdir_root, smoke)
        dest, wd = os.path.join(results_root, name), os.path.join(workdir_root, name)
        meta = _read(os.path.join(dest, META))
        if is_complete(dest):
            if meta is None or meta.get("config_arg") != arg:
                raise SystemExit(
                    f"{dest} holds results of config argument {(meta or {}).get('config_arg')!r}, not "
                    f"{arg!r}: move it away to rerun this run (results are never overwritten)"
                )
            status[name] = "skipped"
            log(f"{name}: results in {dest}, skipped")
            continue
        parent = FMNIST_RUNS[name][2]
        if parent and not os.path.isdir(os.path.join(workdir_root, parent, "checkpoints")):
            raise SystemExit(
                f"{name} fine-tunes {parent}'s checkpoint, which is not in "
                f"{os.path.join(workdir_root, parent)} (results keep no checkpoint): move "
                f"{os.path.join(results_root, parent)} away to rerun {parent}"
            )
        if is_complete(wd):
            status[name] = "copied"
        else:
            c = config.load("fmnist", arg)
            log(f"{name}: training in {wd} ({arg})")
            _note_source(wd, source_fn(c.data))
            t, cpu, finished = time.time(), time.process_time(), False
            try:
                with _sigterm_ends_sitting():
                    train_fn(c, wd)
                finished = True
            finally:
                _record_sitting(wd, time.time() - t, finished, time.process_time() - cpu)
            status[name] = "ran"
        sit = _sittings(wd)
        source = _read(os.path.join(wd, "reproduce_sittings.json")) or {}
        copy_results(
            wd,
            dest,
            dict(
                run=name,
                config_arg=arg,
                sittings=sit,
                wall_seconds=round(sum(x["wall_seconds"] for x in sit), 1),
                cpu_seconds=round(sum(x.get("cpu_seconds") or 0.0 for x in sit), 1),
                data_source=source.get("data_source"),
            ),
        )
        log(f"{name}: results copied to {dest}")
    return status


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST report: statistics and verdicts from the result files alone.

Z95 = 1.959963984540054  # the 97.5% standard normal quantile
ATTACK_KEYS = {"clean": None, "pgd": "pgd", "mpgd": "mpgd", "aa": "autoattack"}


def wilson(k, n, z=Z95):
    """95% Wilson score interval (lo, hi) of a proportion of k successes in n trials."""
    if n <= 0:
        raise ValueError(f"n={n}: an interval needs at least one trial")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _rob(rep, prefix):
    for k, v in (rep.get("robust_accuracy") or {}).items():
        if k.startswith(prefix):
            return k, v
    return None, None


def run_summary(run_dir):
    """One run's numbers from its result files: {'acc': {metric: (accuracy, n)}, 'rdiv', 'pos',
    'neg', 'wall_s', 'cpu_s', 'train_ips', 'eval_s', 'method', 'steps'} (absent metrics left out)."""
    rep = _read(os.path.join(run_dir, "report.json")) or {}
    ev = _read(os.path.join(run_dir, "eval.json")) or {}
    meta = _read(os.path.join(run_dir, META)) or {}
    acc = {}
    if "clean_accuracy" in rep:
        acc["clean"] = (rep["clean_accuracy"], int(ev.get("num_evaluated") or 0))
    for metric, prefix in ATTACK_KEYS.items():
        key, v = _rob(rep, prefix) if prefix else (None, None)
        if v is not None:
            acc[metric] = (v, int((ev.get("num_examples") or {}).get(key) or 0))
    return dict(
        acc=acc,
        rdiv=(rep.get("r_div") or {}).get("ratio"),
        pos=rep.get("num_positives"),
        neg=rep.get("num_negatives"),
        wall_s=meta.get("wall_seconds", rep.get("wall_seconds")),
        cpu_s=meta.get("cpu_seconds") or None,
        train_ips=rep.get("train_images_per_second"),
        eval_s=sum((ev.get("timing_s") or {}).values()) or None,
        method=rep.get("method"),
        steps=rep.get("steps"),
    )


def load_results(results_root):
    """{run: run_summary} for every complete run of FMNIST_RUNS in `results_root`."""
    return {
        name: run_summary(os.path.join(results_root, name))
        for name in FMNIST_RUNS
        if is_complete(os.path.join(results_root, name))
    }


def _by_label(results):
    out = {}
    for name, r in results.items():
        out.setdefault(FMNIST_RUNS[name][1], []).append(r)
    return out


def acc_interval(runs, metric):
    """(mean accuracy over seeds, lo, hi): lo / hi span every seed's Wilson interval, so the
    interval covers test-set sampling and the seed spread; None when no run has the metric."""
    vals = [r["acc"][metric] for r in runs if metric in r["acc"] and r["acc"][metric][1] > 0]
    if not vals:
        return None
    ivs = [wilson(round(a * n), n) for a, n in vals]
    return sum(a for a, _ in vals) / len(vals), min(lo for lo, _ in ivs), max(hi for _, hi in ivs)


def seed_delta(groups, key):
    """The largest seed-to-seed difference of `key` (rdiv, pos, neg) over the seeded methods."""
    ds = [
        max(v) - min(v)
        for runs in groups.values()
        for v in [[r[key] for r in runs if r.get(key) is not None]]
        if len(v) > 1
    ]
    return max(ds) if ds else None


def value_interval(runs, key, delta):
    """(mean, lo, hi) of a quantity without a sampling model (R-DIV, counts): the seeds' range
    widened by half the largest seed-to-seed difference `delta` on each side."""
    v = [r[key] for r in runs if r.get(key) is not None]
    if not v or delta is None:
        return None if not v else (sum(v) / len(v), None, None)
    return sum(v) / len(v), min(v) - delta / 2, max(v) + delta / 2


def verdict(a, b, op):
    """The rule: claim "A op B" (op '>' or '<') with intervals a = (value, lo, hi), b likewise.
    'holds' when the intervals are disjoint in the claimed direction, 'does not hold' when they are
    disjoint the other way, 'cannot be told apart' when they overlap; 'not measured' without both."""
    if a is None or b is None:
        return "not measured"
    if a[1] is None or b[1] is None:
        return "cannot be told apart (no seed spread measured)"
    above, below = (a, b) if op == ">" else (b, a)
    if above[1] > below[2]:
        return "holds"
    if above[2] < below[1]:
        return "does not hold"
    return "cannot be told apart"


def _ranks(v):
    """Ranks 0..n-1 of `v`, ties sharing their mean rank."""
    import numpy as np

    v = np.asarray(v, float)
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    for u in np.unique(v):
        r[v == u] = r[v == u].mean()
    return r


def spearman(x, y):
    """Spearman's rank correlation of two equal-length sequences (average ranks for ties)."""
    import numpy as np

    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def correlation_verdict(xs, ys, *, permutations=20000, seed=0):
    """(rho, one-sided permutation p for rho < 0, verdict) of the claim "lower R-DIV, higher
    robust accuracy": holds when p < 0.05, does not hold when the opposite tail's p < 0.05."""
    import numpy as np

    if len(xs) < 4:
        return None, None, "not measured"
    rho = spearman(xs, ys)
    zx, zy = (_ranks(v) - _ranks(v).mean() for v in (xs, ys))
    zx, zy = zx / np.linalg.norm(zx), zy / np.linalg.norm(zy)
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((permutations, len(zy))), axis=1)  # one permutation per row
    rhos = zy[perm] @ zx  # Pearson correlation of the ranks = Spearman's rho
    p_neg, p_pos = float(np.mean(rhos <= rho + 1e-12)), float(np.mean(rhos >= rho - 1e-12))
    v = "holds" if p_neg < 0.05 else "does not hold" if p_pos < 0.05 else "cannot be told apart"
    return rho, p_neg, v


# (section, text, A, B, quantity, op, paper's A / B)
CLAIMS = [
    (
        "ASCL Table 2",
        "Leaked-ASCL more robust than ADV (PGD)",
        "ASCL Leaked",
        "ADV",
        "pgd",
        ">",
        "53.7 / 48.1",
    ),
    (
        "ASCL Table 2",
        "Leaked-ASCL more robust than ADV (mPGD)",
        "ASCL Leaked",
        "ADV",
        "mpgd",
        ">",
        "41.0 / 36.4",
    ),
    ("ASCL Table 2", "Leaked-ASCL more robust than ADV (AA)", "ASCL Leaked", "ADV", "aa", ">", "42.0 / 36.1"),
    (
        "ASCL Table 2",
        "Leaked-ASCL more robust than TRADES (PGD)",
        "ASCL Leaked",
        "TRADES",
        "pgd",
        ">",
        "53.7 / 51.9",
    ),
    (
        "ASCL Table 2",
        "Leaked-ASCL more robust than TRADES (mPGD)",
        "ASCL Leaked",
        "TRADES",
        "mpgd",
        ">",
        "41.0 / 38.2",
    ),
    (
        "ASCL Table 2",
        "Leaked-ASCL more robust than TRADES (AA)",
        "ASCL Leaked",
        "TRADES",
        "aa",
        ">",
        "42.0 / 36.3",
    ),
    (
        "ASCL Table 2",
        "ADV more accurate (clean) than Leaked-ASCL",
        "ADV",
        "ASCL Leaked",
        "clean",
        ">",
        "78.8 / 75.5",
    ),
    (
        "ASCL Table 4",
        "Leaked more robust than Global (PGD)",
        "ASCL Leaked",
        "ASCL Global",
        "pgd",
        ">",
        "53.7 / 52.7",
    ),
    (
        "ASCL Table 4",
        "Leaked more robust than Global (mPGD)",
        "ASCL Leaked",
        "ASCL Global",
        "mpgd",
        ">",
        "41.0 / 40.4",
    ),
    (
        "ASCL Table 4",
        "Leaked more robust than Global (AA)",
        "ASCL Leaked",
        "ASCL Global",
        "aa",
        ">",
        "42.0 / 40.9",
    ),
    (
        "ASCL Table 4",
        "Hard more robust than Global (PGD)",
        "ASCL Hard",
        "ASCL Global",
        "pgd",
        ">",
        "53.1 / 52.7",
    ),
    (
        "ASCL Table 4",
        "Hard more robust than Global (AA)",
        "ASCL Hard",
        "ASCL Global",
        "aa",
        ">",
        "41.3 / 40.9",
    ),
    (
        "ASCL Table 4",
        "Soft more robust than Global (PGD)",
        "ASCL Soft",
        "ASCL Global",
        "pgd",
        ">",
        "53.4 / 52.7",
    ),
    (
        "ASCL Table 4",
        "Leaked more robust than Hard (AA)",
        "ASCL Leaked",
        "ASCL Hard",
        "aa",
        ">",
        "42.0 / 41.3",
    ),
    (
        "ASCL Table 4",
        "Leaked more robust than Soft (AA)",
        "ASCL Leaked",
        "ASCL Soft",
        "aa",
        ">",
        "42.0 / 40.4",
    ),
    (
        "ASCL Table 4",
        "Global more accurate (clean) than Leaked",
        "ASCL Global",
        "ASCL Leaked",
        "clean",
        ">",
        "76.4 / 75.5",
    ),
    (
        "ASCL Fig. 4",
        "Leaked selects fewer positives per anchor than Global",
        "ASCL Leaked",
        "ASCL Global",
        "pos",
        "<",
        "11.3 / 26.4",
    ),
    (
        "ASCL Fig. 4",
        "Leaked selects fewer negatives per anchor than Global",
        "ASCL Leaked",
        "ASCL Global",
        "neg",
        "<",
        "14.3 / 228.6",
    ),
    ("ASCL §2 (O1)", "ADV has a lower adversarial R-DIV than NAT", "ADV", "NAT", "rdiv", "<", "Fig. 2b"),
    ("ASCL §4.5", "Leaked-ASCL has a lower R-DIV than ADV", "ASCL Leaked", "ADV", "rdiv", "<", "Fig. 5"),
    (
        "ASCL §4.5",
        "Leaked-ASCL has a lower R-DIV than TRADES",
        "ASCL Leaked",
        "TRADES",
        "rdiv",
        "<",
        "Fig. 5",
    ),
    (
        "ASCL §4.5",
        "Leaked-ASCL has a lower R-DIV than Global-ASCL",
        "ASCL Leaked",
        "ASCL Global",
        "rdiv",
        "<",
        "Fig. 5",
    ),
    (
        "ACL Table 1",
        "DS + TRADES more robust than TRADES from scratch (PGD-20 RA)",
        "ACL(DS) + TRADES",
        "TRADES",
        "pgd",
        ">",
        "52.82 / 49.36",
    ),
    (
        "ACL Table 1",
        "DS + TRADES more accurate (clean TA) than TRADES from scratch",
        "ACL(DS) + TRADES",
        "TRADES",
        "clean",
        ">",
        "82.19 / 79.90",
    ),
]


def claim_rows(results):
    """[(section, text, shown A, shown B, paper, verdict)] for CLAIMS, Fig. 4's ratios and the
    R-DIV / robustness correlation."""
    groups = _by_label(results)
    deltas = {k: seed_delta(groups, k) for k in ("rdiv", "pos", "neg")}

    def interval(label, q):
        runs = groups.get(label, [])
        return acc_interval(runs, q) if q in ATTACK_KEYS else value_interval(runs, q, deltas[q])

    def show(iv, q):
        if iv is None:
            return "–"
        pct = q in ATTACK_KEYS
        f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}" if q == "rdiv" else f"{v:.2f}")
        return f(iv[0]) if iv[1] is None else f"{f(iv[0])} [{f(iv[1])}, {f(iv[2])}]"

    rows = []
    for section, text, a, b, q, op, paper in CLAIMS:
        ia, ib = interval(a, q), interval(b, q)
        rows.append((section, text, show(ia, q), show(ib, q), paper, verdict(ia, ib, op)))
    for q, paper in (("pos", "42.8%"), ("neg", "6.3%")):
        ia, ib = interval("ASCL Leaked", q), interval("ASCL Global", q)
        what = "positives" if q == "pos" else "negatives"
        if ia is None or ib is None or not ib[0]:
            rows.append(
                ("ASCL Fig. 4", f"Leaked / Global {what} ratio below 100%", "–", "–", paper, "not measured")
            )
            continue
        v = "holds" if ia[1] is not None and ia[2] < ib[1] else verdict(ia, ib, "<")
        rows.append(
            (
                "ASCL Fig. 4",
                f"Leaked / Global {'positives' if q == 'pos' else 'negatives'} ratio below 100%",
                f"{100 * ia[0] / ib[0]:.1f}%",
                "100%",
                paper,
                v,
            )
        )
    pts = [
        (r["rdiv"], r["acc"]["aa"][0])
        for r in results.values()
        if r.get("rdiv") is not None and "aa" in r["acc"]
    ]
    rho, p, v = correlation_verdict([x for x, _ in pts], [y for _, y in pts])
    shown = "–" if rho is None else f"Spearman rho {rho:.2f} over {len(pts)} runs (permutation p {p:.3f})"
    rows.append(
        ("ASCL §2 (O1)", "Lower R-DIV goes with higher AA accuracy across runs", shown, "", "Fig. 2c", v)
    )
    return rows


def _pct_ci(entry):
    if entry is None or entry[1] <= 0:
        return "–"
    a, n = entry
    lo, hi = wilson(round(a * n), n)
    return f"{100 * a:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def fmnist_report(results_root):
    """The Fashion-MNIST section of REPRODUCTION.md (markdown) from the result files alone."""
    results = load_results(results_root)
    missing = [n for n in FMNIST_RUNS if n not in results]
    c = config.load("fmnist", f"method=ascl_leaked,epochs={FMNIST_EPOCHS}")
    lines = [
        "## Fashion-MNIST (issue 15)",
        "",
        "Generated by `scripts/reproduce.py --dataset fashion_mnist` from `results/fashion_mnist/` "
        "(do not edit by hand). Protocol and budget: `configs/fmnist.py` (its docstring): the small "
        f"CNN, L-inf eps {c.attack.eps}, step {c.attack.step_size}, PGD-{c.attack.num_steps} "
        f"training, {c.optim.num_epochs} epochs of Adam for every method (ACL(DS): as many again of "
        "pre-training); clean, PGD-20 and mPGD-20 on the 10,000 test images, AutoAttack standard on "
        "the first 1,000, R-DIV of PGD-20 latents of the first 1,000. Brackets: 95% Wilson intervals "
        "from the number of test images.",
        "",
    ]
    metas = {n: _read(os.path.join(results_root, n, META)) or {} for n in results}
    sources_ = sorted({str(m.get("data_source")) for m in metas.values()})
    by_cpu = {}
    for n, m in metas.items():
        for c in sorted({x.get("cpu") or "not recorded" for x in m.get("sittings", [])} or {"not recorded"}):
            by_cpu.setdefault(c, []).append(n)
    if results:
        lines += [
            f"Fashion-MNIST read from: {', '.join(sources_)} (IDX = the original files' order).",
            "",
            "CPU of the sittings (wall and CPU minutes hold for that CPU): "
            + "; ".join(f"{c}: {', '.join(ns)}" for c, ns in sorted(by_cpu.items()))
            + ".",
            "",
        ]
    if missing:
        lines += [f"Runs not (yet) in the results: {', '.join(missing)}.", ""]
    lines += [
        "| run | method | clean | PGD-20 | mPGD | AA (1,000) | R-DIV | pos/anchor | neg/anchor "
        "| train img/s | eval min | wall min | CPU min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        g = r["acc"].get
        num = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {name} | {FMNIST_RUNS[name][1]} | {_pct_ci(g('clean'))} | {_pct_ci(g('pgd'))} | "
            f"{_pct_ci(g('mpgd'))} | {_pct_ci(g('aa'))} | {num(r['rdiv'], '.3f')} | {num(r['pos'], '.2f')} | "
            f"{num(r['neg'], '.2f')} | {num(r['train_ips'], '.0f')} | "
            f"{num(r['eval_s'] and r['eval_s'] / 60, '.1f')} | "
            f"{num(r['wall_s'] and r['wall_s'] / 60, '.1f')} | {num(r['cpu_s'] and r['cpu_s'] / 60, '.1f')} |"
        )
    groups = _by_label(results)
    lines += [
        "",
        "### Seed spread",
        "",
        "| method | quantity | seeds | spread (points) | 95% half-width (points) |",
        "|---|---|---|---|---|",
    ]
    for label, runs in groups.items():
        if len(runs) < 2:
            continue
        for q in ("clean", "pgd", "mpgd", "aa"):
            vals = [r["acc"][q] for r in runs if q in r["acc"]]
            if len(vals) < 2:
                continue
            half = max((wilson(round(a * n), n)[1] - wilson(round(a * n), n)[0]) / 2 for a, n in vals)
            seeds = " / ".join(f"{100 * a:.2f}" for a, _ in vals)
            spread = 100 * (max(a for a, _ in vals) - min(a for a, _ in vals))
            lines.append(f"| {label} | {q} | {seeds} | {spread:.2f} | {100 * half:.2f} |")
        for q in ("rdiv", "pos", "neg"):
            vals = [r[q] for r in runs if r.get(q) is not None]
            if len(vals) > 1:
                lines.append(
                    f"| {label} | {q} | {' / '.join(f'{v:.3f}' for v in vals)} | "
                    f"{max(vals) - min(vals):.3f} | – |"
                )
    lines += [
        "",
        "### The papers' orderings at this scale",
        "",
        "Rule: a method's interval spans the Wilson intervals of all its seeds (accuracies), or its "
        "seeds' range widened on each side by half the largest seed-to-seed difference of that "
        "quantity among the two-seed methods (R-DIV, counts). A claim A > B **holds** when A's "
        "interval lies wholly above B's, **does not hold** when wholly below, and **cannot be told "
        "apart** at this scale when they overlap (non-overlap of two 95% intervals is a stricter "
        "test than a 5% two-sample test). The correlation claim uses a one-sided permutation test "
        "(20,000 permutations, 5%). The papers' numbers are CIFAR-10 (ASCL: ResNet-20; ACL: "
        "ResNet-18); only the direction is compared. ACL's DS vs A2A / A2S: not run (budget).",
        "",
        "| source | claim | A | B | paper A / B | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for section, text, sa, sb, paper, v in claim_rows(results):
        lines.append(f"| {section} | {text} | {sa} | {sb} | {paper} | **{v}** |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    global args
    args = parse_args(argv)
    if args.dataset == "digits":
        write_report(run_all())
        return
    if not args.report_only:
        from ascl_jax.train import preemption

        only = tuple(filter(None, args.only.split(",")))
        try:
            run_fmnist(args.results, args.workdir, only=only, smoke=args.smoke)
        except preemption.Preempted as e:  # SIGTERM in training: checkpointed, the sitting recorded
            cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)]
            print(f"{e}\nresume with: {' '.join(cmd)}", file=sys.stderr)
            raise SystemExit(preemption.PREEMPTED_EXIT_CODE) from None
    write_section(args.out, "fashion_mnist", fmnist_report(args.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
