"""Latent-space analysis of a trained model: R-DIV, selection counts, plots, summary.

Implements the analyses of ASCL (Bui et al. 2022):

* R-DIV, the relative intra-class divergence (ASCL §2, supplement §7; SPEC §1.5):
  :func:`r_div` on one batch, :func:`r_div_batched` with the paper's protocol (per mini-batch of 128,
  averaged over mini-batches).
* The mean number of positives / negatives per anchor over training, natural vs adversarial (ASCL
  Fig. 4; SPEC §1.2 "Counts"): :func:`selection_counts_over_training` reads the training metrics.
* Plots written as PNG files (matplotlib's Agg canvas; pyplot and its global backend are never touched):
  robust accuracy vs eps (ASCL Figs. 3 and 5b), R-DIV vs robust accuracy (ASCL Figs. 2c and 5),
  positives / negatives over training (ASCL Fig. 4), t-SNE of latents with adversarial examples marked
  (ASCL supplement Fig. 7).
* :func:`text_summary`, a short terminal summary of a ``report.json``-like dict, and
  :func:`run_analysis`, which the training loop calls at the end of a run.

Plots are regenerated artifacts: every plot function overwrites an existing file at its path.

matplotlib and scikit-learn are imported lazily, inside the functions that need them, so importing this
module costs only JAX and numpy.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COUNT_KEYS",
    "r_div",
    "r_div_batched",
    "selection_counts_over_training",
    "plot_robust_accuracy_vs_eps",
    "plot_rdiv_vs_robust_accuracy",
    "plot_selection_counts",
    "plot_tsne",
    "text_summary",
    "run_analysis",
]

PathLike = str | os.PathLike

# Rows whose norm is below this are treated as norm _NORM_EPS when normalising (a zero latent has cosine 0
# with everything, i.e. distance 1), so the divergence never produces NaN from 0/0.
_NORM_EPS = 1e-12

# Per-anchor selection counts logged by the ASCL train step (SPEC §1.2 "Counts"), plus the totals.
COUNT_KEYS = (
    "num_positives_nat",
    "num_positives_adv",
    "num_negatives_nat",
    "num_negatives_adv",
    "num_positives",
    "num_negatives",
)

PNG_NAMES = {
    "robust_accuracy_vs_eps": "robust_accuracy_vs_eps.png",
    "rdiv_vs_robust_accuracy": "rdiv_vs_robust_accuracy.png",
    "selection_counts": "selection_counts.png",
    "tsne": "tsne.png",
}


# ----------------------------------------------------------------------------------------------------
# R-DIV
# ----------------------------------------------------------------------------------------------------


def _cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """``d[i, j] = 1 - cos(a_i, b_j)`` for a [n, h] and b [m, h]; returns [n, m] float32."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), _NORM_EPS)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), _NORM_EPS)
    cos = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return 1.0 - cos


def _as_latents(z_nat, z_adv, labels, caller: str):
    """float32 [n, h] latents and int [n] labels (one-hot [n, C] accepted); shape errors name `caller`."""
    z_nat = jnp.asarray(z_nat, jnp.float32)
    z_adv = jnp.asarray(z_adv, jnp.float32)
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    if z_nat.ndim != 2 or z_nat.shape != z_adv.shape or labels.shape != z_nat.shape[:1]:
        raise ValueError(
            f"{caller} expects z_nat and z_adv of the same shape [n, h] and labels [n]; got "
            f"z_nat {z_nat.shape}, z_adv {z_adv.shape}, labels {labels.shape}."
        )
    return z_nat, z_adv, labels


def _masked_anchor_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """Mean over anchors with ``count > 0`` of ``total / count``; NaN when no anchor qualifies."""
    valid = count > 0
    per_anchor = total / jnp.maximum(count, 1.0)
    n_valid = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(n_valid, 1)
    return jnp.where(n_valid > 0, mean, jnp.nan)


@functools.partial(jax.jit, static_argnames=("include_own_adv",))
def r_div(
    z_nat: jax.Array,
    z_adv: jax.Array,
    labels: jax.Array,
    *,
    include_own_adv: bool = False,
) -> dict[str, jax.Array]:
    """Absolute intra-/inter-class cosine divergence and R-DIV of one batch (ASCL §2, SPEC §1.5).

    Definitions (ASCL §2 (i)-(ii), literal reading of SPEC §1.5):

    * anchors are the benign latents ``z_i``, i = 1..n;
    * ``X+_i = {z_j, z^a_j : j != i, y_j == y_i}`` and ``X-_i = {z_j, z^a_j : j != i, y_j != y_i}``: the
      benign *and* adversarial latents of the *other* images with the same / a different label (so
      ``|X+_i| = 2 * #{j != i : y_j = y_i}``, and the anchor's own adversarial example is not in X+_i);
    * ``d(u, v) = 1 - cos(u, v)`` (cosine distance; a zero vector has cosine 0 with everything);
    * ``d+ = mean over anchors of  mean_{v in X+_i} d(z_i, v)``, ``d-`` likewise with X-_i;
    * ``R-DIV = d+ / d-``.

    Empty sets: an anchor whose X+_i (resp. X-_i) is empty -- its class has no other image in the batch
    (resp. the whole batch has one class) -- is skipped, i.e. ``d+`` averages over the anchors with a
    non-empty X+_i only (the ``1/N`` of the paper becomes ``1/#{anchors with a non-empty set}``). If no
    anchor has a non-empty X+_i, ``intra`` is NaN; likewise ``inter`` for X-_i (e.g. a single-class batch).
    ``ratio`` is ``intra / inter`` in IEEE arithmetic: NaN whenever either is NaN, ``inf`` if
    ``inter == 0`` and ``intra > 0``.

    Args:
      z_nat: [n, h] latents of the benign images (ASCL: penultimate layer ``z = f(x)``).
      z_adv: [n, h] latents of their adversarial examples, row i belonging to image i.
      labels: [n] integer labels (a [n, C] one-hot array is reduced with argmax).
      include_own_adv: if True, X+_i additionally contains the anchor's own adversarial latent ``z^a_i``
        (the "benign image vs its adversarial example" reading of the adversarial R-DIV; not the literal
        ``j != i`` definition, hence off by default).

    Returns:
      ``{'intra': d+, 'inter': d-, 'ratio': d+ / d-}``, float32 scalars. Pure and jit-compiled; fully
      vectorised with [n, n] masks, O(n^2 h) time and O(n^2) memory.

    Invariances: multiplying ``z_nat`` / ``z_adv`` by a positive scalar, or permuting the rows of
    (z_nat, z_adv, labels) together, leaves all three values unchanged (up to float rounding).
    """
    z_nat, z_adv, labels = _as_latents(z_nat, z_adv, labels, "r_div")
    n = z_nat.shape[0]
    d_nat = _cosine_distance(z_nat, z_nat)  # [n, n]: d(z_i, z_j)
    d_adv = _cosine_distance(z_nat, z_adv)  # [n, n]: d(z_i, z^a_j)

    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(n, dtype=bool)
    pos = (same & ~eye).astype(jnp.float32)  # j != i, same label
    neg = (~same).astype(jnp.float32)  # different label (never the diagonal)

    pos_total = jnp.sum(pos * (d_nat + d_adv), axis=1)
    pos_count = 2.0 * jnp.sum(pos, axis=1)
    if include_own_adv:
        pos_total = pos_total + jnp.diagonal(d_adv)
        pos_count = pos_count + 1.0
    neg_total = jnp.sum(neg * (d_nat + d_adv), axis=1)
    neg_count = 2.0 * jnp.sum(neg, axis=1)

    intra = _masked_anchor_mean(pos_total, pos_count)
    inter = _masked_anchor_mean(neg_total, neg_count)
    return {"intra": intra, "inter": inter, "ratio": intra / inter}


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    finite = ~np.isnan(x)
    return float(np.mean(x[finite])) if finite.any() else float("nan")


def r_div_batched(
    z_nat: Any,
    z_adv: Any,
    labels: Any,
    batch_size: int = 128,
    *,
    drop_remainder: bool = False,
    include_own_adv: bool = False,
) -> dict[str, Any]:
    """R-DIV with the paper's protocol: per mini-batch, then averaged over mini-batches (supplement §7).

    The rows are split in order (no shuffling) into consecutive mini-batches of ``batch_size`` rows;
    :func:`r_div` is computed on each (full batches under one ``jax.vmap``).

    Last partial batch: when ``n`` is not a multiple of ``batch_size`` the remaining ``n % batch_size``
    rows form one extra, smaller mini-batch that counts with the same weight as every other mini-batch
    (what a PyTorch test loader with its default ``drop_last=False`` gives). With
    ``drop_remainder=True`` those rows are ignored instead -- unless there is no full batch at all
    (``n < batch_size``), in which case all rows form the single mini-batch.

    Averaging: ``intra`` (d+) and ``inter`` (d-) are each the mean over mini-batches of the per-batch
    value, over the mini-batches where it is defined (a batch in which no anchor has a non-empty set
    gives NaN and is left out; see :func:`r_div`); NaN if it is defined in no batch. ``ratio`` is
    ``intra / inter`` of these averages, i.e. ``R-DIV = d+_a / d-_a`` of the averaged divergences (the
    paper averages "these divergences" over mini-batches). The mean of the per-batch ratios is returned
    as well, as ``ratio_mean_of_batches``.

    Args:
      z_nat, z_adv: [n, h] benign / adversarial latents (anything ``jnp.asarray`` takes).
      labels: [n] integer labels.
      batch_size: rows per mini-batch (128 in the paper).
      drop_remainder: ignore the last partial mini-batch (see above).
      include_own_adv: passed to :func:`r_div`.

    Returns:
      dict with Python floats ``intra``, ``inter``, ``ratio``, ``ratio_mean_of_batches``, int
      ``num_batches``, ``batch_size``, ``num_rows`` (rows used), and ``per_batch`` = {'intra', 'inter',
      'ratio'} numpy float32 arrays [num_batches]. Host-level (returns floats), not jit-able itself.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    z_nat, z_adv, labels = _as_latents(z_nat, z_adv, labels, "r_div_batched")
    n, h = z_nat.shape
    if n == 0:
        raise ValueError("r_div_batched needs at least one row.")
    num_full, rem = divmod(n, batch_size)
    parts: list[dict[str, np.ndarray]] = []
    rows = 0
    if num_full:
        m = num_full * batch_size
        fn = jax.vmap(functools.partial(r_div, include_own_adv=include_own_adv))
        out = fn(
            z_nat[:m].reshape(num_full, batch_size, h),
            z_adv[:m].reshape(num_full, batch_size, h),
            labels[:m].reshape(num_full, batch_size),
        )
        parts.append({k: np.asarray(v, np.float32).reshape(-1) for k, v in out.items()})
        rows = m
    if rem and (not drop_remainder or num_full == 0):
        s = num_full * batch_size
        out = r_div(z_nat[s:], z_adv[s:], labels[s:], include_own_adv=include_own_adv)
        parts.append({k: np.asarray(v, np.float32).reshape(-1) for k, v in out.items()})
        rows = n
    per_batch = {k: np.concatenate([p[k] for p in parts]) for k in ("intra", "inter", "ratio")}
    intra = _nanmean(per_batch["intra"])
    inter = _nanmean(per_batch["inter"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.float64(intra) / np.float64(inter))
    return {
        "intra": intra,
        "inter": inter,
        "ratio": ratio,
        "ratio_mean_of_batches": _nanmean(per_batch["ratio"]),
        "num_batches": int(per_batch["ratio"].shape[0]),
        "batch_size": int(batch_size),
        "num_rows": int(rows),
        "per_batch": per_batch,
    }


# ----------------------------------------------------------------------------------------------------
# Selection counts over training (ASCL Fig. 4)
# ----------------------------------------------------------------------------------------------------


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, else the value of a key ending in ``'/' + key`` (e.g. ``'train/' + key``)."""
    if key in record:
        return record[key]
    suffix = "/" + key
    for k, v in record.items():
        if isinstance(k, str) and k.endswith(suffix):
            return v
    return None


def _to_float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(np.asarray(value, np.float64).reshape(-1).mean())
    except (TypeError, ValueError):
        return float("nan")


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # e.g. a line cut short by a killed run; the rest of the file is still usable.
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def _resolve_metrics_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_dir():
        if (path / "metrics.jsonl").is_file():
            return path / "metrics.jsonl"
        candidates = sorted(path.glob("*.jsonl"))
        if len(candidates) == 1:
            return candidates[0]
        raise FileNotFoundError(
            f"{path} is a directory without metrics.jsonl and with {len(candidates)} *.jsonl files; "
            "pass the metrics file itself."
        )
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist.")
    return path


def selection_counts_over_training(
    metrics_history: PathLike | Iterable[Mapping[str, Any]],
) -> dict[str, np.ndarray]:
    """Mean positives / negatives per anchor over training, natural vs adversarial (ASCL Fig. 4).

    Args:
      metrics_history: the training metrics, either an iterable of dicts or the path of the JSONL file
        the training loop writes (one JSON object a line, e.g. ``{"step": 100, "num_positives_nat": 5.1,
        "num_positives_adv": 6.2, "num_negatives_nat": 7.0, "num_negatives_adv": 7.3, ...}``), or a
        directory holding ``metrics.jsonl`` (or exactly one ``*.jsonl``).

    Rules:
      * a key is read as ``name`` or, failing that, as any key ending in ``'/name'`` (``'train/name'``);
      * records without an integer-valued ``step`` or without any of :data:`COUNT_KEYS` are skipped
        (e.g. evaluation lines); unparsable JSONL lines are skipped;
      * a missing count is NaN in its array;
      * the totals ``num_positives`` / ``num_negatives`` are read when logged, else they are
        the mean over all anchors, ``(nat + adv) / 2`` (natural and adversarial anchors are equally
        many; NaN when either part is missing);
      * records are sorted by step; when a step appears more than once (a run resumed from an earlier
        checkpoint re-logs steps) the record that comes last wins.

    Returns:
      dict of numpy arrays of equal length T: ``step`` (int64) and each name in :data:`COUNT_KEYS`
      (float64). T = 0 when nothing was logged.
    """
    if isinstance(metrics_history, (str, os.PathLike)):
        records: Iterable[Mapping[str, Any]] = _read_jsonl(
            _resolve_metrics_file(pathlib.Path(metrics_history))
        )
    else:
        records = metrics_history
    by_step: dict[int, dict[str, float]] = {}
    for rec in records:
        if not isinstance(rec, Mapping):
            continue
        step = _lookup(rec, "step")
        try:
            step = int(step)
        except (TypeError, ValueError):
            continue
        values = {k: _to_float(_lookup(rec, k)) for k in COUNT_KEYS}
        if all(math.isnan(v) for v in values.values()):
            continue
        for total, nat, adv in (
            ("num_positives", "num_positives_nat", "num_positives_adv"),
            ("num_negatives", "num_negatives_nat", "num_negatives_adv"),
        ):
            if math.isnan(values[total]):
                values[total] = 0.5 * (values[nat] + values[adv])  # equal numbers of nat / adv anchors
        by_step.pop(step, None)
        by_step[step] = values
    steps = sorted(by_step)
    out = {"step": np.asarray(steps, np.int64)}
    for k in COUNT_KEYS:
        out[k] = np.asarray([by_step[s][k] for s in steps], np.float64)
    return out


# ----------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------


def _png_path(path: PathLike, default_name: str) -> pathlib.Path:
    """A directory (existing, or a path without suffix) gets ``default_name`` inside it."""
    p = pathlib.Path(path)
    if p.is_dir() or not p.suffix:
        p = p / default_name
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _new_figure(figsize=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, format="png")  # overwrites an existing file: plots are regenerated artifacts
    return path


def _as_percent(values: Sequence[float]) -> np.ndarray:
    """Accuracies given as fractions (all <= 1) are scaled to percent; others are taken as percent."""
    v = np.asarray(values, np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    if finite.size and np.all(finite <= 1.0):
        v = v * 100.0
    return v


def plot_robust_accuracy_vs_eps(
    results_by_model: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: PathLike,
    *,
    title: str | None = None,
) -> pathlib.Path:
    """Robust accuracy against the perturbation size eps, one line per model (ASCL Figs. 3 and 5b).

    Args:
      results_by_model: ``{name: (eps_list, acc_list)}``. eps in image units ([0, 1] images); when every
        eps is <= 1 the axis shows eps x 255 ("eps (/255)"). Accuracies as fractions or percent (all
        values <= 1 are read as fractions). eps = 0 is clean accuracy.
      path: PNG file, or a directory (then ``robust_accuracy_vs_eps.png`` inside it). Overwritten.
      title: optional title.

    Returns:
      the path written.
    """
    if not results_by_model:
        raise ValueError("plot_robust_accuracy_vs_eps: no results to plot.")
    out = _png_path(path, PNG_NAMES["robust_accuracy_vs_eps"])
    all_eps = np.concatenate([np.asarray(e, np.float64).reshape(-1) for e, _ in results_by_model.values()])
    scale = 255.0 if all_eps.size and np.nanmax(all_eps) <= 1.0 else 1.0
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (eps, acc) in results_by_model.items():
        eps = np.asarray(eps, np.float64).reshape(-1)
        acc = _as_percent(acc)
        _check_same_size(name, eps, acc, "eps values")
        order = np.argsort(eps)
        ax.plot(eps[order] * scale, acc[order], marker="o", label=str(name))
    return _finish_accuracy_plot(fig, ax, out, "perturbation size ε (/255)" if scale == 255.0
                                 else "perturbation size ε",
                                 title or "Robust accuracy vs perturbation size")


def _check_same_size(name, xs: np.ndarray, acc: np.ndarray, what: str) -> None:
    """One accuracy per x value of a model's line, else a ValueError naming the model."""
    if xs.shape != acc.shape:
        raise ValueError(f"model {name!r}: {xs.size} {what} but {acc.size} accuracies.")


def _finish_accuracy_plot(fig, ax, out: pathlib.Path, xlabel: str, title: str) -> pathlib.Path:
    """Labels (y: robust accuracy in %), grid and legend of a per-model accuracy plot; saves it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out)


def _rdiv_points(value) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if len(value) == 3:
        rdiv, acc, notes = value
        notes = [str(t) for t in np.asarray(notes, dtype=object).reshape(-1)]
    else:
        rdiv, acc = value
        notes = None
    return np.asarray(rdiv, np.float64).reshape(-1), _as_percent(acc), notes


def plot_rdiv_vs_robust_accuracy(
    points: Mapping[str, tuple],
    path: PathLike,
    *,
    title: str | None = None,
) -> pathlib.Path:
    """Robust accuracy against R-DIV (ASCL Figs. 2c and 5: the lower R-DIV, the higher robustness).

    Args:
      points: ``{name: (rdiv, robust_acc)}`` or ``{name: (rdiv, robust_acc, annotations)}``; each of
        rdiv / robust_acc a scalar or a sequence (e.g. one point per attack strength, drawn as a line),
        annotations (e.g. the eps of each point) written beside the points. Accuracies as fractions or
        percent (all values <= 1 are read as fractions).
      path: PNG file, or a directory (then ``rdiv_vs_robust_accuracy.png`` inside it). Overwritten.
      title: optional title.

    Returns:
      the path written.
    """
    if not points:
        raise ValueError("plot_rdiv_vs_robust_accuracy: no points to plot.")
    out = _png_path(path, PNG_NAMES["rdiv_vs_robust_accuracy"])
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, value in points.items():
        rdiv, acc, notes = _rdiv_points(value)
        _check_same_size(name, rdiv, acc, "R-DIV values")
        ax.plot(rdiv, acc, marker="o", linestyle="-" if rdiv.size > 1 else "none", label=str(name))
        if notes:
            for x, y, t in zip(rdiv, acc, notes):
                ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    return _finish_accuracy_plot(fig, ax, out, "R-DIV  d+ / d-  (relative intra-class divergence)",
                                 title or "Robust accuracy vs R-DIV")


def plot_selection_counts(
    history: PathLike | Iterable[Mapping[str, Any]] | Mapping[str, np.ndarray],
    path: PathLike,
    *,
    title: str | None = None,
) -> pathlib.Path:
    """Mean positives / negatives per anchor over training, natural vs adversarial (ASCL Fig. 4).

    Left panel: total positives and negatives per anchor (Fig. 4a); right panel: each split into
    natural and adversarial samples (Fig. 4b). Series that were never logged are left out.

    Args:
      history: anything :func:`selection_counts_over_training` takes, or its output.
      path: PNG file, or a directory (then ``selection_counts.png`` inside it). Overwritten.
      title: optional overall title.

    Returns:
      the path written. Raises ValueError when the history holds no selection counts.
    """
    if isinstance(history, Mapping) and "step" in history and not isinstance(history["step"], (int, float)):
        counts = {k: np.asarray(v) for k, v in history.items()}
    else:
        counts = selection_counts_over_training(history)
    steps = np.asarray(counts.get("step", []))
    if steps.size == 0:
        raise ValueError("plot_selection_counts: the metrics hold no selection counts (num_positives_*).")
    out = _png_path(path, PNG_NAMES["selection_counts"])
    fig = _new_figure(figsize=(11.0, 4.2))
    ax_tot = fig.add_subplot(1, 2, 1)
    ax_split = fig.add_subplot(1, 2, 2)

    def draw(ax, key, label, **kw):
        y = np.asarray(counts.get(key, np.full(steps.shape, np.nan)), np.float64)
        if np.isfinite(y).any():
            ax.plot(steps, y, label=label, **kw)
            return True
        return False

    drawn = draw(ax_tot, "num_positives", "positives", color="tab:blue")
    drawn |= draw(ax_tot, "num_negatives", "negatives", color="tab:red")
    drawn_split = draw(ax_split, "num_positives_nat", "positives (natural)", color="tab:blue")
    drawn_split |= draw(ax_split, "num_positives_adv", "positives (adversarial)", color="tab:blue",
                        linestyle="--")
    drawn_split |= draw(ax_split, "num_negatives_nat", "negatives (natural)", color="tab:red")
    drawn_split |= draw(ax_split, "num_negatives_adv", "negatives (adversarial)", color="tab:red",
                        linestyle="--")
    for ax, sub, any_drawn in ((ax_tot, "all samples", drawn), (ax_split, "natural vs adversarial",
                                                                 drawn_split)):
        ax.set_xlabel("training step")
        ax.set_ylabel("mean count per anchor")
        ax.set_title(sub)
        ax.grid(True, alpha=0.3)
        if any_drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "Selected positives / negatives per anchor over training")
    return _save(fig, out)


def plot_tsne(
    z_nat: Any,
    z_adv: Any,
    labels: Any,
    path: PathLike,
    *,
    max_points: int = 1000,
    max_adv: int = 100,
    adv_labels: Any = None,
    random_state: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
) -> pathlib.Path:
    """t-SNE of latents, benign points coloured by class, adversarial examples marked (supplement Fig. 7).

    The paper shows 1000 natural and 100 adversarial latents: the first ``max_points`` benign rows and
    the first ``max_adv`` adversarial rows are embedded together with ``sklearn.manifold.TSNE``
    (2-D, PCA initialisation, ``learning_rate='auto'``, fixed ``random_state``; perplexity clipped to
    ``(m - 1) / 3`` for m points so small inputs work; one thread, which is much faster on a busy
    machine and makes the embedding reproducible). Benign points are small dots, adversarial examples
    crosses with a black edge, both in the colour of their class.

    Args:
      z_nat: [n, h] benign latents; labels: [n] integer labels.
      z_adv: [n, h] adversarial latents (row i from image i), or None for benign points only.
      path: PNG file, or a directory (then ``tsne.png`` inside it). Overwritten.
      max_points: benign points shown; max_adv: adversarial points shown.
      adv_labels: colours of the adversarial points (default: the true labels, ``labels``).
      random_state: t-SNE seed (the plot is deterministic for a given input and seed).
      perplexity: t-SNE perplexity (upper bound, see above).
      title: optional title.

    Returns:
      the path written.
    """
    from sklearn.manifold import TSNE

    out = _png_path(path, PNG_NAMES["tsne"])
    z_nat = np.asarray(z_nat, np.float32)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    labels = labels.reshape(-1)
    if z_nat.ndim != 2 or labels.shape[0] != z_nat.shape[0]:
        raise ValueError(f"plot_tsne: z_nat {z_nat.shape} and labels {labels.shape} do not match.")
    n_nat = min(int(max_points), z_nat.shape[0])
    parts = [z_nat[:n_nat]]
    lab_nat = labels[:n_nat]
    n_adv = 0
    lab_adv = np.zeros((0,), labels.dtype)
    if z_adv is not None and max_adv > 0:
        z_adv = np.asarray(z_adv, np.float32)
        if z_adv.ndim != 2 or z_adv.shape[1] != z_nat.shape[1]:
            raise ValueError(f"plot_tsne: z_adv {z_adv.shape} does not match z_nat {z_nat.shape}.")
        n_adv = min(int(max_adv), z_adv.shape[0])
        parts.append(z_adv[:n_adv])
        lab_adv = np.asarray(labels if adv_labels is None else adv_labels).reshape(-1)[:n_adv]
    x = np.concatenate(parts, axis=0).astype(np.float64)
    m = x.shape[0]
    if m < 4:
        raise ValueError(f"plot_tsne: need at least 4 points, got {m}.")
    perp = float(min(perplexity, max(1.0, (m - 1) / 3.0)))
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # One thread: Barnes-Hut t-SNE's OpenMP threads are 10-25x slower on a busy machine (measured on
    # 2 shared cores: 60 points 0.3 s vs 4-8 s), and a single thread fixes the summation order, so the
    # embedding is reproducible for a given random_state.
    with threadpool_limits(limits=1):
        emb = TSNE(
            n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=random_state
        ).fit_transform(x)
    e_nat, e_adv = emb[:n_nat], emb[n_nat:]

    import matplotlib

    classes = np.unique(np.concatenate([lab_nat, lab_adv]))
    cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20" if classes.size <= 20 else
                                "nipy_spectral"]
    index = {c: i for i, c in enumerate(classes.tolist())}

    def colours(lab):
        k = max(classes.size - 1, 1)
        if classes.size <= 20:
            return [cmap(index[c] % cmap.N) for c in lab.tolist()]
        return [cmap(index[c] / k) for c in lab.tolist()]

    fig = _new_figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(e_nat[:, 0], e_nat[:, 1], c=colours(lab_nat), s=8, marker="o", alpha=0.6, linewidths=0)
    if n_adv:
        ax.scatter(e_adv[:, 0], e_adv[:, 1], c=colours(lab_adv), s=60, marker="X", edgecolors="black",
                   linewidths=0.6)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="none", color="grey", label=f"benign ({n_nat})")]
    if n_adv:
        handles.append(Line2D([], [], marker="X", linestyle="none", color="grey", markeredgecolor="black",
                              markersize=9, label=f"adversarial ({n_adv})"))
    if classes.size <= 20:
        handles += [Line2D([], [], marker="o", linestyle="none", color=colours(np.asarray([c]))[0],
                           label=f"class {c}") for c in classes.tolist()]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    ax.set_title(title or "t-SNE of latent representations (crosses: adversarial examples)")
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------------
# Terminal summary
# ----------------------------------------------------------------------------------------------------


def _fmt_acc(value: Any) -> str:
    v = _to_float(value)
    if math.isnan(v):
        return "n/a"
    return f"{100.0 * v:.2f}%" if v <= 1.0 else f"{v:.2f}%"


def _fmt_num(value: Any, digits: int = 2) -> str:
    v = _to_float(value)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _accuracy_value(value: Any) -> Any:
    """An accuracy given directly or as a dict like {'accuracy': ..} / {'robust_accuracy': ..}."""
    if isinstance(value, Mapping):
        for k in ("robust_accuracy", "accuracy", "acc", "overall", "value"):
            if k in value:
                return _accuracy_value(value[k])
        return None
    return value


def _robust_accuracies(report: Mapping[str, Any]) -> dict[str, Any]:
    """``{attack: accuracy}`` from ``report['robust_accuracy']``, else ``report['eval'][...]``."""
    for src in (report, report.get("eval") if isinstance(report.get("eval"), Mapping) else None):
        if not src:
            continue
        ra = src.get("robust_accuracy")
        if isinstance(ra, Mapping):
            out = {str(k): _accuracy_value(v) for k, v in ra.items()}
            return {k: v for k, v in out.items() if v is not None and not isinstance(v, Mapping)}
        if ra is not None:
            return {"robust": ra}
    return {}


def _clean_accuracy(report: Mapping[str, Any]) -> Any:
    for src in (report, report.get("eval") if isinstance(report.get("eval"), Mapping) else {}):
        for k in ("clean_accuracy", "clean_acc", "natural_accuracy"):
            if k in src:
                return _accuracy_value(src[k])
    return None


def _count_text(report: Mapping[str, Any], name: str) -> str:
    v = report.get(name)
    nat, adv, total = report.get(name + "_nat"), report.get(name + "_adv"), None
    if isinstance(v, Mapping):
        nat = v.get("nat", v.get("natural", nat))
        adv = v.get("adv", v.get("adversarial", adv))
        total = v.get("total", v.get("mean", v.get("all")))
    else:
        total = v
    if total is None and nat is not None and adv is not None:
        total = 0.5 * (_to_float(nat) + _to_float(adv))  # mean over all anchors
    text = _fmt_num(total)
    if nat is not None or adv is not None:
        text += f" (nat {_fmt_num(nat)}, adv {_fmt_num(adv)})"
    return text


def text_summary(report: Mapping[str, Any]) -> str:
    """A short terminal summary of a ``report.json``-like dict; missing keys read "n/a".

    Reads ``config``, ``method``, ``dataset``, ``clean_accuracy``, ``robust_accuracy`` ({attack:
    accuracy}; a value may itself be a dict with an ``accuracy``/``robust_accuracy`` entry; also looked
    up under ``report['eval']``), ``r_div`` (a dict with ``ratio``/``intra``/``inter``, or a number; also
    ``rdiv``), ``num_positives`` / ``num_negatives`` (numbers, or dicts with ``nat``/``adv``/``total``;
    ``num_positives_nat`` etc. are used too), ``train_images_per_second`` and ``wall_seconds``.
    Accuracies <= 1 are read as fractions and printed in percent.
    """
    report = report or {}
    head = ", ".join(f"{k}={report[k]}" for k in ("config", "method", "dataset") if k in report)
    lines = ["ascl_jax summary" + (f" ({head})" if head else "")]
    lines.append(f"  clean accuracy : {_fmt_acc(_clean_accuracy(report))}")
    robust = _robust_accuracies(report)
    if robust:
        lines.append("  robust accuracy: " + " | ".join(f"{k} {_fmt_acc(v)}" for k, v in robust.items()))
    else:
        lines.append("  robust accuracy: n/a")
    rd = report.get("r_div", report.get("rdiv"))
    if isinstance(rd, Mapping):
        lines.append(
            f"  R-DIV          : {_fmt_num(rd.get('ratio'), 4)} "
            f"(intra d+ {_fmt_num(rd.get('intra'), 4)}, inter d- {_fmt_num(rd.get('inter'), 4)})"
        )
    else:
        lines.append(f"  R-DIV          : {_fmt_num(rd, 4)}")
    lines.append(f"  positives/anchor: {_count_text(report, 'num_positives')}")
    lines.append(f"  negatives/anchor: {_count_text(report, 'num_negatives')}")
    extra = []
    if "train_images_per_second" in report:
        extra.append(f"{_fmt_num(report['train_images_per_second'], 1)} train images/s")
    if "wall_seconds" in report:
        extra.append(f"wall {_fmt_num(report['wall_seconds'], 1)} s")
    if extra:
        lines.append("  run            : " + ", ".join(extra))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# End-of-run analysis
# ----------------------------------------------------------------------------------------------------


def _normalise_sweep(sweep: Any, model_name: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{name: (eps, acc)}`` from that form, a bare ``(eps, acc)`` pair, or ``{eps: acc}``."""
    if sweep is None:
        return {}
    if isinstance(sweep, Mapping):
        if sweep and all(isinstance(k, (int, float)) for k in sweep):
            items = sorted(sweep.items())
            return {model_name: ([float(k) for k, _ in items], [_to_float(v) for _, v in items])}
        return {str(k): (list(np.asarray(v[0], np.float64).reshape(-1)),
                         list(np.asarray(v[1], np.float64).reshape(-1))) for k, v in sweep.items()}
    eps, acc = sweep
    return {model_name: (list(np.asarray(eps, np.float64).reshape(-1)),
                         list(np.asarray(acc, np.float64).reshape(-1)))}


def _acc_at(sweep: Mapping[str, tuple[list[float], list[float]]], name: str, eps: float) -> float:
    series = sweep.get(name) or (next(iter(sweep.values())) if len(sweep) == 1 else None)
    if series is None:
        return float("nan")
    for e, a in zip(*series):
        if abs(e - eps) <= 1e-6 * max(1.0, abs(eps)):
            return float(a)
    return float("nan")


def _report_robust_accuracy(report: Mapping[str, Any] | None) -> float:
    """The report's PGD robust accuracy (an attack name starting with "pgd"), else its first one."""
    robust = _robust_accuracies(report or {})
    for k, v in robust.items():
        if k.lower().startswith("pgd"):
            return _to_float(v)
    return _to_float(next(iter(robust.values()))) if robust else float("nan")


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
    plot_dir = pathlib.Path(workdir) / plots_subdir
    plot_dir.mkdir(parents=True, exist_ok=True)
    report = dict(report or {})
    name = model_name or str(report.get("method", "model"))
    result: dict[str, Any] = {"plots": {}, "r_div": None, "skipped": {}, "errors": {}}

    def attempt(key: str, fn, *args, **kwargs):
        try:
            result["plots"][key] = str(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - one failing plot must not lose the others
            logging.warning("analysis: %s failed: %s\n%s", key, e, traceback.format_exc())
            result["errors"][key] = f"{type(e).__name__}: {e}"

    sweep = _normalise_sweep(eps_sweep_results, name)
    have_latents = z_nat is not None and labels is not None

    # R-DIV (and the R-DIV vs robust accuracy plot).
    rdiv_points = None
    if have_latents and z_adv is not None:
        scalar_keys = ("intra", "inter", "ratio", "ratio_mean_of_batches", "num_batches", "batch_size",
                       "num_rows")
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
                rdiv_points = {name: ([by_eps[eps_sorted[i]]["ratio"] for i in keep], [accs[i] for i in keep],
                                      [f"ε={eps_sorted[i] * 255:.3g}/255" if eps_sorted[i] <= 1 else
                                       f"ε={eps_sorted[i]:.3g}" for i in keep])}
        else:
            r = r_div_batched(z_nat, z_adv, labels, batch_size)
            result["r_div"] = {k: r[k] for k in scalar_keys}
            acc = robust_accuracy if robust_accuracy is not None else _report_robust_accuracy(report)
            if acc is not None and math.isfinite(_to_float(acc)):
                rdiv_points = {name: (result["r_div"]["ratio"], _to_float(acc))}
        if rdiv_points:
            attempt("rdiv_vs_robust_accuracy", plot_rdiv_vs_robust_accuracy, rdiv_points,
                    plot_dir / PNG_NAMES["rdiv_vs_robust_accuracy"])
        else:
            result["skipped"]["rdiv_vs_robust_accuracy"] = "no robust accuracy to pair with R-DIV"
    else:
        result["skipped"]["rdiv_vs_robust_accuracy"] = "no latents (z_nat, z_adv, labels)"

    if sweep:
        attempt("robust_accuracy_vs_eps", plot_robust_accuracy_vs_eps, sweep,
                plot_dir / PNG_NAMES["robust_accuracy_vs_eps"])
    else:
        result["skipped"]["robust_accuracy_vs_eps"] = "no eps sweep results"

    if metrics_path is not None:
        try:
            counts = selection_counts_over_training(metrics_path)
        except (OSError, ValueError) as e:
            counts = None
            result["skipped"]["selection_counts"] = f"metrics unreadable: {e}"
        if counts is not None and counts["step"].size:
            attempt("selection_counts", plot_selection_counts, counts,
                    plot_dir / PNG_NAMES["selection_counts"])
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
        attempt("tsne", plot_tsne, z_nat, za, labels, plot_dir / PNG_NAMES["tsne"],
                max_points=tsne_max_points, max_adv=tsne_max_adv, random_state=seed)
    else:
        result["skipped"]["tsne"] = "no latents (z_nat, labels)"

    if result["r_div"] is not None:
        report.setdefault("r_div", result["r_div"])
    result["summary"] = text_summary(report)
    if print_summary:
        print(result["summary"])
    return result
