"""Loss library: every loss equation used by ASCL and ACL, as pure JAX functions.

References (see ``SPEC.md`` in the shared folder for the exact code semantics):

* ASCL = Bui et al., "Understanding and Achieving Efficient Robustness with Adversarial Supervised
  Contrastive Learning", arXiv 2101.10027. Eq. 1-3 (SCL loss of a natural / adversarial anchor and
  its batch mean), Eq. 4 (adversarial training CE), Eq. 5 (VAT), Table 1 (Global, Hard-LS, Soft-LS
  and Leaked-LS selection). Official code: ``contrastive_losses_v2.py::soft_lcscl`` and
  ``distance.py::distance`` (SPEC §1.2, §1.3, §1.4).
* SupCon = Khosla et al. 2020; ``HobbitLong/SupContrast: losses.py::SupConLoss`` (SPEC §2).
* ACL = Jiang et al., NeurIPS 2020. NT-Xent ``utils.py::nt_xent`` (SPEC §3.1), TRADES fine-tuning
  (SPEC §3.6) and the semi-supervised distillation term (SPEC §3.7).

Modules, in the order a loss is computed:

* :mod:`~ascl_jax.losses.selection`: ASCL Table 1 positive / negative masks (:func:`selection_masks`).
* :mod:`~ascl_jax.losses.similarity`: pairwise similarities (:func:`pairwise_similarity`),
  :func:`l2_normalize`.
* :mod:`~ascl_jax.losses.contrastive`: ASCL Eq. 1-3 (:func:`masked_contrastive_loss`,
  :func:`ascl_loss`), SupCon (:func:`supcon_loss`), NT-Xent (:func:`nt_xent_loss`,
  :func:`nt_xent_rows`).
* :mod:`~ascl_jax.losses.classification`: CE (:func:`cross_entropy`), KL (:func:`kl_divergence`),
  TRADES (:func:`trades_kl`), distillation (:func:`soft_distillation`), ACL Eq. 3
  (:func:`acl_semi_supervised_loss`).
* :mod:`~ascl_jax.losses.checks`: the shared argument checks.

Every function is vectorised (no Python loop over rows), works under ``jax.jit`` and ``jax.grad``,
and computes in the floating dtype of its input (float32 or float64) unless its docstring says
otherwise. The L1 / L2 / Linf distances carry a custom reverse-mode gradient, so ``jax.jvp`` /
forward mode is not available for those three similarities. Argument checks that raise
``ValueError`` look only at shapes, dtypes and Python values, so they fire at trace time under jit.

Row convention of the contrastive batch (SPEC notation): with ``b`` natural images the batch has
``n = 2b`` rows ``[natural; adversarial]``; row ``i`` and row ``b + i`` are views of one image.
Masks are ``[n, n]`` with entry ``[i, j]`` meaning "row j for anchor row i".
"""

from ascl_jax.losses.checks import Array
from ascl_jax.losses.classification import (
    CE_REDUCTIONS,
    KL_REDUCTIONS,
    acl_semi_supervised_loss,
    cross_entropy,
    kl_divergence,
    soft_distillation,
    trades_kl,
)
from ascl_jax.losses.contrastive import (
    CONTRAST_MODES,
    ascl_loss,
    masked_contrastive_loss,
    nt_xent_loss,
    nt_xent_rows,
    supcon_loss,
)
from ascl_jax.losses.selection import STRATEGIES, selection_masks
from ascl_jax.losses.similarity import (
    DEFAULT_MAX_BLOCK_ELEMENTS,
    SIMILARITIES,
    l2_normalize,
    pairwise_similarity,
)

__all__ = [
    "Array",
    "CE_REDUCTIONS",
    "CONTRAST_MODES",
    "DEFAULT_MAX_BLOCK_ELEMENTS",
    "KL_REDUCTIONS",
    "SIMILARITIES",
    "STRATEGIES",
    "acl_semi_supervised_loss",
    "ascl_loss",
    "cross_entropy",
    "kl_divergence",
    "l2_normalize",
    "masked_contrastive_loss",
    "nt_xent_loss",
    "nt_xent_rows",
    "pairwise_similarity",
    "selection_masks",
    "soft_distillation",
    "supcon_loss",
    "trades_kl",
]
