"""The multi-host path: every mode run as 2 local processes x 4 CPU devices joined by
jax.distributed (localhost coordinator, launch/local_multiprocess.sh) gives the report numbers of
one process with 8 devices reading the same two input streams (config.input_processes=2).

One chain of CLI commands (launch/run_chain.py) covers every mode in one launch: training of each
method family (ascl, nat, adv, trades, supcon, acl_pretrain), --mode=evaluate (clean, PGD, mPGD,
AutoAttack-fast), --mode=analyze (R-DIV, t-SNE, plots), ACL pre-train -> TRADES fine-tune -> linear
evaluation, and the semi-supervised routine (pre-train, teacher, pseudo-labels, student). The
2-process chain and its 1-process reference run concurrently.

Tolerance: both runs execute the same SPMD programs on 8 devices over the same global batches;
only the cross-device reductions (batch-norm statistics, losses, gradients) are summed by a
different collective implementation (gloo between processes vs XLA's in-process all-reduce), so
float32 sums may differ in the last bits: float metrics and R-DIV agree to rtol 1e-5 (atol 1e-6),
accuracies (counts over the same examples) exactly.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

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
# every command: 2 input streams, the cheapest evaluation
COMMON = ["--config.input_processes=2", "--config.eval.sanity=False"]
CHEAP_EVAL = ["--config.eval.attacks=('clean', 'pgd')", "--config.analysis.enabled=False"]
# report keys that are timings or paths, not numbers of the run
UNCOMPARED = {"wall_seconds", "train_images_per_second", "timing_s", "stages", "plots", "config"}


def _train(name, config, *extra, eval_=CHEAP_EVAL):
    return ["--mode=train", f"--config={config}", f"--workdir={{root}}/{name}", *COMMON, *eval_, *extra]


def _semisup():
    out = ["--mode=train", "--config=configs/acl_semisup.py:smoke", "--workdir={root}/semi"]
    for s in ("pretrain", "teacher", "student"):
        out += [f"--config.stages.{s}.input_processes=2", f"--config.stages.{s}.eval.sanity=False"]
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
        "--config.eval.attacks=('clean', 'pgd', 'mpgd', 'autoattack')",
        "--config.analysis.enabled=False",
    ],
    ["--mode=analyze", "--workdir={root}/ascl"],  # R-DIV, t-SNE, the plots
    _train("adv", "configs/default.py:smoke", "--config.method=adv"),
    _train("supcon", "configs/ascl_table6.py:row=orgscl,smoke", *DIGITS),
    _semisup(),  # ACL pre-training (DS), the nat teacher, pseudo-labels, the student
    _train("acl_ft", "configs/acl_finetune.py:smoke", *DIGITS, PRE),
    _train("acl_lin", "configs/acl_linear.py:mode=adversarial,smoke", *DIGITS, PRE),
]


def _launch_chain(tmp_path):
    """Starts the 2-process chain and its 1-process reference; returns their (process, root)."""
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(CHAIN))
    env = dict(os.environ, PY=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    kw = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mp, sp = tmp_path / "mp", tmp_path / "sp"
    procs = [
        subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "4", chain, mp], env=env, **kw),
        subprocess.Popen(
            [sys.executable, "-m", "launch.run_chain", "--config", chain, "--workdir", sp],
            env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"),
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


def _close(a, b, exact):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b if exact else abs(a - b) <= 1e-6 + 1e-5 * abs(b)


def _exact(key):
    return "accuracy" in key  # clean / robust / per-attack accuracies: counts over the same examples


def test_every_mode_two_processes_equal_one(tmp_path):
    runs = _launch_chain(tmp_path)
    for proc, root in runs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{root.name}:\n{out[-4000:]}"
    (mp, sp) = (root for _, root in runs)
    a, b = (json.loads((r / "chain.json").read_text()) for r in (mp, sp))
    assert len(a) == len(b) == len(CHAIN)
    bad = []
    for ja, jb in zip(a, b):
        cmd = " ".join(s for s in ja["argv"][:3])
        na, nb = _numbers(ja["report"]), _numbers(jb["report"])
        assert na.keys() == nb.keys(), (cmd, sorted(na.keys() ^ nb.keys()))
        assert na, cmd
        bad += [f"{cmd}: {k} {na[k]!r} != {nb[k]!r}" for k in na if not _close(na[k], nb[k], _exact(k))]
    assert not bad, "\n".join(bad)

    # what each mode must have produced, and the training curves step by step
    rep = a[0]["report"]
    assert rep["steps"] == 4 and rep["analysis"]["errors"] == {}, rep["analysis"]
    assert {"tsne", "rdiv_vs_robust_accuracy"} <= set(a[2]["report"]["analysis"]["plots"])
    assert math.isfinite(a[2]["report"]["r_div"]["ratio"])
    assert set(a[1]["report"]["robust_accuracy"]) >= {"pgd2", "mpgd", "autoattack"}
    assert a[-1]["report"]["method"] == "semi_supervised"
    for d in ("ascl", "nat", "adv", "trades", "supcon", "acl_pre", "acl_ft", "acl_lin", "semi/3_student"):
        ma, mb = _metrics(mp / d), _metrics(sp / d)
        assert [r["step"] for r in ma] == [r["step"] for r in mb]
        for ra, rb in zip(ma, mb):
            for k in rb:
                np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-6, err_msg=f"{d} {k}")
    pa = np.load(mp / "semi/pseudo_labels.npz")["logits"]
    pb = np.load(sp / "semi/pseudo_labels.npz")["logits"]
    np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-5)
    for name in os.listdir(sp / "ascl/plots"):
        assert (mp / "ascl/plots" / name).stat().st_size > 0, name


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
