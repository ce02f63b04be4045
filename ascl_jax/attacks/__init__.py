"""L-infinity attacks as pure, jit-able functions over an objective closure (STYLE P6).

An *objective* maps x_adv [B, H, W, C] to a per-example value [B] that the attack MAXIMISES; every
attack ascends the gradient of its sum. Because the sum's cotangent is 1 for every row, the gradient
for row i depends only on row i whenever the model treats rows independently (BN with running
statistics, ``bn_mode='eval'``), so PGD / FGSM / mPGD are then independent per example. Two cases
couple rows and are documented where they arise: ``bn_mode='train'`` (batch statistics) and the
NT-Xent objective (the contrastive loss couples every row with every other).

Images are NHWC float32 in [0, 1]; eps and step sizes are in that pixel scale (normalisation is the
model's first operation). Every attack returns ``stop_gradient(x_adv)`` with
``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``.

References: PGD (Madry et al. 2018; ASCL ``pgd.py::pgd_attack``, SPEC 1.6), ACL's contrastive PGD
(``train_simCLR.py::PGD_contrastive``, SPEC 3.3), TRADES/VAT KL attack (``trades.py``, SPEC 3.6),
FGSM (Goodfellow et al. 2015), multi-targeted PGD (Gowal et al. 2019, "An alternative surrogate loss
for PGD-based adversarial testing").

Modules: ``objectives`` (the objectives and ``model_forward``), ``pgd`` (PGD, FGSM, mPGD, the
eps-ball projection and the loop forms), ``checks`` (argument checks).
"""

from ascl_jax.attacks import checks, objectives, pgd
from ascl_jax.attacks.objectives import (
    OUTPUTS,
    Array,
    LogitsFn,
    Objective,
    ce_objective,
    kl_objective,
    logit_margin,
    margin_objective,
    model_forward,
    nt_xent_objective,
    targeted_ce_objective,
)
from ascl_jax.attacks.pgd import (
    DEFAULT_CHUNK,
    MAX_UNROLL,
    NORMAL_INIT_STD,
    fgsm,
    mpgd_targets,
    multi_targeted_pgd,
    pgd_linf,
    project_linf,
    resolve_unroll,
)
from ascl_jax.config import ATTACK_INITS as INITS
from ascl_jax.config import BN_BRANCHES, BN_MODES
from ascl_jax.xla_cpu.loops import canonicalize_convs

__all__ = [
    "BN_BRANCHES",
    "BN_MODES",
    "DEFAULT_CHUNK",
    "INITS",
    "MAX_UNROLL",
    "NORMAL_INIT_STD",
    "OUTPUTS",
    "Array",
    "LogitsFn",
    "Objective",
    "canonicalize_convs",
    "ce_objective",
    "fgsm",
    "kl_objective",
    "logit_margin",
    "margin_objective",
    "model_forward",
    "mpgd_targets",
    "multi_targeted_pgd",
    "nt_xent_objective",
    "pgd_linf",
    "project_linf",
    "resolve_unroll",
    "targeted_ce_objective",
]
