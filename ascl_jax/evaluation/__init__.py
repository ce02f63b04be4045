"""Robustness evaluation in JAX: clean accuracy, PGD-k with restarts, multi-targeted PGD and AutoAttack
(APGD-CE, APGD-T, FAB-T, Square), sanity checks against gradient masking, eval.json / report.json.

Entry points::

    results = evaluation.evaluate(logits_fn, images, labels, params=variables, eps=8/255,
                                  step_size=2/255, attacks=('clean', 'pgd', 'mpgd', 'autoattack'),
                                  num_examples=1000, seed=0, mesh=mesh)
    evaluation.write_eval_json(workdir, results)

    out = evaluation.run_autoattack(logits_fn, x, y, jax.random.key(0), eps=8/255, version='standard')

Modules: ``autoattack`` (per-batch APGD / FAB-T / Square and the AutoAttack driver), ``pgd`` (evaluation
PGD and mPGD stages), ``engine`` (batching, sharding, survivor compaction), ``sanity`` (gradient-masking
checks), ``runner`` (``evaluate``), ``report`` (eval.json, per_example.npz, report.json).
"""
from ascl_jax.evaluation import autoattack, engine, pgd, report, runner, sanity
from ascl_jax.evaluation.autoattack import (COMPONENTS, VERSIONS, apgd_linf, dlr_loss,
                                            fab_targeted_linf, run_autoattack, square_linf,
                                            targeted_dlr_loss)
from ascl_jax.evaluation.engine import Engine, default_mesh
from ascl_jax.evaluation.report import (compare_per_example, load_per_example, summary,
                                        write_eval_json)
from ascl_jax.evaluation.runner import ATTACK_HELP, DEFAULT_ATTACKS, evaluate, parse_attack

__all__ = [
    'COMPONENTS', 'VERSIONS', 'ATTACK_HELP', 'DEFAULT_ATTACKS', 'Engine', 'apgd_linf',
    'compare_per_example', 'default_mesh', 'dlr_loss', 'evaluate', 'fab_targeted_linf',
    'load_per_example', 'parse_attack', 'run_autoattack', 'square_linf', 'summary',
    'targeted_dlr_loss', 'write_eval_json',
]
