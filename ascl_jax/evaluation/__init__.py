"""Robustness evaluation in JAX: clean accuracy, PGD-k with restarts, multi-targeted PGD and AutoAttack
(APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T, Square; threat models L-inf, L2, L1; versions 'standard',
'plus', 'rand', 'custom'), sanity checks against gradient masking, eval.json / report.json.

Entry points::

    results = evaluation.evaluate(logits_fn, images, labels, params=variables, eps=8/255,
                                  step_size=2/255, attacks=('clean', 'pgd', 'mpgd', 'autoattack'),
                                  num_examples=1000, seed=0, mesh=mesh)
    evaluation.write_eval_json(workdir, results)

    out = evaluation.run_autoattack(logits_fn, x, y, jax.random.key(0), eps=8/255, version='standard')

    res = evaluation.autoattack_callable(predict, x, y, eps=0.5, norm='L2', version='standard')
    res.robust_accuracy, res.broken_by_names(), res.robustbench_json(name='my model')

Modules, each importing only those before it: ``projections`` (p-norms, ball / box / hyperplane
projections per norm), ``programs`` (the ``Program`` contract of an iterative attack, per-row
helpers), ``apgd`` / ``fab`` / ``square`` (the AutoAttack components as Programs), ``autoattack``
(per-batch APGD / FAB / Square, the versions' lists and budgets), ``engine`` (batching, sharding,
compiled stages), ``autoattack_driver`` (AutoAttack over host arrays), ``autoattack_api``
(``autoattack_callable`` for any JAX callable), ``pgd`` (evaluation PGD and mPGD stages),
``sanity`` (gradient-masking checks), ``runner`` (``evaluate``), ``report`` (eval.json,
per_example.npz, report.json).
"""

from ascl_jax.evaluation import (
    apgd,
    autoattack,
    autoattack_api,
    autoattack_driver,
    engine,
    fab,
    pgd,
    programs,
    projections,
    report,
    runner,
    sanity,
    square,
)
from ascl_jax.evaluation.autoattack import (
    COMPONENTS,
    NORMS,
    VERSIONS,
    ComponentSpec,
    apgd_linf,
    dlr_loss,
    fab_targeted_linf,
    square_linf,
    targeted_dlr_loss,
    version_specs,
)
from ascl_jax.evaluation.autoattack_api import AutoAttackResult, autoattack_callable
from ascl_jax.evaluation.autoattack_driver import run_autoattack
from ascl_jax.evaluation.engine import Engine
from ascl_jax.evaluation.report import compare_per_example, load_per_example, summary, write_eval_json
from ascl_jax.evaluation.runner import ATTACK_HELP, DEFAULT_ATTACKS, evaluate, parse_attack
from ascl_jax.parallel import make_mesh as default_mesh

__all__ = [
    "AutoAttackResult",
    "COMPONENTS",
    "ComponentSpec",
    "NORMS",
    "VERSIONS",
    "ATTACK_HELP",
    "DEFAULT_ATTACKS",
    "Engine",
    "apgd_linf",
    "autoattack_callable",
    "compare_per_example",
    "default_mesh",
    "dlr_loss",
    "evaluate",
    "fab_targeted_linf",
    "load_per_example",
    "parse_attack",
    "run_autoattack",
    "square_linf",
    "summary",
    "targeted_dlr_loss",
    "version_specs",
    "write_eval_json",
]
