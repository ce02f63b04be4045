"""scripts/reproduce.py --dataset fashion_mnist without training: the Wilson interval, the verdict
rule, skip / resume / copy of runs with a fake trainer, and the report written from fake results."""

import importlib.util
import json
import math
import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)


def _wilson_by_roots(k, n, z=1.959963984540054):
    """The Wilson bounds as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, in float64."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    return tuple(sorted(np.roots(np.array([a, b, c], np.float64)).real))


@pytest.mark.parametrize("k,n", [(1, 10), (5, 10), (7000, 10000), (431, 1000), (999, 1000), (3, 7)])
def test_wilson_matches_the_score_equation(k, n):
    lo, hi = rp.wilson(k, n)
    np.testing.assert_allclose((lo, hi), _wilson_by_roots(k, n), rtol=0, atol=1e-12)


def test_wilson_known_values():
    z2 = 1.959963984540054**2
    assert rp.wilson(0, 10) == (0.0, pytest.approx(z2 / (10 + z2), abs=1e-15))  # 0.2775
    assert rp.wilson(10, 10)[0] == pytest.approx(10 / (10 + z2), abs=1e-15)
    lo, hi = rp.wilson(5000, 10000)  # ~ +-0.98 points at n = 10,000
    assert lo == pytest.approx(0.5 - 0.0098, abs=2e-5) and hi == pytest.approx(0.5 + 0.0098, abs=2e-5)
    with pytest.raises(ValueError):
        rp.wilson(0, 0)


def test_verdict_rule():
    assert rp.verdict((0.6, 0.57, 0.63), (0.5, 0.47, 0.53), ">") == "holds"
    assert rp.verdict((0.6, 0.57, 0.63), (0.5, 0.47, 0.53), "<") == "does not hold"
    assert rp.verdict((0.52, 0.49, 0.55), (0.5, 0.47, 0.53), ">") == "cannot be told apart"
    assert rp.verdict(None, (0.5, 0.47, 0.53), ">") == "not measured"
    assert rp.verdict((1.0, None, None), (2.0, None, None), "<").startswith("cannot be told apart")


def test_spearman_and_correlation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)  # distinct values: 1 - 6 sum d^2 / (n (n^2 - 1))
    d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))
    assert rp.spearman(x, y) == pytest.approx(1 - 6 * np.sum(d**2) / (9 * 80), abs=1e-12)
    assert rp.spearman([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)  # a tie
    rho, p, v = rp.correlation_verdict(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], permutations=2000
    )
    assert rho == pytest.approx(-1.0) and p < 0.01 and v == "holds"
    assert rp.correlation_verdict([1, 2, 3], [3, 2, 1])[2] == "not measured"


# Fake results: label -> (clean, pgd, mpgd, aa, rdiv, pos, neg) per seed.
VALUES = {
    "NAT": [(0.91, 0.0, 0.0, 0.0, 0.40, None, None)],
    "ADV": [(0.82, 0.700, 0.650, 0.50, 0.20, None, None), (0.82, 0.702, 0.652, 0.51, 0.21, None, None)],
    "TRADES": [(0.80, 0.690, 0.700, 0.55, 0.22, None, None), (0.80, 0.690, 0.701, 0.55, 0.23, None, None)],
    "ASCL Global": [(0.83, 0.698, 0.650, 0.56, 0.19, 25.6, 227.0)],
    "ASCL Hard": [(0.83, 0.699, 0.650, 0.56, 0.19, 25.6, 3.0)],
    "ASCL Soft": [(0.83, 0.699, 0.650, 0.56, 0.19, 25.6, 5.0)],
    "ASCL Leaked": [
        (0.82, 0.704, 0.640, 0.60, 0.15, 11.0, 14.0),
        (0.82, 0.705, 0.641, 0.61, 0.16, 11.2, 14.4),
    ],
    "ACL(DS) pre-training": [None],
    "ACL(DS) + TRADES": [(0.84, 0.740, 0.690, 0.58, 0.20, None, None)],
}


def _fake_train(log):
    counters = {}

    def train_fn(c, wd):
        log.append(wd)
        name = os.path.basename(wd)
        label = rp.FMNIST_RUNS[name][1]
        seed = int(name[-1])
        os.makedirs(os.path.join(wd, "checkpoints", "469"), exist_ok=True)
        os.makedirs(os.path.join(wd, "plots"), exist_ok=True)
        (pathlib.Path(wd) / "plots" / "tsne.png").write_bytes(b"png")
        (pathlib.Path(wd) / "metrics.jsonl").write_text('{"step": 1}\n')
        v = VALUES[label][seed]
        rep = dict(steps=2345, wall_seconds=60.0, method=c.method, train_images_per_second=250.0)
        if v is not None:
            clean, pgd, mpgd, aa, rdiv, pos, neg = v
            rep.update(
                clean_accuracy=clean,
                robust_accuracy={"pgd20": pgd, "mpgd": mpgd, "autoattack": aa},
                r_div={"ratio": rdiv},
            )
            if pos is not None:
                rep.update(num_positives=pos, num_negatives=neg)
            ev = dict(
                num_evaluated=10000,
                num_examples={"pgd20": 10000, "mpgd": 10000, "autoattack": 1000},
                timing_s={"pgd20": 60.0, "mpgd": 300.0, "autoattack": 600.0},
            )
            (pathlib.Path(wd) / "eval.json").write_text(json.dumps(ev))
        counters[name] = counters.get(name, 0) + 1
        (pathlib.Path(wd) / "report.json").write_text(json.dumps(rep))

    return train_fn


def test_runs_skip_resume_and_copy(tmp_path):
    res, wd = str(tmp_path / "results"), str(tmp_path / "runs")
    calls = []
    status = rp.run_fmnist(
        res, wd, source_fn=lambda d: "idx", train_fn=_fake_train(calls), log=lambda *_: None
    )
    assert set(status.values()) == {"ran"} and len(calls) == len(rp.FMNIST_RUNS)
    for name in rp.FMNIST_RUNS:
        d = pathlib.Path(res) / name
        assert not (d / "checkpoints").exists()  # never checkpoints
        assert (
            (d / "report.json").exists()
            and (d / "metrics.jsonl").exists()
            and (d / "plots" / "tsne.png").exists()
        )
        meta = json.loads((d / "reproduce.json").read_text())
        assert meta["config_arg"] == rp.run_arg(name, wd) and meta["sittings"][0]["finished"]
        assert meta["sittings"][0]["cpu"] == rp.cpu_name() and rp.cpu_name()
    assert "pretrained=" + os.path.join(wd, "acl_ds_s0") in rp.run_arg("acl_ds_trades_s0", wd)
    # A second sitting: everything is skipped, nothing trains.
    calls.clear()
    status = rp.run_fmnist(
        res, wd, source_fn=lambda d: "idx", train_fn=_fake_train(calls), log=lambda *_: None
    )
    assert set(status.values()) == {"skipped"} and calls == []
    # Results removed but the workdir finished: copied again without training.
    import shutil

    shutil.rmtree(os.path.join(res, "adv_s1"))
    assert (
        rp.run_fmnist(res, wd, only=("adv_s1",), source_fn=lambda d: "idx", train_fn=_fake_train(calls))[
            "adv_s1"
        ]
        == "copied"
    )
    assert calls == []
    # An interrupted run resumes in the same workdir, and its sittings add up.
    shutil.rmtree(os.path.join(res, "trades_s1"))
    os.remove(os.path.join(wd, "trades_s1", "report.json"))

    def interrupted(c, w):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rp.run_fmnist(res, wd, only=("trades_s1",), source_fn=lambda d: "idx", train_fn=interrupted)
    assert not os.path.exists(os.path.join(res, "trades_s1"))
    assert (
        rp.run_fmnist(res, wd, only=("trades_s1",), source_fn=lambda d: "idx", train_fn=_fake_train(calls))[
            "trades_s1"
        ]
        == "ran"
    )
    assert calls == [os.path.join(wd, "trades_s1")]
    meta = json.loads((pathlib.Path(res) / "trades_s1" / "reproduce.json").read_text())
    assert [s["finished"] for s in meta["sittings"]] == [True, False, True]
    assert meta["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in meta["sittings"]), abs=0.2)
    # Results of another config argument are refused, never overwritten.
    m = pathlib.Path(res) / "nat_s0" / "reproduce.json"
    m.write_text(json.dumps(dict(config_arg="method=nat,seed=0,epochs=9")))
    with pytest.raises(SystemExit, match="epochs=9"):
        rp.run_fmnist(res, wd, only=("nat_s0",), source_fn=lambda d: "idx", train_fn=_fake_train(calls))
    # The fine-tuning needs its pre-training's checkpoint, which results do not keep.
    shutil.rmtree(os.path.join(res, "acl_ds_trades_s0"))
    shutil.rmtree(os.path.join(wd, "acl_ds_s0"))
    with pytest.raises(SystemExit, match="acl_ds_s0"):
        rp.run_fmnist(
            res, wd, only=("acl_ds_trades_s0",), source_fn=lambda d: "idx", train_fn=_fake_train(calls)
        )
    with pytest.raises(SystemExit, match="unknown"):
        rp.run_fmnist(res, wd, only=("adv_s9",), source_fn=lambda d: "idx", train_fn=_fake_train(calls))
    # A run started on one Fashion-MNIST source never resumes on the other (their orders differ).
    shutil.rmtree(os.path.join(res, "adv_s0"))
    os.remove(os.path.join(wd, "adv_s0", "report.json"))
    calls.clear()
    with pytest.raises(SystemExit, match=r"started on Fashion-MNIST source 'idx'.*reads 'tfds'"):
        rp.run_fmnist(res, wd, only=("adv_s0",), source_fn=lambda d: "tfds", train_fn=_fake_train(calls))
    assert calls == [] and not os.path.exists(os.path.join(res, "adv_s0"))
    rp.run_fmnist(res, wd, only=("adv_s0",), source_fn=lambda d: "idx", train_fn=_fake_train(calls))
    meta = json.loads((pathlib.Path(res) / "adv_s0" / "reproduce.json").read_text())
    assert meta["data_source"] == "idx" and len(meta["sittings"]) == 2


def _row(md, text):
    rows = [line for line in md.splitlines() if f"| {text} |" in line]
    assert len(rows) == 1, text
    return rows[0]


def test_report_from_result_files(tmp_path):
    res, wd = str(tmp_path / "results"), str(tmp_path / "runs")
    rp.run_fmnist(res, wd, source_fn=lambda d: "idx", train_fn=_fake_train([]), log=lambda *_: None)
    md = rp.fmnist_report(res)
    # Per run: accuracy with its Wilson interval from the number of test images.
    lo, hi = rp.wilson(600, 1000)
    assert f"60.00 [{100 * lo:.1f}, {100 * hi:.1f}]" in _row(md, "ascl_leaked_s0 | ASCL Leaked")  # AA, n=1000
    lo, hi = rp.wilson(7040, 10000)
    assert f"70.40 [{100 * lo:.1f}, {100 * hi:.1f}]" in _row(
        md, "ascl_leaked_s0 | ASCL Leaked"
    )  # PGD, n=10000
    # Verdicts by the rule: disjoint intervals decide, overlapping ones cannot be told apart.
    assert "**holds**" in _row(md, "Leaked-ASCL more robust than ADV (AA)")  # 60/61 vs 50/51 on 1,000
    assert "**cannot be told apart**" in _row(md, "Leaked-ASCL more robust than ADV (PGD)")  # 70.4 vs 70.0
    assert "**does not hold**" in _row(md, "Leaked-ASCL more robust than TRADES (mPGD)")  # 64.0 vs 70.0
    assert "**holds**" in _row(md, "DS + TRADES more robust than TRADES from scratch (PGD-20 RA)")
    assert "**holds**" in _row(md, "Leaked selects fewer negatives per anchor than Global")
    assert "**holds**" in _row(md, "ADV has a lower adversarial R-DIV than NAT")
    ratio = _row(md, "Leaked / Global negatives ratio below 100%")
    assert f"{100 * 14.2 / 227:.1f}%" in ratio and "6.3%" in ratio
    assert "Spearman rho" in _row(md, "Lower R-DIV goes with higher AA accuracy across runs")
    # The seed spread of a two-seed method.
    assert "| ASCL Leaked | aa | 60.00 / 61.00 | 1.00 |" in md
    assert "Runs not (yet)" not in md and "read from: idx" in md
    assert f"CPU of the sittings (wall and CPU minutes hold for that CPU): {rp.cpu_name()}: nat_s0, " in md
    # The section replaces only itself; the digits section stays below.
    out = tmp_path / "REPRODUCTION.md"
    out.write_text("# Reproduction report\n\nGenerated (digits).\n\n| run | clean |\n")
    rp.write_section(out, "fashion_mnist", md)
    rp.write_section(out, "fashion_mnist", md)
    text = out.read_text()
    assert text.count("## Fashion-MNIST") == 1 and text.count("Generated (digits).") == 1
    assert text.index("## Fashion-MNIST") < text.index("## Digits") < text.index("Generated (digits).")
    # A partial set says what is missing.
    import shutil

    shutil.rmtree(os.path.join(res, "ascl_soft_s0"))
    md = rp.fmnist_report(res)
    assert "Runs not (yet) in the results: ascl_soft_s0." in md
    assert "**not measured**" in _row(md, "Soft more robust than Global (PGD)")
    assert math.isfinite(rp.Z95)


def test_sigterm_ends_the_sitting_and_records_it(tmp_path):
    """A real SIGTERM to this process while a run is in its sitting (as in evaluation, outside the
    train loop's own handler): SystemExit 143, the sitting recorded unfinished, no results copied,
    the previous SIGTERM handler back in place; the next sitting finishes the run."""
    assert threading.current_thread() is threading.main_thread()  # else the signal would end pytest
    res, wd = str(tmp_path / "res"), str(tmp_path / "wd")
    before = signal.getsignal(signal.SIGTERM)

    def terminated(c, w):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises at the next bytecode, long before this ends
        raise AssertionError("SIGTERM did not end the sitting")

    with pytest.raises(SystemExit) as exc:
        rp.run_fmnist(res, wd, only=("adv_s1",), source_fn=lambda d: "idx", train_fn=terminated)
    assert exc.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert not os.path.exists(os.path.join(res, "adv_s1"))
    assert [s["finished"] for s in rp._sittings(os.path.join(wd, "adv_s1"))] == [False]
    assert rp.run_fmnist(res, wd, only=("adv_s1",), source_fn=lambda d: "idx", train_fn=_fake_train([]))
    meta = json.loads((pathlib.Path(res) / "adv_s1" / "reproduce.json").read_text())
    assert [s["finished"] for s in meta["sittings"]] == [False, True]


def test_preempted_training_exits_143_with_the_resume_command(tmp_path, monkeypatch, capsys):
    """The train loop's Preempted (checkpoint saved) ends the script with 143 and the command."""
    from ascl_jax.train import preemption

    def preempted(*a, **k):
        raise preemption.Preempted(7, str(tmp_path / "wd" / "adv_s1"))

    monkeypatch.setattr(rp, "run_fmnist", preempted)
    argv = [
        "--dataset",
        "fashion_mnist",
        "--results",
        str(tmp_path / "res"),
        "--workdir",
        str(tmp_path / "wd"),
    ]
    argv += ["--out", str(tmp_path / "REPRODUCTION.md")]  # never the checkout's
    with pytest.raises(SystemExit) as exc:
        rp.main(argv)
    assert exc.value.code == preemption.PREEMPTED_EXIT_CODE
    err = capsys.readouterr().err
    assert "stopped after step 7" in err
    assert err.rstrip().endswith("reproduce.py " + " ".join(argv))
    assert not (tmp_path / "REPRODUCTION.md").exists()


def test_gpu_sentence_from_the_gpu_check_json(tmp_path, monkeypatch):
    """The full-scale section's accelerator sentence: step times and per-epoch seconds (390 steps)
    from the GPU check's JSON; the plain sentence when the file is absent or has no float32 step."""
    path = tmp_path / "gpu_check.json"
    monkeypatch.setattr(rp, "GPU_CHECK_JSON", path)
    assert rp.gpu_sentence().startswith("No accelerator time was measured")
    steps = [
        {"arch": "resnet20", "dtype": "float32", "status": "ok", "ascl_step_ms": 20.0},
        {"arch": "resnet20", "dtype": "bfloat16", "status": "ok", "ascl_step_ms": 5.0},
        {"arch": "resnet18", "dtype": "float32", "status": "timeout"},
    ]
    path.write_text(json.dumps({"env": {"device_kind": "GPU X"}, "jax_step": steps}))
    text = rp.gpu_sentence()
    assert text.startswith("On one GPU X ") and "ResNet-20 20.0 ms (8 s per CIFAR-10 epoch" in text
    assert "ResNet-18" not in text
    path.write_text(json.dumps({"env": {"status": "failed"}, "jax_step": steps[1:]}))
    assert rp.gpu_sentence().startswith("No accelerator time was measured")
