"""The PNG plots of the analysis (matplotlib's Agg canvas; pyplot and its global backend are never
touched): robust accuracy vs eps (ASCL Figs. 3 and 5b), R-DIV vs robust accuracy (ASCL Figs. 2c and 5),
positives / negatives over training (ASCL Fig. 4), t-SNE of latents with adversarial examples marked
(ASCL supplement Fig. 7).

Plots are regenerated artifacts: every plot function overwrites an existing file at its path.
Paths go through `ascl_jax.storage` (local, gs://, s3://): a figure is rendered in memory and
written whole, by process 0 only (in a multi-process run every process renders it); the returned
path is an `epath.Path`.
matplotlib and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ascl_jax import storage
from ascl_jax.analysis.counts import selection_counts_over_training
from ascl_jax.analysis.records import PathLike

PNG_NAMES = {
    "robust_accuracy_vs_eps": "robust_accuracy_vs_eps.png",
    "rdiv_vs_robust_accuracy": "rdiv_vs_robust_accuracy.png",
    "selection_counts": "selection_counts.png",
    "tsne": "tsne.png",
}


def _png_path(path: PathLike, default_name: str) -> storage.Path:
    """A directory (existing, or a path without suffix) gets ``default_name`` inside it."""
    p = storage.path(path)
    if not p.suffix or p.is_dir():
        p = p / default_name
    if jax.process_index() == 0:
        storage.makedirs(p.parent)
    return p


def _new_figure(figsize=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: storage.Path) -> storage.Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    if jax.process_index() == 0:  # a shared file: one writer
        storage.write_bytes(path, buf.getvalue())  # overwrites: plots are regenerated artifacts
    return path


def _as_percent(values: Sequence[float]) -> np.ndarray:
    """Accuracies given as fractions (all <= 1) are scaled to percent; others are taken as percent."""
    v = np.asarray(values, np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    if finite.size and np.all(finite <= 1.0):
        v = v * 100.0
    return v


def _check_same_size(name, xs: np.ndarray, acc: np.ndarray, what: str) -> None:
    """One accuracy per x value of a model's line, else a ValueError naming the model."""
    if xs.shape != acc.shape:
        raise ValueError(f"model {name!r}: {xs.size} {what} but {acc.size} accuracies.")


def _accuracy_plot(lines: list[tuple], out: storage.Path, xlabel: str, title: str) -> storage.Path:
    """Robust accuracy (%) against x, one line per model; saves the PNG ``out``.

    ``lines``: ``(name, x [k], acc [k] in percent, annotations [k] or None, linestyle)`` per model.
    """
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, x, acc, notes, linestyle in lines:
        ax.plot(x, acc, marker="o", linestyle=linestyle, label=str(name))
        for xi, yi, t in zip(x, acc, notes or ()):
            ax.annotate(t, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_robust_accuracy_vs_eps(
    results_by_model: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: PathLike,
    *,
    title: str | None = None,
) -> storage.Path:
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
    lines = []
    for name, (eps, acc) in results_by_model.items():
        eps = np.asarray(eps, np.float64).reshape(-1)
        acc = _as_percent(acc)
        _check_same_size(name, eps, acc, "eps values")
        order = np.argsort(eps)
        lines.append((name, eps[order] * scale, acc[order], None, "-"))
    xlabel = "perturbation size ε (/255)" if scale == 255.0 else "perturbation size ε"
    return _accuracy_plot(lines, out, xlabel, title or "Robust accuracy vs perturbation size")


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
) -> storage.Path:
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
    lines = []
    for name, value in points.items():
        rdiv, acc, notes = _rdiv_points(value)
        _check_same_size(name, rdiv, acc, "R-DIV values")
        lines.append((name, rdiv, acc, notes, "-" if rdiv.size > 1 else "none"))
    return _accuracy_plot(
        lines, out, "R-DIV  d+ / d-  (relative intra-class divergence)", title or "Robust accuracy vs R-DIV"
    )


def plot_selection_counts(
    history: PathLike | Iterable[Mapping[str, Any]] | Mapping[str, np.ndarray],
    path: PathLike,
    *,
    title: str | None = None,
) -> storage.Path:
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
    drawn_split |= draw(
        ax_split, "num_positives_adv", "positives (adversarial)", color="tab:blue", linestyle="--"
    )
    drawn_split |= draw(ax_split, "num_negatives_nat", "negatives (natural)", color="tab:red")
    drawn_split |= draw(
        ax_split, "num_negatives_adv", "negatives (adversarial)", color="tab:red", linestyle="--"
    )
    for ax, sub, any_drawn in (
        (ax_tot, "all samples", drawn),
        (ax_split, "natural vs adversarial", drawn_split),
    ):
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
) -> storage.Path:
    """t-SNE of latents, benign points coloured by class, adversarial examples marked (supplement Fig. 7).

    The paper shows 1000 natural and 100 adversarial latents: the first ``max_points`` benign rows and
    the first ``max_adv`` adversarial rows are embedded together with ``sklearn.manifold.TSNE``
    (2-D, PCA initialisation, ``learning_rate='auto'``, fixed ``random_state``; perplexity clipped to
    ``(m - 1) / 3`` for m points so small inputs work; one thread, which fixes the summation order so
    the embedding is reproducible). Benign points are small dots, adversarial examples
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

    # One thread: a fixed summation order, so the embedding is reproducible for a given random_state.
    with threadpool_limits(limits=1):
        emb = TSNE(
            n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=random_state
        ).fit_transform(x)
    e_nat, e_adv = emb[:n_nat], emb[n_nat:]

    import matplotlib

    classes = np.unique(np.concatenate([lab_nat, lab_adv]))
    cmap = matplotlib.colormaps[
        "tab10" if classes.size <= 10 else "tab20" if classes.size <= 20 else "nipy_spectral"
    ]
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
        ax.scatter(
            e_adv[:, 0], e_adv[:, 1], c=colours(lab_adv), s=60, marker="X", edgecolors="black", linewidths=0.6
        )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="none", color="grey", label=f"benign ({n_nat})")]
    if n_adv:
        handles.append(
            Line2D(
                [],
                [],
                marker="X",
                linestyle="none",
                color="grey",
                markeredgecolor="black",
                markersize=9,
                label=f"adversarial ({n_adv})",
            )
        )
    if classes.size <= 20:
        handles += [
            Line2D(
                [], [], marker="o", linestyle="none", color=colours(np.asarray([c]))[0], label=f"class {c}"
            )
            for c in classes.tolist()
        ]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    ax.set_title(title or "t-SNE of latent representations (crosses: adversarial examples)")
    return _save(fig, out)
