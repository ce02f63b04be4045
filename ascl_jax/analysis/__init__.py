"""Latent-space analysis of a trained model: R-DIV, selection counts, plots, summary (ASCL, Bui et al.).

Modules, in the order the end-of-run analysis uses them:

* :mod:`~ascl_jax.analysis.rdiv`: R-DIV, the relative intra-class divergence (ASCL §2, supplement §7;
  SPEC §1.5): :func:`r_div` on one batch, :func:`r_div_batched` with the paper's protocol (per
  mini-batch of 128, averaged over mini-batches).
* :mod:`~ascl_jax.analysis.counts`: the mean number of positives / negatives per anchor over training,
  natural vs adversarial (ASCL Fig. 4; SPEC §1.2 "Counts"), :func:`selection_counts_over_training`,
  read from the training metrics (:mod:`~ascl_jax.analysis.records` reads the JSONL file).
* :mod:`~ascl_jax.analysis.plots`: the PNG plots: robust accuracy vs eps (ASCL Figs. 3 and 5b), R-DIV
  vs robust accuracy (ASCL Figs. 2c and 5), positives / negatives over training (ASCL Fig. 4), t-SNE of
  latents with adversarial examples marked (ASCL supplement Fig. 7).
* :mod:`~ascl_jax.analysis.summary`: :func:`text_summary`, a short terminal summary of a
  ``report.json`` dict.
* :mod:`~ascl_jax.analysis.run`: :func:`run_analysis`, which the training loop calls at the end of a
  run.

matplotlib and scikit-learn are imported inside the plot functions, so importing this package costs
only JAX and numpy.
"""

from ascl_jax.analysis.counts import COUNT_KEYS, selection_counts_over_training
from ascl_jax.analysis.plots import (
    PNG_NAMES,
    plot_rdiv_vs_robust_accuracy,
    plot_robust_accuracy_vs_eps,
    plot_selection_counts,
    plot_tsne,
)
from ascl_jax.analysis.rdiv import r_div, r_div_batched
from ascl_jax.analysis.records import PathLike
from ascl_jax.analysis.run import run_analysis
from ascl_jax.analysis.summary import text_summary

__all__ = [
    "COUNT_KEYS",
    "PNG_NAMES",
    "PathLike",
    "plot_rdiv_vs_robust_accuracy",
    "plot_robust_accuracy_vs_eps",
    "plot_selection_counts",
    "plot_tsne",
    "r_div",
    "r_div_batched",
    "run_analysis",
    "selection_counts_over_training",
    "text_summary",
]
