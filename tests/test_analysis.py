"""Tests of ascl_jax.analysis: R-DIV against a plain numpy reference, counts, plots, summary."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ascl_jax import analysis

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------
# Plain numpy reference: explicit Python loops over anchors (ASCL §2, SPEC §1.5).
# ----------------------------------------------------------------------------------------------------


def _cos_dist(u, v):
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    nu = max(np.linalg.norm(u), 1e-12)
    nv = max(np.linalg.norm(v), 1e-12)
    return 1.0 - float(u @ v) / (nu * nv)


def reference_r_div(z_nat, z_adv, labels, include_own_adv=False):
    n = len(labels)
    intra, inter = [], []
    for i in range(n):
        pos, neg = [], []
        for j in range(n):
            if j == i:
                continue
            for v in (z_nat[j], z_adv[j]):
                (pos if labels[j] == labels[i] else neg).append(_cos_dist(z_nat[i], v))
        if include_own_adv:
            pos.append(_cos_dist(z_nat[i], z_adv[i]))
        if pos:  # anchors with an empty set are skipped
            intra.append(np.mean(pos))
        if neg:
            inter.append(np.mean(neg))
    d_plus = float(np.mean(intra)) if intra else float("nan")
    d_minus = float(np.mean(inter)) if inter else float("nan")
    return d_plus, d_minus, d_plus / d_minus if d_minus else float("nan")


def _data(seed, n, h, num_classes, adv_scale=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(num_classes, 1), h))
    labels = rng.integers(0, num_classes, size=n)
    z_nat = centres[labels] + 0.7 * rng.normal(size=(n, h))
    z_adv = z_nat + adv_scale * rng.normal(size=(n, h))
    return z_nat.astype(np.float32), z_adv.astype(np.float32), labels.astype(np.int32)


def _assert_close(actual, expected, rtol=2e-5, atol=2e-6):
    actual = float(actual)
    if math.isnan(expected):
        assert math.isnan(actual), (actual, expected)
    else:
        assert actual == pytest.approx(expected, rel=rtol, abs=atol)


CASES = [
    # (n, h, num_classes, labels override)
    (12, 5, 3, None),
    (16, 8, 4, None),
    (7, 3, 1, None),  # single class: every X-_i empty -> inter NaN
    (6, 4, 6, np.arange(6)),  # all labels distinct: every X+_i empty -> intra NaN
    (8, 4, 3, np.array([0, 0, 0, 1, 1, 1, 1, 2])),  # class 2 has one image: that anchor skipped in d+
    (1, 4, 1, None),  # one row: both sets empty
    (2, 3, 2, np.array([0, 0])),
    (33, 16, 10, None),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("include_own_adv", [False, True])
def test_r_div_matches_numpy_reference(seed, case, include_own_adv):
    n, h, num_classes, override = case
    z_nat, z_adv, labels = _data(seed, n, h, num_classes)
    if override is not None:
        labels = override.astype(np.int32)
    out = analysis.r_div(z_nat, z_adv, labels, include_own_adv=include_own_adv)
    d_plus, d_minus, ratio = reference_r_div(z_nat, z_adv, labels, include_own_adv)
    assert set(out) == {"intra", "inter", "ratio"}
    assert all(v.dtype == jnp.float32 and v.shape == () for v in out.values())
    _assert_close(out["intra"], d_plus)
    _assert_close(out["inter"], d_minus)
    _assert_close(out["ratio"], ratio, rtol=5e-5)


def test_r_div_empty_set_rules():
    z_nat, z_adv, _ = _data(0, 6, 4, 2)
    single_class = analysis.r_div(z_nat, z_adv, np.zeros(6, np.int32))
    assert np.isfinite(single_class["intra"]) and np.isnan(single_class["inter"])
    assert np.isnan(single_class["ratio"])
    distinct = analysis.r_div(z_nat, z_adv, np.arange(6))
    assert np.isnan(distinct["intra"]) and np.isfinite(distinct["inter"])
    assert np.isnan(distinct["ratio"])
    # With the own adversarial view in X+_i, a batch of distinct labels has an intra value again.
    own = analysis.r_div(z_nat, z_adv, np.arange(6), include_own_adv=True)
    assert np.isfinite(own["intra"]) and np.isfinite(own["ratio"])
    # Zero latents do not produce NaN (cosine 0 -> distance 1).
    zeros = analysis.r_div(np.zeros((4, 3)), np.zeros((4, 3)), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose([zeros["intra"], zeros["inter"], zeros["ratio"]], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_r_div_invariances(seed):
    z_nat, z_adv, labels = _data(seed, 40, 12, 4)
    base = analysis.r_div(z_nat, z_adv, labels)
    for scale in (1e-3, 3.7, 250.0):
        scaled = analysis.r_div(scale * z_nat, scale * z_adv, labels)
        for k in base:
            np.testing.assert_allclose(scaled[k], base[k], rtol=2e-5)
    perm = np.random.default_rng(seed + 10).permutation(40)
    permuted = analysis.r_div(z_nat[perm], z_adv[perm], labels[perm])
    for k in base:
        np.testing.assert_allclose(permuted[k], base[k], rtol=2e-5)


def test_r_div_is_jittable_and_one_hot_labels():
    z_nat, z_adv, labels = _data(3, 20, 6, 3)

    @jax.jit
    def f(a, b, y):
        return analysis.r_div(a, b, y)["ratio"] * 2.0

    np.testing.assert_allclose(
        f(z_nat, z_adv, labels), 2 * analysis.r_div(z_nat, z_adv, labels)["ratio"], rtol=1e-6
    )
    one_hot = np.eye(3, dtype=np.float32)[labels]
    np.testing.assert_allclose(
        analysis.r_div(z_nat, z_adv, one_hot)["ratio"],
        analysis.r_div(z_nat, z_adv, labels)["ratio"],
        rtol=1e-6,
    )
    with pytest.raises(ValueError):
        analysis.r_div(z_nat, z_adv[:5], labels)


def test_r_div_separates_robust_from_non_robust_latents():
    # Adversarial latents close to their benign latents (robust) give a lower R-DIV than far ones.
    z_nat, z_close, labels = _data(4, 64, 16, 4, adv_scale=0.1)
    _, z_far, _ = _data(4, 64, 16, 4, adv_scale=3.0)
    assert analysis.r_div(z_nat, z_close, labels)["ratio"] < analysis.r_div(z_nat, z_far, labels)["ratio"]


# ----------------------------------------------------------------------------------------------------
# Batched protocol
# ----------------------------------------------------------------------------------------------------


def _manual_batches(z_nat, z_adv, labels, bs, drop_remainder):
    n = len(labels)
    starts = list(range(0, n, bs))
    outs = []
    for s in starts:
        e = min(s + bs, n)
        if e - s < bs and drop_remainder and n >= bs:
            continue
        outs.append(reference_r_div(z_nat[s:e], z_adv[s:e], labels[s:e]))
    arr = np.asarray(outs, np.float64)
    intra, inter = np.nanmean(arr[:, 0]), np.nanmean(arr[:, 1])
    return intra, inter, intra / inter, np.nanmean(arr[:, 2]), len(outs)


@pytest.mark.parametrize(
    "n,bs,drop", [(70, 32, False), (70, 32, True), (64, 32, False), (20, 32, True), (20, 32, False)]
)
def test_r_div_batched_equals_manual_per_batch_average(n, bs, drop):
    z_nat, z_adv, labels = _data(5, n, 8, 4)
    out = analysis.r_div_batched(z_nat, z_adv, labels, batch_size=bs, drop_remainder=drop)
    intra, inter, ratio, ratio_mean, num_batches = _manual_batches(z_nat, z_adv, labels, bs, drop)
    assert out["num_batches"] == num_batches
    assert out["num_rows"] == (n if not drop or n < bs else (n // bs) * bs)
    assert out["per_batch"]["ratio"].shape == (num_batches,)
    _assert_close(out["intra"], intra)
    _assert_close(out["inter"], inter)
    _assert_close(out["ratio"], ratio, rtol=5e-5)
    _assert_close(out["ratio_mean_of_batches"], ratio_mean, rtol=5e-5)


def test_r_div_batched_skips_undefined_batches():
    z_nat, z_adv, _ = _data(6, 12, 5, 2)
    # Batch 1 (rows 0-3): all labels distinct -> no positives; batches 2 and 3 have both sets.
    labels = np.array([0, 1, 2, 3, 0, 0, 1, 1, 2, 2, 3, 3], np.int32)
    out = analysis.r_div_batched(z_nat, z_adv, labels, batch_size=4)
    assert np.isnan(out["per_batch"]["intra"][0])
    manual = [reference_r_div(z_nat[s : s + 4], z_adv[s : s + 4], labels[s : s + 4]) for s in (0, 4, 8)]
    _assert_close(out["intra"], np.mean([m[0] for m in manual[1:]]))
    _assert_close(out["inter"], np.mean([m[1] for m in manual]))
    # The default batch size of the paper on a single small batch equals the unbatched value.
    single = analysis.r_div_batched(z_nat, z_adv, labels)
    assert single["num_batches"] == 1 and single["batch_size"] == 128
    _assert_close(single["ratio"], float(analysis.r_div(z_nat, z_adv, labels)["ratio"]))


# ----------------------------------------------------------------------------------------------------
# Selection counts over training
# ----------------------------------------------------------------------------------------------------


def test_selection_counts_from_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {
            "step": 20,
            "loss": 1.0,
            "num_positives_nat": 6.0,
            "num_positives_adv": 7.0,
            "num_negatives_nat": 10.0,
            "num_negatives_adv": 12.0,
        },
        {
            "step": 10,
            "num_positives_nat": 3.0,
            "num_positives_adv": 4.5,
            "num_negatives_nat": 11.0,
            "num_negatives_adv": 14.0,
        },
        {"step": 15, "eval/accuracy": 0.5},  # no counts: skipped
        {"step": 30, "train/num_positives_nat": 8.0, "train/num_positives_adv": 9.0},  # prefixed, partial
        {
            "step": 20,
            "num_positives_nat": 6.5,
            "num_positives_adv": 7.5,  # re-logged after a resume
            "num_negatives_nat": 9.0,
            "num_negatives_adv": 11.0,
            "num_positives": 7.0,
        },
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n"
    path.write_text(text)
    counts = analysis.selection_counts_over_training(path)
    np.testing.assert_array_equal(counts["step"], [10, 20, 30])
    np.testing.assert_allclose(counts["num_positives_nat"], [3.0, 6.5, 8.0])
    np.testing.assert_allclose(counts["num_positives_adv"], [4.5, 7.5, 9.0])
    # Totals: logged ones are read; otherwise the mean over all anchors, (nat + adv) / 2.
    np.testing.assert_allclose(counts["num_positives"], [3.75, 7.0, 8.5])
    np.testing.assert_allclose(counts["num_negatives"][:2], [12.5, 10.0])
    assert np.isnan(counts["num_negatives_nat"][2]) and np.isnan(counts["num_negatives"][2])
    # The directory holding metrics.jsonl, the path as a str and a list of dicts all work.
    for source in (tmp_path, str(path), lines):
        again = analysis.selection_counts_over_training(source)
        np.testing.assert_array_equal(again["step"], counts["step"])
    empty = analysis.selection_counts_over_training([{"step": 1, "loss": 2.0}])
    assert empty["step"].shape == (0,) and empty["num_positives"].shape == (0,)
    with pytest.raises(FileNotFoundError):
        analysis.selection_counts_over_training(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------


def _assert_png(path, min_bytes=2000):
    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


def test_plot_robust_accuracy_vs_eps(tmp_path):
    results = {
        "ASCL": ([0, 2 / 255, 4 / 255, 8 / 255], [0.80, 0.70, 0.60, 0.45]),
        "ADV": ([0, 4 / 255, 8 / 255], [78.0, 55.0, 40.0]),
    }
    out = analysis.plot_robust_accuracy_vs_eps(results, tmp_path / "acc.png")
    assert out == tmp_path / "acc.png"
    _assert_png(out)
    # A directory gets the default name; an existing file is overwritten.
    out2 = analysis.plot_robust_accuracy_vs_eps(results, tmp_path)
    assert out2.name == "robust_accuracy_vs_eps.png"
    out3 = analysis.plot_robust_accuracy_vs_eps({"x": ([0.0], [0.5])}, out)
    _assert_png(out3)
    with pytest.raises(ValueError):
        analysis.plot_robust_accuracy_vs_eps({"x": ([0, 1], [0.5])}, tmp_path / "bad.png")


def test_plot_rdiv_vs_robust_accuracy(tmp_path):
    points = {
        "ASCL": ([0.48, 0.55, 0.62], [0.60, 0.50, 0.42], ["2/255", "4/255", "8/255"]),
        "AT": (0.64, 0.47),
    }
    out = analysis.plot_rdiv_vs_robust_accuracy(points, tmp_path / "plots" / "rdiv.png")
    _assert_png(out)


def test_plot_selection_counts(tmp_path):
    history = [
        {
            "step": s,
            "num_positives_nat": 3 + s / 100,
            "num_positives_adv": 4 + s / 90,
            "num_negatives_nat": 20 - s / 50,
            "num_negatives_adv": 25 - s / 60,
        }
        for s in range(0, 500, 25)
    ]
    out = analysis.plot_selection_counts(history, tmp_path / "counts.png")
    _assert_png(out)
    counts = analysis.selection_counts_over_training(history)
    _assert_png(analysis.plot_selection_counts(counts, tmp_path / "counts2.png"))
    with pytest.raises(ValueError):
        analysis.plot_selection_counts([{"step": 1}], tmp_path / "none.png")


def test_plot_tsne(tmp_path):
    z_nat, z_adv, labels = _data(7, 60, 10, 4)
    out = analysis.plot_tsne(z_nat, z_adv, labels, tmp_path / "tsne.png", max_points=50, max_adv=10)
    _assert_png(out)
    out2 = analysis.plot_tsne(z_nat, None, labels, tmp_path / "tsne_nat.png", max_points=30)
    _assert_png(out2)


# ----------------------------------------------------------------------------------------------------
# Summary and the end-of-run analysis
# ----------------------------------------------------------------------------------------------------


def test_text_summary_contains_the_numbers():
    report = {
        "config": "default",
        "method": "ascl",
        "dataset": "digits",
        "clean_accuracy": 0.9512,
        "robust_accuracy": {"pgd20": 0.6125, "autoattack": 0.55},
        "r_div": {"intra": 0.1234, "inter": 0.2468, "ratio": 0.5},
        "num_positives": 11.3,
        "num_positives_nat": 5.0,
        "num_positives_adv": 6.3,
        "num_negatives": 14.3,
        "train_images_per_second": 321.0,
        "wall_seconds": 100.0,
    }
    text = analysis.text_summary(report)
    for s in (
        "95.12%",
        "pgd20 61.25%",
        "autoattack 55.00%",
        "0.5000",
        "0.1234",
        "0.2468",
        "11.30",
        "nat 5.00",
        "adv 6.30",
        "14.30",
        "ascl",
        "321.0",
    ):
        assert s in text, (s, text)
    assert len(text.splitlines()) <= 10
    # Missing keys are tolerated.
    empty = analysis.text_summary({})
    assert "n/a" in empty and "R-DIV" in empty
    assert "n/a" in analysis.text_summary({"robust_accuracy": None, "r_div": None})


# The training loop's report, key for key as ascl_jax/train/loop.py writes it (train_and_evaluate, then
# evaluate_state with the analysis on); the values are those of a digits run.
TRAIN_REPORT = {
    "config": "default",
    "method": "ascl",
    "dataset": "digits",
    "arch": "cnn",
    "steps": 440,
    "train_images_per_second": 422.6,
    "final_train_metrics": {"loss": 3.52, "num_positives_nat": 24.28},
    "num_positives_nat": 24.28,
    "num_positives_adv": 21.70,
    "num_negatives_nat": 1.78,
    "num_negatives_adv": 4.49,
    "num_positives": 22.99,
    "num_negatives": 3.135,
    "clean_accuracy": 0.9833,
    "robust_accuracy": {"autoattack": 0.7667, "mpgd": 0.775, "pgd20": 0.7833},
    "overall_robust_accuracy": 0.7667,
    "eval_eps": 0.1,
    "sanity": {
        "checks": {"nonzero_gradients": {"message": "ok", "passed": True}},
        "messages": [],
        "num_examples": 256,
        "passed": True,
        "tolerance": 0.01,
    },
    "analysis": {
        "plots": {},
        "r_div": {"ratio": 0.1916, "intra": 0.0309, "inter": 0.1610},
        "skipped": {},
        "errors": {},
    },
    "r_div": {
        "batch_size": 128,
        "inter": 0.1610,
        "intra": 0.0309,
        "num_batches": 3,
        "num_rows": 360,
        "ratio": 0.1916,
        "ratio_mean_of_batches": 0.1925,
    },
    "wall_seconds": 330.1,
}

# evaluation.evaluate's result, key for key as ascl_jax/evaluation/runner.py returns it.
EVAL_RESULTS = {
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "seed": 0,
    "num_classes": 10,
    "attacks": ["clean", "pgd20"],
    "num_evaluated": 32,
    "clean_accuracy": 0.875,
    "robust_accuracy": {"pgd20": 0.40625},
    "num_examples": {"pgd20": 32},
    "overall": {"robust_accuracy": 0.40625, "num_examples": 32, "attacks": ["pgd20"]},
    "settings": {"pgd_steps": 20},
    "timing_s": {"clean": 0.1, "pgd20": 1.0},
    "sanity": {"passed": False, "messages": ["gradients are zero on 50% of the examples"]},
    "per_example": {"index": np.arange(32)},
}


def test_text_summary_of_the_training_report_has_every_value():
    text = analysis.text_summary(TRAIN_REPORT)
    lines = text.splitlines()
    assert "n/a" not in text, text
    assert all(line.split(":", 1)[1].strip() for line in lines[1:]), text
    for s in (
        "config=default",
        "method=ascl",
        "dataset=digits",
        "arch=cnn",
        "98.33%",
        "autoattack 76.67%",
        "mpgd 77.50%",
        "pgd20 78.33%",
        "worst case     : 76.67% at eps 0.1 (25.5/255)",
        "passed",
        "0.1916",
        "0.0309",
        "0.1610",
        "22.99 (nat 24.28, adv 21.70)",
        "3.13 (nat 1.78, adv 4.49)",
        "440 steps",
        "422.6 train images/s",
        "wall 330.1 s",
    ):
        assert s in text, (s, text)
    assert len(lines) <= 10


def test_text_summary_reads_the_eval_summary_of_write_eval_json(tmp_path):
    from ascl_jax import evaluation

    evaluation.write_eval_json(str(tmp_path), EVAL_RESULTS)
    report = json.loads((tmp_path / "report.json").read_text())
    text = analysis.text_summary(report)
    for s in (
        "87.50%",
        "pgd20 40.62%",
        "worst case     : 40.62% at eps 0.03137 (8/255)",
        "FAILED (gradients are zero on 50% of the examples)",
    ):
        assert s in text, (s, text)
    # The semi-supervised report: the student's report plus the teacher's accuracy; no attack evaluated.
    semi = dict(
        TRAIN_REPORT,
        method="semi_supervised",
        robust_accuracy={},
        sanity=None,
        teacher_clean_accuracy=0.0625,
        stages={"teacher": str(tmp_path)},
    )
    for k in (
        "num_positives",
        "num_positives_nat",
        "num_positives_adv",
        "num_negatives",
        "num_negatives_nat",
        "num_negatives_adv",
        "r_div",
        "analysis",
    ):
        semi.pop(k)
    text = analysis.text_summary(semi)
    assert "robust accuracy: no attack evaluated" in text and "teacher clean  : 6.25%" in text, text
    assert "worst case" not in text and "sanity" not in text


def test_run_analysis_writes_all_plots(tmp_path):
    z_nat, z_adv, labels = _data(8, 50, 8, 3)
    _, z_adv_big, _ = _data(8, 50, 8, 3, adv_scale=1.5)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(
            json.dumps(
                {
                    "step": s,
                    "num_positives_nat": 2.0,
                    "num_positives_adv": 3.0,
                    "num_negatives_nat": 8.0,
                    "num_negatives_adv": 9.0,
                }
            )
            for s in (10, 20, 30)
        )
    )
    report = {"method": "ascl", "clean_accuracy": 0.9, "robust_accuracy": {"pgd10": 0.5}}
    result = analysis.run_analysis(
        tmp_path,
        z_nat=z_nat,
        z_adv={2 / 255: z_adv, 8 / 255: z_adv_big},
        labels=labels,
        eps_sweep_results={0.0: 0.9, 2 / 255: 0.7, 8 / 255: 0.5},
        metrics_path=metrics,
        report=report,
        batch_size=16,
        tsne_max_points=40,
        tsne_max_adv=8,
    )
    assert set(result["plots"]) == {
        "robust_accuracy_vs_eps",
        "rdiv_vs_robust_accuracy",
        "selection_counts",
        "tsne",
    }, result
    assert not result["errors"] and not result["skipped"]
    for p in result["plots"].values():
        assert p.startswith(str(tmp_path / "plots"))
        _assert_png(p)
    expected = analysis.r_div_batched(z_nat, z_adv, labels, batch_size=16)
    assert result["r_div"]["ratio"] == pytest.approx(expected["ratio"])
    assert set(result["r_div_by_eps"]) == {2 / 255, 8 / 255}
    assert f"{expected['ratio']:.4f}" in result["summary"]
    # Single adversarial array, robust accuracy taken from the report; no metrics, no sweep.
    single = analysis.run_analysis(
        tmp_path / "w2",
        z_nat=z_nat,
        z_adv=z_adv,
        labels=labels,
        report=report,
        tsne_max_points=30,
        tsne_max_adv=5,
    )
    assert set(single["plots"]) == {"rdiv_vs_robust_accuracy", "tsne"}
    assert set(single["skipped"]) == {"robust_accuracy_vs_eps", "selection_counts"}
    # Nothing at all: everything skipped, summary still produced.
    nothing = analysis.run_analysis(tmp_path / "w3")
    assert not nothing["plots"] and nothing["r_div"] is None and "summary" in nothing["summary"]


def test_analysis_pgd_attacks_in_the_configured_norm():
    """The R-DIV / t-SNE latents' PGD (train.run_eval.pgd_examples) stays in the eval.norm ball:
    L2 at eps 0.5 on 8x8 digits (an L-inf ball of that radius reaches L2 distance 4); the L-inf
    path is attacks.pgd_linf itself."""
    from sklearn.datasets import load_digits

    from ascl_jax import attacks, config
    from ascl_jax.train import run_eval

    d = load_digits()
    x = jnp.asarray((d.images[:32] / 16.0).astype(np.float32)[..., None])
    y = jnp.asarray(d.target[:32].astype(np.int32))
    w = jax.random.normal(jax.random.key(0), (64, 10))
    logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w  # noqa: E731
    c = config.base_config()
    c.eval.update(pgd_steps=5, step_size=0.2, eps=0.5, norm="L2")
    key = jax.random.key(1)
    x_l2 = jax.jit(lambda x, y, s: run_eval.pgd_examples(c, logits_fn, x, y, key, s, eps=0.5))(x, y, 3)
    l2 = np.linalg.norm(np.asarray(x_l2 - x).reshape(32, -1), axis=1)
    assert np.all(l2 <= 0.5 + 1e-5) and np.median(l2) > 0.4
    assert float(x_l2.min()) >= 0.0 and float(x_l2.max()) <= 1.0
    ce = lambda v: float(_mean_ce(logits_fn(v), y))  # noqa: E731
    assert ce(x_l2) > ce(x)
    c.eval.norm = "Linf"
    x_inf = run_eval.pgd_examples(c, logits_fn, x, y, key, 3, eps=0.5)
    want = attacks.pgd_linf(attacks.ce_objective(logits_fn, y), x, key, eps=0.5, step_size=0.2, num_steps=5)
    np.testing.assert_array_equal(np.asarray(x_inf), np.asarray(want))
    assert np.median(np.linalg.norm(np.asarray(x_inf - x).reshape(32, -1), axis=1)) > 1.0


def _mean_ce(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], -1))
