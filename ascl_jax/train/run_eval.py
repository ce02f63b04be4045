"""Evaluation and analysis of a run's trained state, into its workdir.

evaluate_state: clean / PGD / mPGD / AutoAttack on the test split (`config.eval`) -> eval.json,
per_example.npz and report.json's 'eval', then the analysis when `config.analysis.enabled`.
analyze_state: R-DIV (ASCL §2) of benign vs PGD latents, the plots of ASCL Figs. 3-5 and 7.
evaluate_workdir / analyze_workdir: the same for the latest checkpoint of a workdir (the CLI's
--mode=evaluate and --mode=analyze), merged into its report.json.
"""

from __future__ import annotations

import os

import jax

from ascl_jax import analysis, attacks, data, evaluation, parallel
from ascl_jax import workdir as workdir_lib
from ascl_jax.train.setup import restore_run, torch_run


def _variables(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def _logits_fn(model, bn):
    return lambda variables, x: model.apply(variables, x, train=False, bn=bn)["logits"]


def evaluate_state(config, model, state, workdir, mesh) -> dict:
    """Evaluates `state` with `config.eval` on the test split; writes eval.json, per_example.npz
    and report.json's 'eval'. Returns the headline report keys (clean_accuracy, robust_accuracy,
    overall_robust_accuracy, eval_eps, sanity; analysis and r_div when the analysis is enabled),
    or {} when no attack is configured."""
    ce = config.eval
    attacks_ = [a for a in ce.attacks if not (a == "autoattack" and ce.autoattack == "none")]
    if not attacks_:
        return {}
    n = ce.num_examples if ce.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    res = evaluation.evaluate(
        _logits_fn(model, ce.bn_branch),
        images,
        labels,
        params=_variables(state),
        attacks=tuple(attacks_),
        eps=ce.eps,
        step_size=ce.step_size,
        pgd_steps=ce.pgd_steps,
        pgd_restarts=ce.pgd_restarts,
        mpgd_steps=ce.mpgd_steps,
        version=ce.autoattack if ce.autoattack != "none" else "standard",
        autoattack_attacks=tuple(ce.get("autoattack_attacks", ())) or None,
        norm=ce.get("norm", "Linf"),
        batch_size=config.data.eval_batch_size,
        autoattack_examples=ce.autoattack_examples,
        seed=config.seed,
        mesh=mesh,
        progress=config.progress_bar and jax.process_index() == 0,
        eps_sweep=tuple(ce.eps_sweep) or None,
        sanity=ce.sanity,
    )
    evaluation.write_eval_json(workdir, res)
    out = dict(
        clean_accuracy=res["clean_accuracy"],
        robust_accuracy=res["robust_accuracy"],
        overall_robust_accuracy=res["overall"]["robust_accuracy"],
        eval_eps=res["eps"],
        sanity=evaluation.summary(res).get("sanity"),
    )
    if config.analysis.enabled:
        out["analysis"] = analyze_state(config, model, state, workdir, mesh, images, labels, eval_results=res)
        if out["analysis"].get("r_div"):
            out["r_div"] = out["analysis"]["r_div"]
    return out


def latents(config, model, state, images, labels, mesh, *, eps):
    """Penultimate features z of `images` [n, H, W, C] and of their PGD-k examples
    (k = config.eval.pgd_steps, eval-mode BN of config.eval.bn_branch): two [n, h] arrays.
    Batch i (rows from `start`) draws its attack key as fold_in(key(config.seed), start)."""
    ce = config.eval
    fwd = attacks.model_forward(model, _variables(state), bn=ce.bn_branch, bn_mode="eval", output=None)

    @jax.jit
    def run(x, y, key):
        x_adv = attacks.pgd_linf(
            attacks.ce_objective(lambda v: fwd(v)["logits"], y),
            x,
            key,
            eps=eps,
            step_size=ce.step_size,
            num_steps=ce.pgd_steps,
        )
        return fwd(x)["z"], fwd(x_adv)["z"]

    key = jax.random.key(config.seed)
    return parallel.map_batches(
        lambda start, x, y: run(x, y, jax.random.fold_in(key, start)),
        (images, labels),
        config.data.eval_batch_size,
        parallel.data_sharded(mesh),
    )


def analyze_state(config, model, state, workdir, mesh, images, labels, eval_results=None) -> dict:
    """R-DIV of benign vs PGD latents of the first `config.analysis.num_examples` images, the
    plots of ASCL Figs. 3-5 and 7 into workdir/plots, and the selection counts over training
    (Fig. 4) from metrics.jsonl. Returns {'plots', 'r_div', 'skipped', 'errors'}."""
    m = min(config.analysis.num_examples, len(labels))
    x, y = images[:m], labels[:m]
    z_nat, z_adv = latents(config, model, state, x, y, mesh, eps=config.eval.eps)
    sweep = None
    if eval_results and eval_results.get("sanity"):
        fall = eval_results["sanity"].get("checks", eval_results["sanity"]).get("accuracy_falls_with_eps")
        if isinstance(fall, dict) and "eps" in fall:
            sweep = {config.name: (list(fall["eps"]), list(fall["accuracy"]))}
    report = workdir_lib.read_report(workdir)
    if eval_results:
        report.update(
            clean_accuracy=eval_results["clean_accuracy"], robust_accuracy=eval_results["robust_accuracy"]
        )
    metrics = os.path.join(workdir, workdir_lib.METRICS_JSONL)
    res = analysis.run_analysis(
        workdir,
        z_nat=z_nat,
        z_adv=z_adv,
        labels=y,
        eps_sweep_results=sweep,
        metrics_path=metrics if os.path.exists(metrics) else None,
        report=report,
        model_name=config.name,
        tsne_max_points=config.analysis.tsne_points,
        seed=config.seed,
    )
    return {k: res[k] for k in ("plots", "r_div", "skipped", "errors") if k in res}


def evaluate_workdir(workdir: str, override_config=None) -> dict:
    """`--mode=evaluate`: the latest checkpoint of `workdir`, evaluated with its config's eval
    settings (or those of `override_config`, e.g. to run AutoAttack-standard later). When
    `override_config.init.torch_checkpoint` is set, that PyTorch checkpoint is evaluated instead
    (the model of `override_config`; its config is written to `workdir`). Returns the updated
    report."""
    mesh = parallel.make_mesh()
    if override_config is not None and override_config.init.get("torch_checkpoint"):
        config, model, state = torch_run(override_config, mesh)  # a PyTorch checkpoint, not the workdir's
        workdir_lib.check_or_write_config(config, workdir)
    else:
        config, model, state = restore_run(workdir, mesh)
    if override_config is not None:
        config.unlock()
        config.eval = override_config.eval
        config.analysis = override_config.analysis
    with jax.set_mesh(mesh):
        out = evaluate_state(config, model, state, workdir, mesh)
    return workdir_lib.update_report(workdir, out)


def analyze_workdir(workdir: str) -> dict:
    """`--mode=analyze`: R-DIV, plots and summary for the latest checkpoint of `workdir`. Returns
    the updated report."""
    mesh = parallel.make_mesh()
    config, model, state = restore_run(workdir, mesh)
    n = config.eval.num_examples if config.eval.num_examples > 0 else None
    images, labels = data.load_eval_arrays(config.data, "test", n)
    with jax.set_mesh(mesh):
        out = analyze_state(config, model, state, workdir, mesh, images, labels)
    return workdir_lib.update_report(workdir, {"analysis": out, "r_div": out.get("r_div")})
