"""The end-of-run analysis of a trained model: R-DIV, the plots, and the text summary.

:func:`run_analysis` is what the training loop calls at the end of a run (``analysis.enabled``).
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ascl_jax import storage
from ascl_jax.analysis.counts import selection_counts_over_training
from ascl_jax.analysis.plots import (
    PNG_NAMES,
    plot_rdiv_vs_robust_accuracy,
    plot_robust_accuracy_vs_eps,
    plot_selection_counts,
    plot_tsne,
)
from ascl_jax.analysis.rdiv import r_div_batched
from ascl_jax.analysis.records import PathLike, to_float
from ascl_jax.analysis.summary import headline_robust_accuracy, text_summary


def _floats(values: Any) -> list[float]:
    return list(np.asarray(values, np.float64).reshape(-1))


def _normalise_sweep(sweep: Any, model_name: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{name: (eps, acc)}`` from that form, a bare ``(eps, acc)`` pair, or ``{eps: acc}``."""
    if sweep is None:
        return {}
    if isinstance(sweep, Mapping):
        if sweep and all(isinstance(k, (int, float)) for k in sweep):
            items = sorted(sweep.items())
            return {model_name: ([float(k) for k, _ in items], [to_float(v) for _, v in items])}
        return {str(k): (_floats(v[0]), _floats(v[1])) for k, v in sweep.items()}
    eps, acc = sweep
    return {model_name: (_floats(eps), _floats(acc))}


def _acc_at(sweep: Mapping[str, tuple[list[float], list[float]]], name: str, eps: float) -> float:
    series = sweep.get(name) or (next(iter(sweep.values())) if len(sweep) == 1 else None)
    if series is None:
        return float("nan")
    for e, a in zip(*series):
        if abs(e - eps) <= 1e-6 * max(1.0, abs(eps)):
            return float(a)
    return float("nan")


def run_analysis(
    workdir: PathLike,
    *,
    z_nat: Any = None,
    z_adv: Any = None,
    labels: Any = None,
    eps_sweep_results: Any = None,
    metrics_path: PathLike | Iterable[Mapping[str, Any]] | None = None,
    report: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    robust_accuracy: float | None = None,
    reference_eps: float | None = None,
    batch_size: int = 128,
    tsne_max_points: int = 1000,
    tsne_max_adv: int = 100,
    seed: int = 0,
    plots_subdir: str = "plots",
    print_summary: bool = False,
) -> dict[str, Any]:
    """The end-of-run analysis: R-DIV, the four plots into ``workdir/plots/``, and the text summary.

    Every input is optional; a plot whose inputs are missing is skipped (reason in ``skipped``), and an
    unexpected error in one plot is logged and recorded in ``errors`` without stopping the others.
    Existing PNGs in ``workdir/plots/`` are overwritten (plots are regenerated artifacts).

    Args:
      workdir: the run's directory.
      z_nat: [n, h] benign latents (penultimate layer) of the evaluation images, in loader order.
      z_adv: [n, h] latents of their adversarial examples, or ``{eps: [n, h] array}`` for several attack
        strengths (then R-DIV is computed per eps and plotted against the robust accuracy at that eps).
      labels: [n] integer labels.
      eps_sweep_results: robust accuracy vs eps: ``{name: (eps_list, acc_list)}``, a bare
        ``(eps_list, acc_list)``, or ``{eps: acc}`` (the latter two are named ``model_name``).
      metrics_path: the training metrics JSONL (or a list of dicts) for the selection-count plot.
      report: the ``report.json`` dict; its values feed the summary (R-DIV is added from here).
      model_name: legend name (default ``report['method']`` or "model").
      robust_accuracy: robust accuracy paired with R-DIV when ``z_adv`` is a single array (default: the
        report's PGD robust accuracy, else its first robust accuracy).
      reference_eps: with a dict ``z_adv``, which eps gives the headline ``r_div`` (default: first key).
      batch_size: R-DIV mini-batch size (128 in the paper); see :func:`r_div_batched`.
      tsne_max_points, tsne_max_adv: points in the t-SNE (paper: 1000 benign, 100 adversarial).
      seed: t-SNE random_state.
      plots_subdir: sub-directory of ``workdir`` receiving the PNGs.
      print_summary: also print the summary.

    Returns:
      ``{'plots': {name: path str}, 'r_div': {...} or None, 'r_div_by_eps': {eps: {...}} (dict z_adv
      only), 'summary': str, 'skipped': {name: reason}, 'errors': {name: message}}``; ``r_div`` holds
      the scalar entries of :func:`r_div_batched` (``intra``, ``inter``, ``ratio``,
      ``ratio_mean_of_batches``, ``num_batches``, ``batch_size``, ``num_rows``).
    """
    plot_dir = storage.path(workdir) / plots_subdir
    report = dict(report or {})
    name = model_name or str(report.get("method", "model"))
    result: dict[str, Any] = {"plots": {}, "r_div": None, "skipped": {}, "errors": {}}

    def attempt(key: str, fn, *args, **kwargs):
        """fn(*args, plot_dir / PNG_NAMES[key], **kwargs), its path recorded under ``key``."""
        try:
            result["plots"][key] = str(fn(*args, plot_dir / PNG_NAMES[key], **kwargs))
        except Exception as e:  # noqa: BLE001 - one failing plot must not lose the others
            logging.warning("analysis: %s failed: %s\n%s", key, e, traceback.format_exc())
            result["errors"][key] = f"{type(e).__name__}: {e}"

    sweep = _normalise_sweep(eps_sweep_results, name)
    have_latents = z_nat is not None and labels is not None

    # R-DIV (and the R-DIV vs robust accuracy plot).
    rdiv_points = None
    if have_latents and z_adv is not None:
        scalar_keys = (
            "intra",
            "inter",
            "ratio",
            "ratio_mean_of_batches",
            "num_batches",
            "batch_size",
            "num_rows",
        )
        if isinstance(z_adv, Mapping):
            by_eps = {}
            for eps, za in z_adv.items():
                r = r_div_batched(z_nat, za, labels, batch_size)
                by_eps[float(eps)] = {k: r[k] for k in scalar_keys}
            result["r_div_by_eps"] = by_eps
            ref = next(iter(by_eps))
            if reference_eps is not None:
                ref = min(by_eps, key=lambda e: abs(e - float(reference_eps)))
            result["r_div"] = by_eps[ref]
            eps_sorted = sorted(by_eps)
            accs = [_acc_at(sweep, name, e) for e in eps_sorted]
            if any(math.isfinite(a) for a in accs):
                keep = [i for i, a in enumerate(accs) if math.isfinite(a)]
                rdiv_points = {
                    name: (
                        [by_eps[eps_sorted[i]]["ratio"] for i in keep],
                        [accs[i] for i in keep],
                        [
                            f"ε={eps_sorted[i] * 255:.3g}/255"
                            if eps_sorted[i] <= 1
                            else f"ε={eps_sorted[i]:.3g}"
                            for i in keep
                        ],
                    )
                }
        else:
            r = r_div_batched(z_nat, z_adv, labels, batch_size)
            result["r_div"] = {k: r[k] for k in scalar_keys}
            acc = robust_accuracy if robust_accuracy is not None else headline_robust_accuracy(report)
            if acc is not None and math.isfinite(to_float(acc)):
                rdiv_points = {name: (result["r_div"]["ratio"], to_float(acc))}
        if rdiv_points:
            attempt("rdiv_vs_robust_accuracy", plot_rdiv_vs_robust_accuracy, rdiv_points)
        else:
            result["skipped"]["rdiv_vs_robust_accuracy"] = "no robust accuracy to pair with R-DIV"
    else:
        result["skipped"]["rdiv_vs_robust_accuracy"] = "no latents (z_nat, z_adv, labels)"

    if sweep:
        attempt("robust_accuracy_vs_eps", plot_robust_accuracy_vs_eps, sweep)
    else:
        result["skipped"]["robust_accuracy_vs_eps"] = "no eps sweep results"

    if metrics_path is not None:
        try:
            counts = selection_counts_over_training(metrics_path)
        except (OSError, ValueError) as e:
            counts = None
            result["skipped"]["selection_counts"] = f"metrics unreadable: {e}"
        if counts is not None and counts["step"].size:
            attempt("selection_counts", plot_selection_counts, counts)
        elif counts is not None:
            result["skipped"]["selection_counts"] = "no selection counts in the metrics (not an ASCL run?)"
    else:
        result["skipped"]["selection_counts"] = "no metrics"

    if have_latents:
        za = z_adv
        if isinstance(za, Mapping):
            za = next(iter(z_adv.values()))
            if reference_eps is not None:
                for eps, value in z_adv.items():
                    if abs(float(eps) - float(reference_eps)) <= 1e-9:
                        za = value
        attempt(
            "tsne",
            plot_tsne,
            z_nat,
            za,
            labels,
            max_points=tsne_max_points,
            max_adv=tsne_max_adv,
            random_state=seed,
        )
    else:
        result["skipped"]["tsne"] = "no latents (z_nat, labels)"

    if result["r_div"] is not None:
        report.setdefault("r_div", result["r_div"])
    result["summary"] = text_summary(report)
    if print_summary:
        print(result["summary"])
    return result
