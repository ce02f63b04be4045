"""The multi-host path: every mode run as 2 local processes x 4 CPU devices joined by
jax.distributed (localhost coordinator, launch/local_multiprocess.sh) gives the report numbers of
one process with 8 devices reading the same two input streams (config.input_processes=2).

One chain of CLI commands (launch/run_chain.py) covers every mode in one launch (digits, tiny
model, 2 steps, one-step attacks): training of each method family (ascl with clean/PGD evaluation,
adv, supcon; nat as the semi-supervised teacher, TRADES as the ACL fine-tuning), --mode=evaluate
(clean, mPGD, AutoAttack-fast), --mode=analyze (R-DIV, t-SNE, plots), the semi-supervised routine
(ACL(DS) pre-training, teacher, pseudo-labels, student), then TRADES fine-tuning and linear
evaluation from that pre-training. The 2-process chain and its 1-process reference run
concurrently.

Tolerance: both runs execute the same SPMD programs on 8 devices over the same global batches;
the cross-device sums (batch-norm statistics, losses, gradients) run in a different order (gloo
between the processes, XLA's in-process all-reduce in one process), so float32 results differ in
their last bits, and more where the sign() of a near-zero PGD gradient or LARS amplifies them
(measured: 1e-7 relative for ASCL / AT / SupCon; for ACL's pre-training, whose adversarial view is
a sign-PGD on the NT-Xent, 2e-5 on an Intel Xeon and 9.2e-4 (grad_norm; loss 2.7e-4) on an AMD EPYC;
the same spread as between two one-process runs that differ only in the collective
implementation). Float metrics, R-DIV and pseudo-labels agree to rtol 2e-4 (atol 1e-6), the
training curve of ACL's pre-training to rtol 2e-3; accuracies and the per-example evaluation
exactly.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import local_processes
import numpy as np

from ascl_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = [
    "--config.data.name=digits",
    "--config.model.normalization=digits",
    "--config.data.num_train=-1",
    "--config.data.num_test=-1",
    "--config.data.crop_padding=1",
    "--config.data.flip=False",
]
# every command: 2 input streams, 2 steps, one-step attacks, no sanity checks
SHORT = ["--config.num_train_steps=2", "--config.attack.num_steps=1", "--config.eval.pgd_steps=1"]
COMMON = ["--config.input_processes=2", "--config.eval.sanity=False"]
CHEAP_EVAL = ["--config.eval.attacks=('clean', 'pgd')", "--config.analysis.enabled=False"]
# report keys that are timings or paths, not numbers of the run
UNCOMPARED = {"wall_seconds", "train_images_per_second", "timing_s", "stages", "plots", "config"}


def _train(name, config, *extra, eval_=CHEAP_EVAL):
    return [
        "--mode=train",
        f"--config={config}",
        f"--workdir={{root}}/{name}",
        *COMMON,
        *SHORT,
        *eval_,
        *extra,
    ]


def _semisup():
    out = ["--mode=train", "--config=configs/acl_semisup.py:smoke", "--workdir={root}/semi"]
    for s in ("pretrain", "teacher", "student"):
        out += [f"--config.stages.{s}.{o[len('--config.') :]}" for o in COMMON + SHORT]
    out.append("--config.stages.student.eval.attacks=('clean', 'pgd')")
    return out


PRE = "--config.init.workdir={root}/semi/1_pretrain"  # the semi-supervised routine's ACL pre-training
CHAIN = [
    _train("ascl", "configs/default.py:smoke", "--config.data.batch_size=32"),
    [
        "--mode=evaluate",
        "--config=configs/default.py:smoke",
        "--workdir={root}/ascl",
        *COMMON,
        "--config.eval.attacks=('clean', 'mpgd', 'autoattack')",
        "--config.eval.mpgd_steps=1",
        "--config.analysis.enabled=False",
    ],
    ["--mode=analyze", "--workdir={root}/ascl"],  # R-DIV, t-SNE, the plots
    _train("adv", "configs/default.py:smoke", "--config.method=adv"),
    _train(
        "supcon",
        "configs/ascl_table6.py:row=orgscl,smoke",
        *DIGITS,
        eval_=["--config.eval.attacks=('clean',)"],
    ),
    _semisup(),  # ACL pre-training (DS), the nat teacher, pseudo-labels, the student
    _train("acl_ft", "configs/acl_finetune.py:smoke", *DIGITS, PRE),
    _train("acl_lin", "configs/acl_linear.py:mode=adversarial,smoke", *DIGITS, PRE),
]


def _launch_chain(tmp_path):
    """Starts the 2-process chain and its 1-process reference; returns their (process, root).
    Each run keeps a persistent compilation cache (locked, shared by its processes), so a program
    that several commands of the chain compile alike (e.g. the same model's evaluation) compiles
    once per run."""
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(CHAIN))
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mp, sp = tmp_path / "mp", tmp_path / "sp"
    procs = [
        local_processes.launch(
            2, 4, chain, mp, env=dict(os.environ, **local_processes.cache_env(tmp_path / "cache_mp")), **kw
        ),
        subprocess.Popen(
            [sys.executable, "-m", "launch.run_chain", "--config", chain, "--workdir", sp],
            cwd=ROOT,
            env=dict(
                os.environ,
                **local_processes.cache_env(tmp_path / "cache_sp"),
                PYTHONPATH=str(ROOT),
                XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {local_processes.DEVICE_COUNT_FLAG}8",
                JAX_PLATFORMS="cpu",
            ),
            **kw,
        ),
    ]
    return list(zip(procs, (mp, sp)))


def _numbers(tree, prefix=""):
    """{dotted key: float} of the numeric leaves of a report (timings and paths left out)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k not in UNCOMPARED:
                out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix[:-1]] = float(tree)
    return out


def _metrics(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _close(key, a, b):
    """Accuracies (counts over the same examples) exactly, other floats to RTOL / ATOL."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if "accuracy" in key:
        return a == b
    return abs(a - b) <= ATOL + RTOL * abs(b)


RTOL, ATOL = 2e-4, 1e-6
# metrics.jsonl of ACL's pre-training (module doc: sign-PGD on the NT-Xent amplifies the last bits)
CURVE_RTOL = {"semi/1_pretrain": 2e-3}


def test_every_mode_two_processes_equal_one(tmp_path):
    runs = _launch_chain(tmp_path)
    for proc, root in runs:
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, f"{root.name}:\n{out[-4000:]}"
    (mp, sp) = (root for _, root in runs)
    a, b = (json.loads((r / "chain.json").read_text()) for r in (mp, sp))
    assert len(a) == len(b) == len(CHAIN)
    bad = []
    for ja, jb in zip(a, b):
        cmd = " ".join(ja["argv"][:3])
        na, nb = _numbers(ja["report"]), _numbers(jb["report"])
        assert na.keys() == nb.keys(), (cmd, sorted(na.keys() ^ nb.keys()))
        assert na, cmd
        bad += [f"{cmd}: {k} {na[k]!r} != {nb[k]!r}" for k in na if not _close(k, na[k], nb[k])]
    assert not bad, "\n".join(bad)

    # what each mode must have produced
    assert a[0]["report"]["steps"] == 2 and set(a[0]["report"]["robust_accuracy"]) == {"pgd1"}
    assert set(a[1]["report"]["robust_accuracy"]) == {"mpgd", "autoattack-custom"}  # smoke: a custom list
    ana = a[2]["report"]["analysis"]
    assert ana["errors"] == {} and {"tsne", "rdiv_vs_robust_accuracy"} <= set(ana["plots"]), ana
    assert math.isfinite(a[2]["report"]["r_div"]["ratio"])
    assert a[5]["report"]["method"] == "semi_supervised"
    assert {"clean_accuracy", "robust_accuracy"} <= set(a[-1]["report"])
    for name in os.listdir(sp / "ascl/plots"):
        assert (mp / "ascl/plots" / name).stat().st_size > 0, name
    # the training curves, the per-example evaluation, the teacher's pseudo-labels
    for d in (
        "ascl",
        "adv",
        "supcon",
        "acl_ft",
        "acl_lin",
        "semi/1_pretrain",
        "semi/2_teacher",
        "semi/3_student",
    ):
        ma, mb = _metrics(mp / d), _metrics(sp / d)
        assert [r["step"] for r in ma] == [r["step"] for r in mb]
        for ra, rb in zip(ma, mb):
            for k in rb:
                np.testing.assert_allclose(
                    ra[k], rb[k], rtol=CURVE_RTOL.get(d, RTOL), atol=ATOL, err_msg=f"{d} {k}"
                )
    ea, eb = (np.load(r / "ascl/per_example.npz") for r in (mp, sp))
    assert sorted(ea.files) == sorted(eb.files)
    for k in eb.files:
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
    pa, pb = (np.load(r / "semi/pseudo_labels.npz") for r in (mp, sp))
    np.testing.assert_array_equal(pa["index"], pb["index"])
    np.testing.assert_allclose(pa["logits"], pb["logits"], rtol=RTOL, atol=ATOL)


def test_to_host_reads_every_kind_of_leaf():
    """to_host on one process: a data-sharded global array, a replicated one, numpy and a scalar
    come back as numpy with their values (the 2-process gathers run in the chain above)."""
    import jax

    mesh = parallel.make_mesh()
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    tree = {
        "sharded": parallel.put_global(x, parallel.data_sharded(mesh)),
        "replicated": parallel.put_global(x[:2], parallel.replicated(mesh)),
        "numpy": x,
        "scalar": 3,
        "local": jax.device_put(x, jax.devices()[0]),
    }
    out = parallel.to_host(tree)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    np.testing.assert_array_equal(out["sharded"], x)
    np.testing.assert_array_equal(out["replicated"], x[:2])
    np.testing.assert_array_equal(out["numpy"], x)
    np.testing.assert_array_equal(out["local"], x)
    assert out["scalar"] == 3
